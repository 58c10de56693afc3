"""
Helpers for the post office tests: an in-process post office on
127.0.0.1 port 0 (blocking stdlib clients talk to it from threads), and a
C{twistd postoffice} subprocess for the tests that kill the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from twisted.internet import defer, endpoints
from twisted.internet.threads import deferToThread

from coursenet.accounts import PasswordChecker
from coursenet.procs import freePort, stopProcess, waitForPort
from coursenet.tls import serverContextFactory
from mail.auth import makePortal
from mail.imap import IMAPFactory
from mail.maildir import MaildirStore
from mail.pop3 import POP3Factory
from mail.smtp import SMTPFactory

DOMAIN = "example.test"
USER, PASSWORD = "alice", "secret"


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


async def startPostOffice(reactor, root: str, devCert=None, tlsPorts=False, maxMessageSize=1024 * 1024, users=((USER, PASSWORD), ("bob", "hunter2"))) -> PostOffice:
    """
    Listen for SMTP, POP3 and IMAP on 127.0.0.1 port 0; with C{devCert},
    STARTTLS/STLS too, and with C{tlsPorts} also SMTPS/POP3S/IMAPS.
    """
    checker = PasswordChecker(None, users, reactor=reactor)
    store = MaildirStore(root, checker.hasUser, reactor=reactor, maxMessageSize=maxMessageSize)
    portal = makePortal(store, [DOMAIN], checker)
    ctx = serverContextFactory(*devCert) if devCert else None
    factories = {
        "smtp": SMTPFactory(store, [DOMAIN], portal, ctx, maxMessageSize),
        "pop3": POP3Factory(portal, ctx, loginNeedsTLS=ctx is not None),
        "imap": IMAPFactory(portal, ctx, maxMessageSize),
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
