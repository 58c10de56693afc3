"""
Helpers for the post office tests: a store whose "threads" are run by the
test, an in-process post office on 127.0.0.1 port 0 (blocking stdlib
clients talk to it from threads), and a C{twistd postoffice} subprocess for
the tests that kill the server.
"""

from __future__ import annotations

import builtins
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Iterable

import pytest

from twisted.internet import defer, endpoints
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from coursenet.accounts import PasswordChecker
from coursenet.admission import Admission
from coursenet.procs import freePort, stopProcess, waitForPort
from coursenet.tls import serverContextFactory
from mail.auth import makePortal
from mail.imap import IMAPFactory, IMAPServer, MaildirAccount
from mail.maildir import MaildirStore, ensureMaildir, writeMessageFile
from mail.pop3 import POP3Factory
from mail.smtp import SMTPFactory
from tests.bftp_support import FakeReactor

DOMAIN = "example.test"
USER, PASSWORD = "alice", "secret"


class ManualPool:
    """
    A thread pool whose work waits until the test runs it (L{runAll}), in
    the test's own thread: what it has not run has not touched the disk.
    """

    def __init__(self, auto: bool = False) -> None:
        """
        @param auto: run each piece of work at once, as it is submitted.
        """
        self.auto = auto
        self.queue: list = []
        #: True while a piece of work runs: "in a thread of the pool".
        self.working = False
        self.ran = 0

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        self.queue.append((onResult, f, args, kwargs))
        if self.auto and not self.working:
            self.runAll()

    def runOne(self) -> None:
        """
        Run the oldest piece of queued work.
        """
        onResult, f, args, kwargs = self.queue.pop(0)
        self.working = True
        try:
            result = f(*args, **kwargs)
        except BaseException:
            self.working = False
            onResult(False, Failure())
        else:
            self.working = False
            onResult(True, result)
        self.ran += 1

    def runAll(self) -> int:
        """
        Run the queued work, and the work it queues, until none is left;
        how many pieces ran.
        """
        n = 0
        while self.queue:
            self.runOne()
            n += 1
        return n


class DiskGuard:
    """
    Watches the file system calls the store can make and notes each one
    made while C{pool} is not running work, that is, on the reactor thread.
    """

    NAMES = [
        "open", "rename", "replace", "unlink", "mkdir", "makedirs", "rmdir",
        "scandir", "listdir", "stat", "utime", "fsync",
    ]

    def __init__(self, monkeypatch, pool: ManualPool) -> None:
        self.pool = pool
        self.calls = 0
        self.outside: list[str] = []
        for name in self.NAMES:
            monkeypatch.setattr(os, name, self._watch(name, getattr(os, name)))
        monkeypatch.setattr(builtins, "open", self._watch("builtins.open", builtins.open))
        monkeypatch.setattr(shutil, "rmtree", self._watch("rmtree", shutil.rmtree))

    def _watch(self, name, real):
        def call(*args, **kwargs):
            self.calls += 1
            if not self.pool.working:
                self.outside.append(name)
            return real(*args, **kwargs)

        return call


def memoryStore(root: str, pool: ManualPool | None = None, **kwargs) -> MaildirStore:
    """
    A store on C{root} for alice and bob whose pool runs work at once (or
    C{pool}), on a reactor with a clock: no threads, no global reactor.
    """
    return MaildirStore(
        root,
        lambda n: n in (USER, "bob"),
        reactor=kwargs.pop("reactor", None) or FakeReactor(),
        threadPool=pool if pool is not None else ManualPool(auto=True),
        **kwargs,
    )


@pytest.fixture
def pool() -> ManualPool:
    """
    A thread pool that runs work only when the test says (import it as a
    fixture where it is used).
    """
    return ManualPool()


@pytest.fixture
def clock() -> FakeReactor:
    return FakeReactor()


def storeWith(root: str, pool: ManualPool | None, clock: FakeReactor | None, messages: Iterable[bytes]) -> MaildirStore:
    """
    A L{memoryStore} on C{root} whose alice has C{messages} in her INBOX,
    in that order (C{pool} and C{clock} L{None}: L{memoryStore}'s own).
    """
    store = memoryStore(root, pool, reactor=clock)
    inbox = store.maildir(USER)
    ensureMaildir(inbox)
    for message in messages:
        writeMessageFile(inbox, message)
    return store


def result(d):
    """
    The result of a L{Deferred} that has fired, or its exception raised.
    """
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class Session:
    """
    One logged-in IMAP session over StringTransport, on a store whose pool
    the test drives and a clock it advances.
    """

    def __init__(self, store, clock, pool: ManualPool) -> None:
        self.clock = clock
        self.pool = pool
        self.server = IMAPServer(clock=clock)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.server.account = MaildirAccount(store, "alice")
        self.server.state = "auth"
        self.transport.clear()

    def send(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def pump(self) -> None:
        """
        Run the pool and the clock until neither has anything left.
        """
        for _ in range(1000):
            ran = self.pool.runAll()
            calls = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
            self.clock.advance(0)
            if not ran and not calls and not self.pool.queue:
                return
        raise AssertionError("the session never settled")

    def lines(self) -> list[bytes]:
        out = self.transport.value().split(b"\r\n")
        self.transport.clear()
        return out[:-1]

    def say(self, data: bytes) -> list[bytes]:
        self.send(data)
        self.pump()
        return self.lines()

    def sayHeld(self, data: bytes) -> list[bytes]:
        """
        Send C{data}, check that nothing is answered while the pool has not
        run, then run it: the lines answered.
        """
        self.send(data)
        for _ in range(3):
            self.clock.advance(0)
        assert self.lines() == []
        return self.say(b"")


@dataclass
class PostOffice:
    """
    A running in-process post office: ports, store and the cleanup list.
    """

    root: str
    store: MaildirStore
    ports: dict = field(default_factory=dict)
    listeners: list = field(default_factory=list)

    def inbox(self, user: str = USER) -> list[str]:
        """
        The message files in C{user}'s INBOX (new and cur).
        """
        base = os.path.join(self.root, user)
        return sorted(
            os.path.join(sub, n)
            for sub in ("new", "cur")
            if os.path.isdir(os.path.join(base, sub))
            for n in os.listdir(os.path.join(base, sub))
        )

    def read(self, user: str = USER) -> list[bytes]:
        out = []
        for name in self.inbox(user):
            with open(os.path.join(self.root, user, name), "rb") as f:
                out.append(f.read())
        return out

    async def stop(self) -> None:
        await defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.listeners])
        self.store.close()


async def startPostOffice(reactor, root: str, devCert=None, tlsPorts=False, maxMessageSize=1024 * 1024, users=((USER, PASSWORD), ("bob", "hunter2")), admission: Admission | None = None) -> PostOffice:
    """
    Listen for SMTP, POP3 and IMAP on 127.0.0.1 port 0; with C{devCert},
    STARTTLS/STLS too, and with C{tlsPorts} also SMTPS/POP3S/IMAPS.  The
    three share C{admission}, as under twistd (by default, its defaults).
    """
    checker = PasswordChecker(None, users, reactor=reactor)
    store = MaildirStore(root, checker.hasUser, reactor=reactor, maxMessageSize=maxMessageSize)
    portal = makePortal(store, [DOMAIN], checker)
    ctx = serverContextFactory(*devCert) if devCert else None
    admission = admission or Admission()
    factories = {
        "smtp": SMTPFactory(store, [DOMAIN], portal, ctx, maxMessageSize, reactor=reactor, admission=admission),
        "pop3": POP3Factory(portal, ctx, loginNeedsTLS=ctx is not None, reactor=reactor, admission=admission),
        "imap": IMAPFactory(portal, ctx, maxMessageSize, reactor=reactor, admission=admission),
    }
    po = PostOffice(root, store)
    for name, factory in factories.items():
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        po.listeners.append(port)
        po.ports[name] = port.getHost().port
        if tlsPorts:
            port = await endpoints.SSL4ServerEndpoint(reactor, 0, ctx, interface="127.0.0.1").listen(factory)
            po.listeners.append(port)
            po.ports[name + "s"] = port.getHost().port
    return po


def inThread(f, *args, **kwargs):
    """
    Run a blocking client function in a thread: a Deferred.
    """
    return deferToThread(f, *args, **kwargs)


async def run(reactor, *argv: str, timeout: float = 60, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """
    Run an external command without blocking the reactor; its status,
    stdout and stderr.
    """
    def call():
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    return await deferToThread(call)


def message(subject: str = "hello", body: str = "Hi Alice,\r\nhow are you?\r\n") -> bytes:
    return (
        f"From: Bob <bob@else.test>\r\nTo: Alice <alice@{DOMAIN}>\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@else.test>\r\n\r\n{body}"
    ).encode()


class TwistdPostOffice:
    """
    C{twistd -n postoffice} in a subprocess, for tests that kill it.
    """

    def __init__(self, root: str, *extra: str) -> None:
        self.root = root
        self.ports = {n: freePort() for n in ("smtp", "pop3", "imap")}
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        args = [twistd, "-n", "--pidfile=", "--logfile", os.path.join(root, "twistd.log"), "postoffice",
                "--maildir", os.path.join(root, "mail"), "--domain", DOMAIN, "--user", f"{USER}:{PASSWORD}"]
        for name, port in self.ports.items():
            args += [f"--{name}", f"tcp:{port}:interface=127.0.0.1"]
        self.proc = subprocess.Popen(args + list(extra), cwd=root)
        try:
            for port in self.ports.values():
                waitForPort(port, self.proc)
        except RuntimeError:
            self.stop()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stopProcess(self.proc)
