"""
Logs that cannot fill a disk (coursenet.logs): the bounded twistd log
observer, the per-event budget, and servers that write no line per
command or refused connection a stranger sends.
"""

from __future__ import annotations

import os

import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import DeferredList
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent

from coursenet import logs
from coursenet.accounts import PasswordChecker
from coursenet.admission import Admission, AdmittingFactory
from coursenet.logs import LogBudget
from tests.test_bftp_server import fake, raw, root  # noqa: F401 (fixtures)


def test_budgetLimitsLinesAndSaysHowManyWereLeftOut():
    """Past its burst a budget logs nothing more until it refills, then says how many lines it left out."""
    clock = Clock()
    budget = LogBudget(Logger(namespace="t"), clock, perMinute=60, burst=3)
    with capturedLogs() as events:
        for i in range(100):
            budget.info("refused {n}", n=i)
        assert len(events) == 3
        clock.advance(1)
        budget.info("refused {n}", n=100)
    assert len(events) == 4
    assert events[-1]["suppressed"] == 97


def test_boundedLogRotatesAndKeepsFewFiles(tmp_path, monkeypatch):
    """The twistd --logger observer rotates its file and keeps at most KEEP_FILES old ones, at info level."""
    path = tmp_path / "twistd.log"
    monkeypatch.setenv(logs.LOG_FILE_ENV, str(path))
    monkeypatch.setattr(logs, "ROTATE_BYTES", 2000)
    observer = logs.bounded()
    log = Logger(namespace="t", observer=observer)
    for i in range(2000):
        log.info("line {i} " + "x" * 50, i=i)
        log.debug("debug line {i}", i=i)
    files = sorted(os.listdir(tmp_path))
    assert 1 < len(files) <= logs.KEEP_FILES + 1, files
    assert all(os.path.getsize(tmp_path / f) < 4000 for f in files)
    assert "debug line" not in path.read_text()


def test_bftpLogsNoLinePerCommandBeforeLogin(root, fake):  # noqa: F811
    """A stranger's 500 commands before login leave no log line each."""
    with capturedLogs() as events:
        raw(root, fake, b"HELLO BFTP/1\r\n" + b"HELP\r\nNOOP\r\nLIST\r\n" * 166)
    perCommand = [e for e in events if e.get("log_level") is LogLevel.debug or "line" in e]
    assert len(perCommand) < 5, perCommand[:5]


def test_refusedConnectionsAreLoggedWithinABudget():
    """A flood of connections turned away writes a bounded number of log lines."""

    class P:
        @staticmethod
        def busyReply(text):
            return b"BUSY\r\n"

    class F(AdmittingFactory, Factory):
        protocol = P

    f = F()
    f.reactor = Clock()
    f.admission = Admission(maxConnections=0 + 8, maxPerAddress=0 + 1)
    f.buildProtocol(type("A", (), {"host": "10.0.0.1"})())
    with capturedLogs() as events:
        for _ in range(500):
            busy = f.buildProtocol(type("A", (), {"host": "10.0.0.1"})())
            busy.makeConnection(StringTransport())
    assert 0 < len(events) <= 25


def test_cutOffsAreLoggedWithinABudget():
    """Many clients cut off for not reading write a bounded number of log lines."""
    from coursenet.receiver import Outbox
    from tests.test_receiver import BufferingTransport

    clock = Clock()
    with capturedLogs() as events:
        for _ in range(300):
            o = Outbox(BufferingTransport(), clock, limit=1, drainTimeout=0, closeTimeout=1)
            o.write(b"x" * 100)
            o.write(b"xx")
    cuts = [e for e in events if "cut off" in e.get("log_format", "")]
    assert 0 < len(cuts) <= 25


@pytest_twisted.ensureDeferred
async def test_failedLoginsAreLoggedWithinABudget(reactor):
    """Many wrong passwords (many accounts, so the throttle does not space them) write a bounded number of log lines."""
    checker = PasswordChecker(users=[("u%d" % i, "right") for i in range(3)], reactor=reactor)
    started = reactor.seconds()
    with capturedLogs() as events:
        ds = [checker.requestAvatarId(UsernamePassword(b"u%d" % i, b"wrong")) for i in range(60)]
        await DeferredList(ds, consumeErrors=True)
    elapsed = reactor.seconds() - started
    lines = [e for e in events if "failed login" in e.get("log_format", "")]
    # The budget: a burst of 20, then one line a second (60 a minute) for
    # as long as the 60 scrypt checks took on this machine.
    assert 0 < len(lines) <= 20 + int(elapsed) + 1 < 60


def test_peerNameIsAddressPortAndUser():
    """Log lines name a client as ADDRESS:PORT, IPv6 in brackets, with [user] once known (pyftpdlib's style)."""
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    from coursenet.logs import peerName

    assert peerName(IPv4Address("TCP", "127.0.0.1", 56480)) == "127.0.0.1:56480"
    assert peerName(IPv4Address("TCP", "10.1.2.3", 5), "alice") == "10.1.2.3:5 [alice]"
    assert peerName(IPv6Address("TCP", "::1", 7), "bob") == "[::1]:7 [bob]"
    assert peerName(UNIXAddress(b"/tmp/s")) == str(UNIXAddress(b"/tmp/s"))


def test_chatLinesNamePeersAsAddressPortAndNick():
    """Both chat doors log arrivals and departures as '127.0.0.1:PORT [nick] arrived/left', never a Twisted address repr."""
    from tests.chat_support import World

    world = World()
    with capturedLogs() as events:
        ada = world.connect()
        ada.send("NICK ada")
        bob = world.connect(irc=True)
        bob.send("NICK bob")
        bob.send("USER bob 0 * :Bob")
        ada.lose()
    lines = [formatEvent(e) for e in events]
    adaPort, bobPort = ada.transport.getPeer().port, bob.transport.getPeer().port
    assert f"127.0.0.1:{adaPort} [ada] arrived" in lines, lines
    assert f"127.0.0.1:{bobPort} [bob] arrived" in lines, lines
    assert any(line.startswith(f"127.0.0.1:{adaPort} [ada] left: ") for line in lines), lines
    assert not [line for line in lines if "IPv4Address" in line]
