"""
Taking turns: a session whose client pipelines thousands of commands at
once hands the reactor back every so often, so that other clients are
answered meanwhile.

L{coursenet.receiver.CommandReceiver} runs every complete line it holds
before it returns to the reactor, until the output is full; with replies of
a few bytes (SMTP's C{250 2.0.0 OK}) that is thousands of commands, tens of
milliseconds every other client waits.  The receiver has no budget of its
own, so the post office's sessions hand it, every L{LINES_PER_TURN} lines
run at once, a L{Deferred} fired on the reactor's next turn: it holds
the lines after it meanwhile, as it does behind any command answered
later.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

#: Lines run one after the other, none of them answered later, before the
#: reactor is handed back.
LINES_PER_TURN = 200


class Pacing:
    """
    What a session's C{lineReceived} hands the receiver: L{paced} of what
    its command gave.
    """

    def __init__(self, clock: Callable[[], Any], linesPerTurn: int = LINES_PER_TURN) -> None:
        """
        @param clock: gives the reactor whose next turn is waited for (the
            session's C{receiverClock}).
        """
        self._clock = clock
        self.linesPerTurn = linesPerTurn
        self._run = 0

    def paced(self, result: Deferred[Any] | None) -> Deferred[Any] | None:
        """
        C{result}, a command's L{Deferred} or L{None}; or, after
        C{linesPerTurn} lines that gave none, a L{Deferred} that fires on
        the reactor's next turn.
        """
        if result is not None:
            self._run = 0
            return result
        self._run += 1
        if self._run < self.linesPerTurn:
            return None
        self._run = 0
        nextTurn: Deferred[None] = Deferred()
        self._clock().callLater(0, nextTurn.callback, None)
        return nextTurn
