"""
The post office's sessions take turns (the shared receiver's
linesPerTurn): thousands of commands pipelined at once are run a few
hundred a turn of the reactor, over StringTransport and a clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mail.imap import IMAPServer
from coursenet.receiver import CommandReceiver
from mail.pop3 import POP3Server
from mail.smtp import LocalDelivery, SMTPServer
from tests.test_mail_smtp import FakeStore


def smtp(clock):
    return SMTPServer(LocalDelivery(FakeStore(), ["example.test"]), None, 10_000, clock=clock), b"NOOP\r\n"


def pop3(clock):
    return POP3Server(clock=clock), b"CAPA\r\n"


def imap(clock):
    return IMAPServer(clock=clock), b"a NOOP\r\n"


class TurnClock(Clock):
    """
    A clock that runs, on each L{turn}, only the calls due when it starts,
    as a reactor's turn does (L{Clock.advance} also runs those they add).
    """

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


LINES_PER_TURN = CommandReceiver.linesPerTurn
SESSIONS = {"smtp": (smtp, b"250 "), "pop3": (pop3, b"+OK "), "imap": (imap, b"a OK ")}


@pytest.mark.parametrize("name", list(SESSIONS))
def test_pipelined_commands_run_a_turn_at_a_time(name):
    """Of 2.5 turns' worth of commands sent at once, one turn's are answered, then the next on each turn of the reactor."""
    make, reply = SESSIONS[name]
    clock = TurnClock()
    session, request = make(clock)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
    session.makeConnection(transport)
    transport.clear()
    session.dataReceived(request * (LINES_PER_TURN * 5 // 2))
    answered = []
    for _ in range(4):
        answered.append(transport.value().count(b"\r\n" + reply) + transport.value().startswith(reply))
        transport.clear()
        clock.turn()
    assert answered == [LINES_PER_TURN, LINES_PER_TURN, LINES_PER_TURN // 2, 0]
