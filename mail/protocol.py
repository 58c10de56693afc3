"""
The wire pieces the post office's three servers (SMTP, POP3, IMAP) share:
L{MailReceiver} under their sessions, L{coursenet.receiver.CommandReceiver}
with one clock for every deadline of a session and turns taken; and
L{MailFactory}, which admits a connection (L{coursenet.admission}) before
it builds a session.
"""

from __future__ import annotations

from typing import Any

from coursenet.admission import Admission, AdmittingFactory
from coursenet.receiver import CommandReceiver


class MailReceiver(CommandReceiver):
    """
    Mix in first, before Twisted's C{ESMTP}, C{POP3} or C{IMAP4Server}.

    @ivar _clock: the reactor of the session's deadlines (the receiver's,
        Twisted's C{TimeoutMixin}'s); the factory's, or the global one, if
        L{None}.
    """

    _clock: Any = None

    def receiverClock(self) -> Any:
        return self._clock if self._clock is not None else super().receiverClock()

    def callLater(self, period: float, func: Any) -> Any:
        # TimeoutMixin's idle timeout, on the session's clock.
        return self.receiverClock().callLater(period, func)


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
