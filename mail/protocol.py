"""
The wire pieces the post office's three servers (SMTP, POP3, IMAP) share:
L{MailReceiver} under their sessions, L{coursenet.receiver.CommandReceiver}
with one clock for every deadline of a session and turns taken; and
L{MailFactory}, which admits a connection (L{coursenet.admission}) before
it builds a session.

Taking turns: the shared receiver runs every complete line it holds before
it returns to the reactor, until the output is full; with replies of a few
bytes (SMTP's C{250 2.0.0 OK}) that is thousands of commands, tens of
milliseconds every other client waits.  It has no budget of its own, so a
session hands it, every L{LINES_PER_TURN} lines run at once, a L{Deferred}
fired on the reactor's next turn: it holds the lines after it meanwhile,
as it does behind any command answered later.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from coursenet.admission import Admission, AdmittingFactory
from coursenet.receiver import CommandReceiver

#: Lines run one after the other, none of them answered later, before the
#: reactor is handed back.
LINES_PER_TURN = 200


class MailReceiver(CommandReceiver):
    """
    Mix in first, before Twisted's C{ESMTP}, C{POP3} or C{IMAP4Server}.
    C{lineReceived} returns L{paced} of what its command gave.

    @ivar _clock: the reactor of the session's deadlines (the receiver's,
        Twisted's C{TimeoutMixin}'s); the factory's, or the global one, if
        L{None}.
    """

    _clock: Any = None
    _run = 0

    def receiverClock(self) -> Any:
        return self._clock if self._clock is not None else super().receiverClock()

    def callLater(self, period: float, func: Any) -> Any:
        # TimeoutMixin's idle timeout, on the session's clock.
        return self.receiverClock().callLater(period, func)

    def paced(self, result: Deferred[Any] | None) -> Deferred[Any] | None:
        """
        C{result}, a command's L{Deferred} or L{None}; or, after
        L{LINES_PER_TURN} lines that gave none, a L{Deferred} that fires on
        the reactor's next turn.
        """
        if result is not None:
            self._run = 0
            return result
        self._run += 1
        if self._run < LINES_PER_TURN:
            return None
        self._run = 0
        nextTurn: Deferred[None] = Deferred()
        self.receiverClock().callLater(0, nextTurn.callback, None)
        return nextTurn


class _SessionBuilder:
    """
    Where L{AdmittingFactory} asks for the protocol of a connection it
    admitted: L{MailFactory.buildSession}.
    """

    def buildSession(self, addr: Any) -> MailReceiver:
        raise NotImplementedError

    def buildProtocol(self, addr: Any) -> MailReceiver:
        return self.buildSession(addr)


class MailFactory(AdmittingFactory, _SessionBuilder):
    """
    Mix in before the server's Twisted factory: a connection past the caps
    of L{admission} gets the protocol's C{busyReply}; the others a session
    from L{buildSession}.
    """

    def __init__(self, reactor: Any = None, admission: Admission | None = None) -> None:
        """
        @param reactor: the clock of the sessions' deadlines; the global
            reactor by default.
        @param admission: the connection caps; L{Admission}'s defaults
            (under the descriptor limit) if none is given.
        """
        self.reactor = reactor
        self.admission = admission or Admission()
