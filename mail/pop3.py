"""
The POP3 server: L{twisted.mail.pop3.POP3} with deletions that take effect
only at QUIT, RFC 1939 listings that leave deleted messages out, CAPA with
the RFC 2449 names, STLS (RFC 2595), persistent UIDL, one session per
mailbox, and error replies where Twisted would drop the line or the
connection.
"""

from __future__ import annotations

import io

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginDenied, LoginFailed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import pop3
from zope.interface import implementer

from coursenet.transport import noDelay
from mail.lines import BoundedLines

#: RFC 2449 section 4: commands are at most 255 octets with the CRLF.
COMMAND_LINE_MAX = 253


class MailboxInUse(Exception):
    """
    Another POP3 session holds this mailbox.
    """


@implementer(pop3.IMailbox)
class POP3Mailbox:
    """
    What one POP3 session sees of an INBOX: the messages there at login, in
    a fixed order.  DELE only marks; L{sync} (at QUIT) removes.
    """

    def __init__(self, folder) -> None:
        folder.scan()
        self._folder = folder
        self._uids = folder.uids()
        self._sizes = [folder.size(uid) for uid in self._uids]
        self._deleted: set[int] = set()

    def _check(self, i: int) -> int:
        if not 0 <= i < len(self._uids) or i in self._deleted:
            raise ValueError(f"no message {i + 1}")
        return self._uids[i]

    def listMessages(self, i=None):
        if i is None:
            return [
                None if n in self._deleted else size
                for n, size in enumerate(self._sizes)
            ]
        self._check(i)
        return self._sizes[i]

    def getMessage(self, i: int):
        uid = self._check(i)
        try:
            with open(self._folder.filename(uid), "rb") as f:
                return io.BytesIO(f.read())
        except (KeyError, FileNotFoundError):
            raise ValueError(f"message {i + 1} was removed by another session")

    def getUidl(self, i: int) -> bytes:
        uid = self._check(i)
        return b"%d.%d" % (self._folder.uidValidity, uid)

    def deleteMessage(self, i: int) -> None:
        self._check(i)
        self._deleted.add(i)

    def undeleteMessages(self) -> None:
        self._deleted.clear()

    def sync(self) -> None:
        self._folder.remove(self._uids[i] for i in sorted(self._deleted))
        self._deleted.clear()


class POP3Server(BoundedLines, pop3.POP3):
    """
    One POP3 session.
    """

    _log = Logger()
    magic = b"coursenet POP3 server ready"
    AUTH_CMDS = [b"CAPA", b"USER", b"PASS", b"APOP", b"AUTH", b"QUIT", b"STLS"]

    def __init__(self, contextFactory=None, loginNeedsTLS: bool = False) -> None:
        self.ctx = contextFactory
        self.loginNeedsTLS = loginNeedsTLS
        self.startedTLS = False
        self._lineStart = True

    @property
    def secure(self) -> bool:
        return self.startedTLS or ISSLTransport.providedBy(self.transport)

    def connectionMade(self) -> None:
        noDelay(self.transport)
        pop3.POP3.connectionMade(self)

    def maxLineLength(self) -> int:
        return COMMAND_LINE_MAX

    def lineTooLong(self) -> None:
        self.failResponse(b"Line too long: commands are limited to 255 octets")

    def state_COMMAND(self, line: bytes) -> None:
        try:
            self.processCommand(*line.split(b" "))
        except pop3.POP3Error as e:
            self.failResponse(b"".join(e.args))
        except TypeError:
            self.failResponse(b"Wrong number of arguments for that command")

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
            self.dropPendingInput()
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            self._userIs = None

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
        d.addErrback(self._ebUnexpected)
        return self._longOperation(d)

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
        sizes = [s for s in self.mbox.listMessages() if s is not None]
        self.successResponse(b"%d %d" % (len(sizes), sum(sizes)))

    def do_LIST(self, i=None) -> None:
        if i is not None:
            n = self._number(i)
            if n is not None:
                self.successResponse(b"%d %d" % (n + 1, self.mbox.listMessages(n)))
            return
        sizes = self.mbox.listMessages()
        lines = [b"+OK scan listing follows\r\n"]
        lines += [b"%d %d\r\n" % (n + 1, s) for n, s in enumerate(sizes) if s is not None]
        lines.append(b".\r\n")
        self.transport.writeSequence(lines)

    def do_UIDL(self, i=None) -> None:
        if i is not None:
            n = self._number(i)
            if n is not None:
                self.successResponse(b"%d %s" % (n + 1, self.mbox.getUidl(n)))
            return
        sizes = self.mbox.listMessages()
        lines = [b"+OK unique-id listing follows\r\n"]
        lines += [
            b"%d %s\r\n" % (n + 1, self.mbox.getUidl(n))
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
            self.mbox.listMessages(n)
        except ValueError:
            self.failResponse(b"No such message")
            return None
        return n

    def do_DELE(self, i: bytes) -> None:
        n = self._number(i)
        if n is not None:
            self.mbox.deleteMessage(n)
            self.successResponse(b"message %d deleted" % (n + 1,))

    def do_RETR(self, i: bytes):
        self._lineStart = True
        return pop3.POP3.do_RETR(self, i)

    def do_TOP(self, i: bytes, size: bytes):
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

    def do_QUIT(self) -> None:
        if self.mbox:
            try:
                self.mbox.sync()
            except OSError as e:
                self._log.error("POP3 QUIT could not delete: {e}", e=e)
                self.failResponse(b"[SYS/TEMP] Some deleted messages were not removed")
                self.transport.loseConnection()
                return
        self.successResponse(b"coursenet POP3 server signing off")
        self.transport.loseConnection()


class POP3Factory(ServerFactory):
    """
    Builds L{POP3Server}s for one portal.
    """

    def __init__(self, portal, contextFactory=None, loginNeedsTLS: bool = False) -> None:
        self.portal = portal
        self.contextFactory = contextFactory
        self.loginNeedsTLS = loginNeedsTLS

    def buildProtocol(self, addr):
        p = POP3Server(self.contextFactory, self.loginNeedsTLS)
        p.portal = self.portal
        p.factory = self
        return p
