"""
The password-guess throttle across the real services on loopback sockets:
BFTP, the chat course door, the IRC door and the tether, each with its own
checker on one password file, as separate processes would have, so that
they share one PASSWD.throttle; a twistd BFTP process sharing it with
this one; and the post office's three logins, through the stdlib clients.

The rule is the default one on a clock sixty times faster (a "minute" is
one second: delays of 1/60 s doubling to 1 s), so the figures mean the same
in a few seconds.  The hashes are cheap (scrypt N=2^10) so that the times
measure the throttle, not scrypt on a busy two-core machine.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time

import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineOnlyReceiver
from twisted.web.server import Site

from bftp.auth import makePortal
from bftp.protocol import BFTPFactory
from chat.irc import IRCFactory
from chat.protocol import ChatFactory
from chat.rooms import ChatServer
from chat.session import Limits
from chat.store import MemoryHistory
from coursenet.accounts import PasswordChecker, hashPassword, writePasswordFile
from coursenet.procs import stopProcess
from coursenet.throttle import GuessRule, SQLiteGuessStore, Throttle
from coursenet.tls import serverContextFactory
from mail.auth import makePortal as mailPortal
from mail.imap import IMAPFactory
from mail.maildir import MaildirStore
from mail.pop3 import POP3Factory
from mail.smtp import SMTPFactory
from tests.tether_support import ListTun
from tether.client import ClientLink, TetherClient
from tether.protocol import connectWebSocket
from tether.server import TetherServer
from tether.wire import Close, ProtocolError

#: The default rule, sixty times faster.
MINUTE = 1.0
RULE = GuessRule(free=3, delay=MINUTE / 60, maxDelay=MINUTE, budget=10, forget=120 * MINUTE)
VICTIM, RIGHT = "alice", "alice-right"
STUDENTS = [(f"s{n:02}", f"pw-{n:02}") for n in range(60)]
TYPIST = ("typo", "typo-right")
BIN = os.path.dirname(sys.executable)


def passwordFile(tmp_path) -> str:
    path = str(tmp_path / "passwd")
    accounts = [(VICTIM, RIGHT), TYPIST, *STUDENTS, ("bob", "bob-right")]
    writePasswordFile(path, {name: hashPassword(pw, n=2**10) for name, pw in accounts})
    return path


class Lines(LineOnlyReceiver):
    """
    A raw line client: what it reads waits in a queue.
    """

    delimiter = b"\n"

    def connectionMade(self) -> None:
        self.queue: defer.DeferredQueue = defer.DeferredQueue()

    def lineReceived(self, line: bytes) -> None:
        self.queue.put(line.rstrip(b"\r").decode("utf-8", "replace"))

    def connectionLost(self, reason=None) -> None:
        self.queue.put(None)

    def send(self, line: str) -> None:
        self.sendLine(line.encode() + b"\r")

    async def until(self, *marks: str) -> str:
        """
        The next line that starts with, or for IRC holds, one of C{marks}.
        """
        while True:
            line = await self.queue.get()
            if line is None:
                raise ConnectionDone()
            if any(line.startswith(m) or f" {m} " in line for m in marks):
                return line


async def dial(reactor, port: int, source: str = "127.0.0.1") -> Lines:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    return await endpoint.connect(Factory.forProtocol(Lines))


class NoNetwork:
    async def apply(self, *a, server=None):
        pass

    async def restore(self):
        pass


class Services:
    """
    BFTP, chat (course and IRC doors) and the tether on 127.0.0.1, each
    with a checker of its own on one password file.
    """

    async def start(self, reactor, tmp_path) -> "Services":
        self.reactor = reactor
        passwd = passwordFile(tmp_path)
        self.checkers = [PasswordChecker(passwd, reactor=reactor, rule=RULE) for _ in range(3)]
        bftpChecker, chatChecker, tetherChecker = self.checkers
        (tmp_path / "root").mkdir()
        bftp = BFTPFactory(str(tmp_path / "root"), makePortal(bftpChecker), reactor=reactor,
                           loginDelay=0, maxPerAddress=500)
        rooms = ChatServer(MemoryHistory(), checker=chatChecker, reactor=reactor)
        limits = Limits(floodRate=0)
        self.tether = TetherServer(tetherChecker, "198.18.100.0/24", reactor=reactor, allowPlain=True, grace=0)
        self.tether.tun = ListTun()
        self.listening = []
        for factory in (bftp, ChatFactory(rooms, limits, reactor), IRCFactory(rooms, limits, "test", reactor),
                        Site(self.tether.resource())):
            self.listening.append(await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory))
        self.bftp, self.chat, self.irc, tether = (p.getHost().port for p in self.listening)
        self.tetherURL = f"ws://127.0.0.1:{tether}/tether/v1"
        self.closers: list = []
        return self

    async def stop(self) -> None:
        for checker in self.checkers:
            checker.throttle.close()
        for close in self.closers:
            close()
        self.tether.stop()
        await deferLater(self.reactor, 0.1)
        for port in self.listening:
            await port.stopListening()

    # One login on each door; each returns whether the password was taken.

    async def bftpLogin(self, name: str, password: str, source: str = "127.0.0.1") -> bool:
        c = await dial(self.reactor, self.bftp, source)
        self.closers.append(c.transport.abortConnection)
        await c.until("220")
        c.send("HELLO BFTP/1")
        await c.until("200")
        c.send(f"USER {name}")
        await c.until("331")
        c.send(f"PASS {password}")
        return (await c.until("230", "530", "421")).startswith("230")

    async def chatLogin(self, name: str, password: str, source: str = "127.0.0.1", c=None) -> bool:
        if c is None:
            c = await dial(self.reactor, self.chat, source)
            self.closers.append(c.transport.abortConnection)
            await c.until("220")
        c.send(f"NICK {name} {password}")
        return (await c.until("230", "530")).startswith("230")

    async def ircLogin(self, name: str, password: str, source: str = "127.0.0.1", c=None) -> bool:
        if c is None:
            c = await dial(self.reactor, self.irc, source)
            self.closers.append(c.transport.abortConnection)
        c.send(f"PASS {password}")
        c.send(f"NICK {name}")
        c.send(f"USER {name} 0 * :{name}")
        return " 001 " in await c.until("001", "464")

    async def tetherLogin(self, name: str, password: str) -> bool:
        client = TetherClient(name, password, NoNetwork(), reactor=self.reactor)
        welcomed: defer.Deferred = defer.Deferred()
        client.welcomed = lambda link, welcome: welcomed.callback(True)
        link = await connectWebSocket(self.reactor, self.tetherURL, ClientLink(client))
        self.closers.append(lambda: link.refuse(ProtocolError(Close.NORMAL, "done")))
        link.lost.addCallback(lambda reason: welcomed.called or welcomed.callback(reason))
        answer = await welcomed
        if answer is True:
            return True
        if answer is None or answer.code != Close.AUTH:
            raise ConnectionDone()
        return False


class Attack:
    """
    Clients guessing one account's password on every door from 127.0.0.1,
    each trying again the moment it is answered; the times of the answers.
    """

    def __init__(self, services: Services, name: str = VICTIM, perDoor: int = 2) -> None:
        self.services = services
        self.name = name
        self.answered: dict[str, list[float]] = {"bftp": [], "chat": [], "irc": [], "tether": []}
        self.running = True
        self.start = time.monotonic()
        self.guesses = 0
        self.done = defer.gatherResults([
            defer.Deferred.fromCoroutine(self._door(door))
            for door in self.answered for _ in range(perDoor)
        ])

    def guess(self) -> str:
        self.guesses += 1
        return f"guess{self.guesses}"

    async def _door(self, door: str) -> None:
        s, record = self.services, self.answered[door]
        connection = None
        while self.running:
            try:
                if door == "bftp":
                    ok = await s.bftpLogin(self.name, self.guess())
                elif door == "tether":
                    ok = await s.tetherLogin(self.name, self.guess())
                else:
                    if connection is None:
                        connection = await dial(s.reactor, getattr(s, door))
                        s.closers.append(connection.transport.abortConnection)
                        if door == "chat":
                            await connection.until("220")
                    login = s.chatLogin if door == "chat" else s.ircLogin
                    ok = await login(self.name, self.guess(), c=connection)
            except ConnectionDone:
                connection = None
                continue
            assert not ok
            if self.running:
                record.append(time.monotonic() - self.start)

    def perMinute(self, minutes: int) -> list[int]:
        times = sorted(t for ts in self.answered.values() for t in ts)
        return [sum(1 for t in times if m * MINUTE <= t < (m + 1) * MINUTE) for m in range(minutes)]


async def timed(coroutine) -> tuple[bool, float]:
    start = time.monotonic()
    ok = await coroutine
    return ok, time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_oneAccountGuessedOnEveryDoorAtOnce(reactor, tmp_path):
    """Guessing one account on BFTP, chat, IRC and tether together: about 10 checks in the first minute, a few a minute after; 60 users behind the same address log in within 5 s while one mistypes; the owner gets in from another address within 2 s."""
    s = await Services().start(reactor, tmp_path)
    typist = Attack(s, TYPIST[0], perDoor=1)
    attack = Attack(s)
    try:
        await deferLater(reactor, 1.5 * MINUTE)
        logins = {"bftp": s.bftpLogin, "chat": s.chatLogin, "irc": s.ircLogin, "tether": s.tetherLogin}
        doors = list(logins)
        nat = await defer.gatherResults([
            defer.Deferred.fromCoroutine(timed(logins[doors[i % 4]](name, password)))
            for i, (name, password) in enumerate(STUDENTS)
        ])
        elsewhere = []
        for login in (s.bftpLogin, s.chatLogin, s.ircLogin):
            elsewhere.append(await timed(login(VICTIM, RIGHT, source="127.0.0.2")))
            # Log out, so that the next door may take the nickname.
            s.closers.pop()()
            await deferLater(reactor, 0.1)
        while time.monotonic() - attack.start < 4 * MINUTE:
            await deferLater(reactor, 0.05)
        attack.running = typist.running = False
        counts = attack.perMinute(4)
        print(f"\nguesses checked per minute: {counts}; by door:",
              {door: len(times) for door, times in attack.answered.items()})
        print(f"60 logins behind the attacked address: slowest {max(t for _, t in nat):.2f} s;"
              f" typist answered {sum(map(len, typist.answered.values()))} times")
        print("owner from 127.0.0.2 (bftp, chat, irc):", ", ".join(f"{t:.3f} s" for _, t in elsewhere))
        assert counts[0] <= 10 and max(counts[1:]) <= 2
        assert sum(counts) >= 10 and all(attack.answered.values())
        assert all(ok for ok, _ in nat) and max(t for _, t in nat) < 5
        assert sum(map(len, typist.answered.values())) >= 8
        assert all(ok for ok, _ in elsewhere) and max(t for _, t in elsewhere) < 2
    finally:
        attack.running = typist.running = False
        await s.stop()
        await defer.DeferredList([attack.done, typist.done]).addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_sqliteStoreSlotsAreAtomicAcrossThreads(reactor, tmp_path):
    """Twenty reserves at once, in the thread pool, through two stores on one file, each get a slot of their own."""
    path = str(tmp_path / "passwd.throttle")
    stores = [SQLiteGuessStore(path, RULE, reactor) for _ in range(2)]
    now = 1000.0
    starts = await defer.gatherResults([
        stores[n % 2].reserve("p alice\0?", "a alice", now) for n in range(20)
    ])
    expected, slot = [], now
    for count in range(1, 21):
        expected.append(slot)
        slot += RULE.interval(count, 0)
    assert sorted(starts) == expected


class Twistd:
    """
    C{twistd -n bftp} in a subprocess, and the port it bound.
    """

    def __init__(self, tmp_path, *args: str) -> None:
        self.log = tmp_path / "twistd.log"
        (tmp_path / "bftp-root").mkdir()
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile", str(self.log), "bftp",
             "--root", str(tmp_path / "bftp-root"), "--listen", "tcp:0:interface=127.0.0.1", *args],
            cwd=str(tmp_path),
        )

    async def port(self, reactor) -> int:
        deadline = time.monotonic() + 20
        while True:
            text = self.log.read_text() if self.log.exists() else ""
            found = re.search(r"BFTPFactory starting on (\d+)", text)
            if found:
                return int(found.group(1))
            assert self.proc.poll() is None and time.monotonic() < deadline, text
            await deferLater(reactor, 0.05)


@pytest_twisted.ensureDeferred
async def test_twistdProcessSharesTheCounts(reactor, tmp_path):
    """A failure on chat in this process slows the next check of that account on a twistd BFTP process reading the same password file."""
    passwd = passwordFile(tmp_path)
    server = Twistd(tmp_path, "--passwd", passwd, "--guess-free", "0", "--guess-delay", "1",
                    "--guess-max-delay", "1")
    checker = PasswordChecker(passwd, reactor=reactor, rule=GuessRule(free=0, delay=1, maxDelay=1))
    rooms = ChatServer(MemoryHistory(), checker=checker, reactor=reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(ChatFactory(rooms, Limits(floodRate=0)))
    s = Services()
    s.reactor, s.bftp, s.chat, s.closers = reactor, await server.port(reactor), port.getHost().port, []
    try:
        ok, took = await timed(s.bftpLogin(VICTIM, RIGHT))
        assert ok and took < 0.5
        assert not await s.chatLogin(VICTIM, "wrong")
        ok, took = await timed(s.bftpLogin(VICTIM, RIGHT))
        assert ok and took > 0.7
        ok, took = await timed(s.bftpLogin("bob", "bob-right"))
        assert ok and took < 0.5
    finally:
        for close in s.closers:
            close()
        await port.stopListening()
        stopProcess(server.proc)


def test_throttleFileIsBesideThePasswordFile(tmp_path):
    """The checker of a password file keeps its counts in PASSWD.throttle, so services on that file share them."""
    passwd = passwordFile(tmp_path)
    from tests.bftp_support import FakeReactor

    store = PasswordChecker(passwd, reactor=FakeReactor(), rule=RULE).throttle.store
    assert isinstance(store, SQLiteGuessStore) and store.path == passwd + ".throttle"
    assert isinstance(Throttle.besidePasswordFile(passwd, RULE, FakeReactor()).store, SQLiteGuessStore)


def connectFrom(client: type, port: int, source: str):
    """
    A stdlib client class (L{poplib.POP3}, L{imaplib.IMAP4}) connected to
    127.0.0.1 from a source address of our choosing.
    """

    class From(client):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))

    return From("127.0.0.1", port, timeout=30)


def pop3Login(port: int, source: str, password: str) -> bool:
    client = connectFrom(poplib.POP3, port, source)
    try:
        client.user(VICTIM)
        client.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        client.close()


def imapLogin(port: int, source: str, password: str) -> bool:
    client = connectFrom(imaplib.IMAP4, port, source)
    try:
        client.login(VICTIM, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        client.logout()
    return True


def smtpLogin(port: int, source: str, password: str, cafile: str) -> bool:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=cafile))
        try:
            client.login(VICTIM, password)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


@pytest_twisted.ensureDeferred
async def test_postOfficeLoginsAreThrottledByTheClientsAddress(reactor, tmp_path, devCert):
    """POP3 PASS, IMAP LOGIN and SMTP AUTH (stdlib clients) are counted by the client's address: failures from 127.0.0.1 slow it down, 127.0.0.2 logs in at once on each."""
    passwd = passwordFile(tmp_path)
    rule = GuessRule(free=0, delay=0.5, maxDelay=0.5)
    checker = PasswordChecker(passwd, reactor=reactor, rule=rule)
    store = MaildirStore(str(tmp_path / "mail"), checker.hasUser, reactor=reactor)
    portal = mailPortal(store, ["example.test"], checker)
    ports = {}
    listening = []
    for name, factory in [("pop3", POP3Factory(portal)), ("imap", IMAPFactory(portal)),
                          ("smtp", SMTPFactory(store, ["example.test"], portal, serverContextFactory(*devCert)))]:
        listening.append(await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory))
        ports[name] = listening[-1].getHost().port
    cert = devCert[0]
    try:
        for login in (pop3Login, imapLogin):
            assert not await deferToThread(login, ports[login.__name__[:4]], "127.0.0.1", "wrong")
        assert not await deferToThread(smtpLogin, ports["smtp"], "127.0.0.1", "wrong", cert)
        for login, args in [(pop3Login, (ports["pop3"],)), (imapLogin, (ports["imap"],)),
                            (smtpLogin, (ports["smtp"],))]:
            extra = (cert,) if login is smtpLogin else ()
            ok, took = await timed(deferToThread(login, *args, "127.0.0.2", RIGHT, *extra))
            assert ok and took < 0.4, (login.__name__, took)
        ok, took = await timed(deferToThread(imapLogin, ports["imap"], "127.0.0.1", RIGHT))
        assert ok and took > 0.3
    finally:
        for port in listening:
            await port.stopListening()
        store.close()
