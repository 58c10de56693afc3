"""
The POP3 server: L{twisted.mail.pop3.POP3} with deletions that take effect
only at QUIT, RFC 1939 listings that leave deleted messages out, CAPA with
the RFC 2449 names, STLS (RFC 2595), persistent UIDL, one session per
mailbox, and error replies where Twisted would drop the line or the
connection.

The mailbox is read, its messages fetched and its deletions made in the
store's threads; commands wait for them in order.  Lines, pipelining and
output are the shared receiver's (L{mail.protocol.MailReceiver}, mixed in
before C{POP3}): a command answered later holds the commands pipelined
after it, and a client that does not read its replies is not read from.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginDenied, LoginFailed
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure
from zope.interface import implementer

from coursenet.accounts import PeerPortal
from coursenet.admission import Admission
from coursenet.logs import peerName
from coursenet.transport import noDelay
from mail import _compat
from mail.interfaces import IFolder
from mail.protocol import MailFactory, MailReceiver

#: RFC 2449 section 4: commands are at most 255 octets with the CRLF.
COMMAND_LINE_MAX = 253


class MailboxInUse(Exception):
    """
    Another POP3 session holds this mailbox.
    """


@implementer(pop3.IMailbox)
class POP3Mailbox:
    """
    What one POP3 session sees of an INBOX: the messages there when it is
    opened, in a fixed order.  DELE only marks; L{sync} (at QUIT) removes.
    """

    def __init__(self, folder: IFolder) -> None:
        """
        Nothing is read yet: L{whenOpen} reads the folder.
        """
        self._folder = folder
        self._uids: list[int] = []
        self._sizes: list[int] = []
        self._deleted: set[int] = set()
        self._reading = False
        self._waiting: list[Deferred[None]] = []
        self.isOpen = False

    def whenOpen(self) -> Deferred[None]:
        """
        Read the folder in the store's threads (once): fires when the
        messages this session sees are fixed.
        """
        d: Deferred[None] = Deferred()
        if self.isOpen:
            d.callback(None)
            return d
        self._waiting.append(d)
        if not self._reading:
            self._reading = True
            self._folder.refresh().addBoth(self._opened)
        return d

    def _opened(self, result: object) -> None:
        self._reading = False
        if not isinstance(result, Failure):
            self._uids = self._folder.uids()
            self._sizes = [self._folder.size(uid) for uid in self._uids]
            self.isOpen = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _check(self, i: int) -> int:
        if not 0 <= i < len(self._uids) or i in self._deleted:
            raise ValueError(f"no message {i + 1}")
        return self._uids[i]

    def listMessages(self, i: int | None = None) -> Any:
        if i is None:
            return [
                None if n in self._deleted else size
                for n, size in enumerate(self._sizes)
            ]
        self._check(i)
        return self._sizes[i]

    def getMessage(self, i: int) -> Deferred[io.BytesIO]:
        uid = self._check(i)

        def found(contents: dict[int, bytes]) -> io.BytesIO:
            if uid not in contents:
                raise ValueError(f"message {i + 1} was removed by another session")
            return io.BytesIO(contents[uid])

        return self._folder.read([uid]).addCallback(found)

    def getUidl(self, i: int) -> bytes:
        uid = self._check(i)
        return b"%d.%d" % (self._folder.uidValidity, uid)

    def deleteMessage(self, i: int) -> None:
        self._check(i)
        self._deleted.add(i)

    def undeleteMessages(self) -> None:
        self._deleted.clear()

    def sync(self) -> Deferred[None]:
        """
        Remove the messages marked with DELE.
        """

        def removed(_: list[int]) -> None:
            self._deleted.clear()

        doomed = [self._uids[i] for i in sorted(self._deleted)]
        return self._folder.remove(doomed).addCallback(removed)


class POP3Server(MailReceiver, pop3.POP3):
    """
    One POP3 session.
    """

    _log = Logger()
    magic = b"coursenet POP3 server ready"
    maxLineLength = COMMAND_LINE_MAX
    transport: Any
    portal: Any
    factory: Any
    AUTH_CMDS = [b"CAPA", b"USER", b"PASS", b"APOP", b"AUTH", b"QUIT", b"STLS"]

    def __init__(self, contextFactory: Any = None, loginNeedsTLS: bool = False, clock: Any = None) -> None:
        """
        @param clock: the reactor of the session's deadlines; Twisted's
            global one by default.
        """
        self.ctx = contextFactory
        self.loginNeedsTLS = loginNeedsTLS
        self.startedTLS = False
        self._lineStart = True
        self._clock = clock

    @staticmethod
    def busyReply(text: str) -> bytes:
        return b"-ERR [SYS/TEMP] " + text.encode("utf-8", "replace") + b"\r\n"

    @property
    def secure(self) -> bool:
        return self.startedTLS or ISSLTransport.providedBy(self.transport)

    @property
    def mailbox(self) -> POP3Mailbox:
        """
        The mailbox of the logged-in session.
        """
        assert isinstance(self.mbox, POP3Mailbox)
        return self.mbox

    def connectionMade(self) -> None:
        noDelay(self.transport)
        pop3.POP3.connectionMade(self)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.failResponse(b"Line too long: commands are limited to 255 octets")

    def lineReceived(self, line: bytes) -> Deferred[Any] | None:
        # Twisted's, with the command's Deferred handed to the receiver,
        # which holds the lines after it until it fires.
        self.resetTimeout()
        result = getattr(self, "state_" + self.state)(line)
        return result if isinstance(result, Deferred) else None

    def state_COMMAND(self, line: bytes) -> Any:
        return self.processCommand(*line.split(b" "))

    def processCommand(self, command: bytes, *args: bytes) -> Any:
        if self.mbox is not None and not self.mailbox.isOpen:
            # The first command after login waits for the maildrop.
            return self.mailbox.whenOpen().addCallbacks(
                lambda _: self.processCommand(command, *args), self._notOpened
            )
        try:
            return pop3.POP3.processCommand(self, command, *args)
        except pop3.POP3Error as e:
            self.failResponse(b"".join(e.args))
        except TypeError:
            self.failResponse(b"Wrong number of arguments for that command")
        return None

    def _notOpened(self, failure: Failure) -> None:
        self._log.failure("could not read a POP3 mailbox", failure)
        self.failResponse(b"[SYS/TEMP] Could not read the mailbox; try again later")
        self.transport.loseConnection()

    def listCapabilities(self) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"PIPELINING", b"RESP-CODES", b"AUTH-RESP-CODE"]
        if not self.mbox and (self.secure or not self.loginNeedsTLS):
            caps.append(b"USER")
        if self.ctx is not None and not self.secure and not self.mbox:
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION coursenet")
        return caps

    def do_STLS(self) -> None:
        if self.mbox:
            self.failResponse(b"STLS is only allowed before login")
        elif self.secure:
            self.failResponse(b"TLS is already active")
        elif self.ctx is None:
            self.failResponse(b"STLS is not available on this server")
        else:
            self.successResponse(b"Begin TLS negotiation")
            # RFC 2595 3.1: what the client sent after STLS, before TLS, is
            # thrown away, never run as if it came over TLS.
            self.clearLineBuffer()
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            _compat.pop3ForgetUser(self)

    def _loginRefused(self) -> bool:
        if self.mbox:
            self.failResponse(b"Already logged in")
            return True
        if self.loginNeedsTLS and not self.secure:
            self.failResponse(
                b"[AUTH] Passwords are not accepted in clear text: use STLS first"
            )
            return True
        return False

    def do_USER(self, user: bytes) -> None:
        if not self._loginRefused():
            pop3.POP3.do_USER(self, user)

    def do_PASS(self, password: bytes, *words: bytes) -> None:
        if self._loginRefused():
            return
        if self._userIs is None:
            self.failResponse(b"USER required before PASS")
            return
        user = self._userIs
        self._userIs = None
        password = b" ".join((password,) + words)
        d = self.portal.login(
            UsernamePassword(user, password), None, pop3.IMailbox
        )
        d.addCallbacks(self._cbMailbox, self._ebMailbox, callbackArgs=(user,))
        d.addCallback(self._loggedIn, user)
        d.addErrback(self._ebUnexpected)
        return self._longOperation(d)

    def _loggedIn(self, result: object, user: bytes) -> None:
        if self.mbox:
            self._log.info("{peer} logged in", peer=peerName(self.transport.getPeer(), user.decode("utf-8", "replace")))

    def do_APOP(self, user: bytes, digest: bytes) -> None:
        self.failResponse(b"APOP is not supported: use USER and PASS")

    def _ebMailbox(self, failure) -> None:
        if failure.check(MailboxInUse):
            self.failResponse(
                b"[IN-USE] Mailbox in use by another POP3 session; try again later"
            )
        else:
            failure.trap(LoginDenied, LoginFailed)
            self.failResponse(b"[AUTH] Authentication failed")

    def do_STAT(self) -> None:
        sizes = [s for s in self.mailbox.listMessages() if s is not None]
        self.successResponse(b"%d %d" % (len(sizes), sum(sizes)))

    def do_LIST(self, i: bytes | None = None) -> None:
        if i is not None:
            n = self._number(i)
            if n is not None:
                self.successResponse(b"%d %d" % (n + 1, self.mailbox.listMessages(n)))
            return
        sizes = self.mailbox.listMessages()
        lines = [b"+OK scan listing follows\r\n"]
        lines += [b"%d %d\r\n" % (n + 1, s) for n, s in enumerate(sizes) if s is not None]
        lines.append(b".\r\n")
        self.transport.writeSequence(lines)

    def do_UIDL(self, i: bytes | None = None) -> None:
        if i is not None:
            n = self._number(i)
            if n is not None:
                self.successResponse(b"%d %s" % (n + 1, self.mailbox.getUidl(n)))
            return
        sizes = self.mailbox.listMessages()
        lines = [b"+OK unique-id listing follows\r\n"]
        lines += [
            b"%d %s\r\n" % (n + 1, self.mailbox.getUidl(n))
            for n, s in enumerate(sizes)
            if s is not None
        ]
        lines.append(b".\r\n")
        self.transport.writeSequence(lines)

    def _number(self, i: bytes) -> int | None:
        """
        The 0-based index of live message number C{i}, or L{None} after
        answering with an error.
        """
        try:
            n = int(i) - 1
            self.mailbox.listMessages(n)
        except ValueError:
            self.failResponse(b"No such message")
            return None
        return n

    def do_DELE(self, i: bytes) -> None:
        n = self._number(i)
        if n is not None:
            self.mailbox.deleteMessage(n)
            self.successResponse(b"message %d deleted" % (n + 1,))

    def do_RETR(self, i: bytes) -> Deferred[Any]:
        self._lineStart = True
        return pop3.POP3.do_RETR(self, i)

    def do_TOP(self, i: bytes, size: bytes) -> Deferred[Any] | None:
        self._lineStart = True
        return pop3.POP3.do_TOP(self, i, size)

    def transformChunk(self, chunk: bytes) -> bytes:
        # Twisted's version misses a dot at the start of the message or of
        # a chunk; this one remembers where the last chunk ended.
        out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._lineStart and out.startswith(b"."):
            out = b"." + out
        out = out.replace(b"\r\n.", b"\r\n..")
        self._lineStart = out.endswith(b"\n")
        return out

    def do_QUIT(self) -> Deferred[None] | None:
        if not self.mbox:
            self._signOff()
            return None

        def failed(failure: Failure) -> None:
            self._log.failure("POP3 QUIT could not delete", failure)
            self.failResponse(b"[SYS/TEMP] Some deleted messages were not removed")
            self.transport.loseConnection()

        return self.mailbox.sync().addCallbacks(lambda _: self._signOff(), failed)

    def _signOff(self) -> None:
        self.successResponse(b"coursenet POP3 server signing off")
        self.transport.loseConnection()


class POP3Factory(MailFactory, ServerFactory):
    """
    Builds L{POP3Server}s for one portal, for as many connections as its
    L{Admission} takes; the others are answered C{-ERR [SYS/TEMP]} and
    closed.  C{reactor} and C{admission} are L{MailFactory}'s.
    """

    protocol = POP3Server
    # Twisted's POP3 logs each connection ("New connection from
    # IPv4Address(...)") when its factory is noisy: anyone could fill the log.
    noisy = False

    def __init__(
        self,
        portal: Any,
        contextFactory: Any = None,
        loginNeedsTLS: bool = False,
        reactor: Any = None,
        admission: Admission | None = None,
    ) -> None:
        MailFactory.__init__(self, reactor, admission)
        self.portal = portal
        self.contextFactory = contextFactory
        self.loginNeedsTLS = loginNeedsTLS

    def buildSession(self, addr: Any) -> POP3Server:
        p = POP3Server(self.contextFactory, self.loginNeedsTLS, self.reactor)
        # Logins are throttled by the client's address (coursenet.throttle).
        p.portal = PeerPortal.forPeer(self.portal, addr)
        p.factory = self
        return p
