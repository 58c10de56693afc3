"""
The ESMTP server: L{twisted.mail.smtp.ESMTP} with what it lacks here:
SIZE, 8BITMIME, PIPELINING and ENHANCEDSTATUSCODES, AUTH offered only under
TLS, RFC 5321 line limits answered with errors, bare CR/LF refused, local
delivery into Maildir acknowledged only once fsync'd, and no relaying.

Lines, pipelining and output are the shared receiver's
(L{mail.protocol.MailReceiver}, mixed in before C{ESMTP}): a command
answered later (the end of DATA, AUTH) holds the commands pipelined after
it, and a client that does not read its replies is not read from.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.imap4 import PLAINCredentials
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from twisted.mail.smtp import COMMAND, DATA, SMTPServerError
from zope.interface import implementer

from coursenet.accounts import PeerPortal
from coursenet.admission import Admission
from coursenet.logs import peerName
from coursenet.transport import noDelay
from mail import _compat
from mail.interfaces import IDelivery, IMailStore
from mail.protocol import MailFactory, MailReceiver

#: RFC 5321 4.5.3.1: 512 octets for a command line, 1000 for a text line,
#: both counting the CRLF.
COMMAND_LINE_MAX = 510
TEXT_LINE_MAX = 998
#: RFC 4954 4: an AUTH exchange line may reach 12288 octets.
AUTH_LINE_MAX = 12288
#: The longest line taken in each state of the session, without its CRLF.
_LINE_MAX = {COMMAND: COMMAND_LINE_MAX, DATA: TEXT_LINE_MAX, smtp.AUTH: AUTH_LINE_MAX}
DEFAULT_MAX_MESSAGE_SIZE = 25 * 1024 * 1024

_ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3}( |$)")
#: The enhanced status code (RFC 3463) given to a reply that has none yet.
_DEFAULT_ENHANCED = {
    221: b"2.0.0",
    235: b"2.7.0",
    250: b"2.0.0",
    421: b"4.4.2",
    451: b"4.3.0",
    452: b"4.3.1",
    454: b"4.7.0",
    500: b"5.5.2",
    501: b"5.5.4",
    502: b"5.5.1",
    503: b"5.5.1",
    504: b"5.5.4",
    530: b"5.7.0",
    535: b"5.7.8",
    550: b"5.0.0",
    552: b"5.3.4",
    553: b"5.1.3",
    554: b"5.6.0",
    555: b"5.5.4",
}


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)


def unquoteLocalPart(local: bytes) -> bytes:
    """
    The local part of an address as its mailbox is named: a quoted string
    (RFC 5321 4.1.2, C{"alice"} or C{"a\\"b"}) without its quotes and
    backslashes; any other form as it is.
    """
    if len(local) >= 2 and local.startswith(b'"') and local.endswith(b'"'):
        return _QUOTED_PAIR.sub(rb"\1", local[1:-1])
    return local


@implementer(IMessageSMTP)
class _MaildirMessage:
    """
    One recipient's copy of a message, written into its Maildir as it comes.
    """

    def __init__(self, delivery: IDelivery) -> None:
        self._delivery = delivery

    def lineReceived(self, line: bytes) -> None:
        self._delivery.write(line + b"\n")

    def eomReceived(self) -> Deferred[Any]:
        return self._delivery.commit()

    def connectionLost(self) -> None:
        self._delivery.abort()


@implementer(IMessageDelivery)
class LocalDelivery:
    """
    Who may send to whom: anyone to a local account (the MX role); mail
    for other domains is refused, with a reply that says whether
    authenticating would help.  This server does not relay.
    """

    def __init__(
        self,
        store: IMailStore,
        domains: Iterable[str],
        user: str | None = None,
        postmaster: str | None = None,
    ) -> None:
        """
        @param domains: the local domain names, lower case.
        @param user: the authenticated user, or L{None}.
        @param postmaster: the account that gets mail for C{postmaster}
            when there is no account of that name (RFC 5321 4.5.1).
        """
        self._store = store
        self._domains = frozenset(d.lower() for d in domains)
        self.user = user
        self.postmaster = postmaster

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None  # SMTPServer.receivedHeader writes it

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        if len(bytes(origin)) > 254:
            raise SMTPServerError(553, "5.1.7 Sender address too long")
        return origin

    def localUser(self, local: str) -> str | None:
        """
        The account a local part names (exactly, or in lower case), if any;
        C{postmaster}, in any case, is L{postmaster} unless an account has
        that name.
        """
        for name in (local, local.lower()):
            if self._store.hasUser(name):
                return name
        if local.lower() == "postmaster" and self.postmaster is not None:
            if self._store.hasUser(self.postmaster):
                return self.postmaster
        return None

    def validateTo(self, user: smtp.User) -> Callable[[], _MaildirMessage]:
        dest = user.dest
        address = _text(bytes(dest))
        if len(dest.local) > 64 or len(dest.domain) > 255:
            raise SMTPServerError(553, f"5.1.3 <{address}>: address too long")
        local = _text(unquoteLocalPart(dest.local))
        domain = _text(dest.domain).lower().rstrip(".")
        # RFC 5321 4.1.1.3: RCPT TO:<postmaster>, with no domain, is for
        # this server's postmaster whatever its host name.
        barePostmaster = local.lower() == "postmaster" and b"@" not in dest.addrstr
        if domain not in self._domains and not barePostmaster:
            if self.user is None:
                raise SMTPServerError(
                    550,
                    f"5.7.1 <{address}>: relaying denied: {domain} is not a"
                    " domain of this server",
                )
            raise SMTPServerError(
                550,
                f"5.7.1 <{address}>: this server delivers only to its own"
                " domains and does not relay",
            )
        name = self.localUser(local)
        if name is None:
            raise SMTPServerError(550, f"5.1.1 <{address}>: no such user here")
        store = self._store
        return lambda: _MaildirMessage(store.openDelivery(name))


class SMTPServer(MailReceiver, smtp.ESMTP):
    """
    One SMTP session.

    Every command line, and the final dot of DATA, gets one reply; until it
    has gone, the lines pipelined after it wait (RFC 2920: replies in the
    order of the commands).
    """

    noisy = False
    requireCRLF = True
    _log = Logger()
    transport: Any
    delivery: Any
    portal: Any

    _replies = 0
    _replyOwed: Deferred[None] | None = None
    # The message being received, for the delivery log.
    _inHeader = False
    _inMessageId = False
    _messageId: str | None = None
    _envelope: tuple[str, list[str]] = ("", [])
    _eomAt = 0.0

    def __init__(
        self,
        delivery: LocalDelivery,
        contextFactory: Any = None,
        maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Any = None,
    ) -> None:
        smtp.ESMTP.__init__(
            self,
            {b"PLAIN": PLAINCredentials, b"LOGIN": smtp.LOGINCredentials},
            contextFactory,
        )
        self.delivery = delivery
        self.maxMessageSize = maxMessageSize
        self._dataSize = 0
        self._clock = clock

    @staticmethod
    def busyReply(text: str) -> bytes:
        return b"421 4.3.2 " + text.encode("utf-8", "replace") + b"\r\n"

    # -- framing and replies --------------------------------------------------

    @property
    def mode(self) -> str:
        """
        What the next line is: a command, message text or an AUTH response.
        """
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        # Each state has its own line limit (RFC 5321 4.5.3.1, RFC 4954 4).
        self._mode = mode
        self.maxLineLength = _LINE_MAX[mode]

    @property
    def secure(self) -> bool:
        """
        Whether the session runs over TLS (SMTPS, or after STARTTLS).
        """
        return self.startedTLS or ISSLTransport.providedBy(self.transport)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.mode == DATA:
            self._failData(
                500, "5.5.6 Line too long: message lines are limited to 1000 octets"
            )
        else:
            self.mode = COMMAND
            self.sendCode(500, "5.5.2 Line too long: commands are limited to 512 octets")

    def bareLineFeed(self, line: bytes) -> Deferred[None] | None:
        self._refuseBare()
        return None

    def _refuseBare(self) -> None:
        if self.mode == DATA:
            # The whole message is refused, and a dot ended by a bare LF
            # does not end it: nothing after it is taken for a command
            # (SMTP smuggling).
            self._failData(550, "5.6.11 Bare CR or LF in the message: lines must end in CRLF")
        else:
            self.resetTimeout()
            self.sendCode(500, "5.5.2 Bare CR or LF in a command: end lines with CRLF")

    def sendCode(self, code: int, message: bytes | str = b"") -> None:
        if isinstance(message, str):
            message = message.encode("utf-8", "replace")
        # The EHLO reply (the only multi-line one) lists keywords: no codes.
        if (
            code in _DEFAULT_ENHANCED
            and b"\n" not in message
            and not _ENHANCED.match(message)
        ):
            message = _DEFAULT_ENHANCED[code] + b" " + message
        smtp.ESMTP.sendCode(self, code, message)
        self._replies += 1
        owed, self._replyOwed = self._replyOwed, None
        if owed is not None:
            owed.callback(None)

    def connectionMade(self) -> None:
        noDelay(self.transport)
        smtp.ESMTP.connectionMade(self)

    def greeting(self) -> bytes:
        return self.host + b" ESMTP coursenet post office"

    def lineReceived(self, line: bytes) -> Deferred[None] | None:
        return self._handleLine(line)

    def _handleLine(self, line: bytes) -> Deferred[None] | None:
        if self.mode == DATA:
            if line != b".":
                # RFC 1870: the size is of the message, without the dots
                # added by dot-stuffing.
                unstuffed = line[1:] if line.startswith(b".") else line
                self._dataSize += len(unstuffed) + 2
                if self._inHeader:
                    self._readHeader(unstuffed)
                if b"\r" in line:
                    self._failData(
                        550,
                        "5.6.11 Bare CR or LF in the message: lines must end in CRLF",
                    )
                elif self._dataSize > self.maxMessageSize:
                    self._failData(
                        552,
                        f"5.3.4 Message exceeds the maximum size of"
                        f" {self.maxMessageSize} octets",
                    )
            elif self.datafailed is None:
                self._eomAt = self.receiverClock().seconds()
        elif b"\r" in line:
            self._refuseBare()
            return None
        owed = self.mode != DATA or line == b"."
        replies = self._replies
        smtp.ESMTP.lineReceived(self, line)
        if owed and self._replies == replies and not self.transport.disconnecting:
            # Answered later (the store's commit, a password check): the
            # lines after it wait for that reply.
            self._replyOwed = Deferred()
            return self._replyOwed
        return None

    def _failData(self, code: int, text: str) -> None:
        if self.datafailed is None:
            self.datafailed = SMTPServerError(code, text)
            for message in _compat.smtpMessages(self):
                message.connectionLost()

    # -- commands -------------------------------------------------------------

    def lookupMethod(self, command: bytes) -> Callable[[bytes], None] | None:
        # Twisted decodes the verb as ASCII and crashes on anything else.
        if not command.isalpha() or not command.isascii():
            return None
        return smtp.ESMTP.lookupMethod(self, command)

    def extensions(self) -> dict:
        ext: dict = {
            b"SIZE": [b"%d" % self.maxMessageSize],
            b"8BITMIME": None,
            b"PIPELINING": None,
            b"ENHANCEDSTATUSCODES": None,
        }
        if self.canStartTLS and not self.secure:
            ext[b"STARTTLS"] = None
        if self.secure and self.portal is not None:
            ext[b"AUTH"] = [b"PLAIN", b"LOGIN"]
        return ext

    def do_EHLO(self, rest: bytes) -> None:
        if not rest.strip():
            self.sendCode(501, "5.5.4 Syntax: EHLO your-host-name")
            return
        smtp.ESMTP.do_EHLO(self, rest)

    def do_HELO(self, rest: bytes) -> None:
        if not rest.strip():
            self.sendCode(501, "5.5.4 Syntax: HELO your-host-name")
            return
        smtp.ESMTP.do_HELO(self, rest)

    def ext_STARTTLS(self, rest: bytes) -> None:
        if self.secure:
            self.sendCode(503, "5.5.1 TLS is already active")
        elif self.ctx is None or not self.canStartTLS:
            self.sendCode(454, "4.7.0 TLS not available")
        else:
            self.sendCode(220, "2.0.0 Ready to start TLS")
            # RFC 3207 4.2: what the client sent after STARTTLS, before TLS,
            # is thrown away, never run as if it came over TLS.
            self.clearLineBuffer()
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            # RFC 3207 4.2: forget everything learnt before TLS.
            _compat.smtpForget(self)

    def ext_AUTH(self, rest: bytes) -> None:
        if not self.secure:
            self.sendCode(530, "5.7.0 Must issue a STARTTLS command first")
        elif self.authenticated:
            self.sendCode(503, "5.5.1 Already authenticated")
        elif self._from is not None:
            self.sendCode(503, "5.5.1 AUTH is not allowed during a mail transaction")
        elif not rest.strip():
            self.sendCode(501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
        elif rest.split()[0].upper() not in self.challengers:
            self.sendCode(504, "5.5.4 Unrecognized authentication type: use PLAIN or LOGIN")
        else:
            smtp.ESMTP.ext_AUTH(self, rest)

    def do_MAIL(self, rest: bytes) -> None:
        if _compat.smtpHeloName(self) is None:
            self.sendCode(503, "5.5.1 Send EHLO or HELO first")
            return
        m = self.mail_re.match(rest)
        if m is not None and m.group("opts"):
            for option in m.group("opts").split():
                key, _, value = option.partition(b"=")
                key = key.upper()
                if key == b"SIZE":
                    if not value.isdigit() or len(value) > 20:
                        self.sendCode(501, "5.5.4 Bad SIZE value: give a number of octets")
                        return
                    if int(value) > self.maxMessageSize:
                        self.sendCode(
                            552,
                            f"5.3.4 Message size exceeds fixed maximum message size"
                            f" ({self.maxMessageSize} octets)",
                        )
                        return
                elif key == b"BODY":
                    if value.upper() not in (b"7BIT", b"8BITMIME"):
                        self.sendCode(501, "5.5.4 BODY must be 7BIT or 8BITMIME")
                        return
                elif key != b"AUTH":
                    self.sendCode(
                        555, f"5.5.4 MAIL parameter {_text(key)} is not supported"
                    )
                    return
        smtp.ESMTP.do_MAIL(self, rest)

    def do_RCPT(self, rest: bytes) -> None:
        m = self.rcpt_re.match(rest)
        if m is not None and m.group("opts"):
            self.sendCode(555, "5.5.4 RCPT parameters are not supported")
            return
        if _compat.smtpRecipientCount(self) >= 100:
            self.sendCode(452, "4.5.3 Too many recipients: send the rest in another message")
            return
        smtp.ESMTP.do_RCPT(self, rest)

    def do_DATA(self, rest: bytes) -> None:
        self._dataSize = 0
        self._inHeader = True
        self._messageId = None
        self._envelope = (
            _text(bytes(self._from)) if self._from is not None else "",
            [_text(bytes(user.dest)) for user, _ in self._to],
        )
        smtp.ESMTP.do_DATA(self, rest)

    def _readHeader(self, line: bytes) -> None:
        """
        Follow the message's header up to its blank line, for the
        Message-ID the delivery log gives (unfolded, at most 200
        characters).
        """
        if not line:
            self._inHeader = False
        elif line[:1] in (b" ", b"\t"):
            if self._messageId is not None and self._inMessageId:
                self._messageId = (self._messageId + " " + _text(line.strip())).strip()[:200]
        else:
            name, colon, value = line.partition(b":")
            self._inMessageId = bool(colon) and name.strip().lower() == b"message-id"
            if self._inMessageId:
                self._messageId = _text(value.strip())[:200]

    def do_NOOP(self, rest: bytes) -> None:
        self.sendCode(250, "2.0.0 OK")

    def do_VRFY(self, rest: bytes) -> None:
        self.sendCode(252, "2.5.0 Cannot VRFY user; send mail and it will be delivered")

    def do_UNKNOWN(self, rest: bytes) -> None:
        self.sendCode(502, "5.5.1 Command not recognized")

    def receivedHeader(self, helo: Any, origin: Any, recipients: list[Any]) -> bytes:
        peer = self.transport.getPeer()
        ip = getattr(peer, "host", str(peer))
        protocol = "ESMTP" if helo[0] else "SMTP"
        if self.secure:
            protocol += "S"
        if self.authenticated:
            protocol += "A"
        name = _text(helo[0] or b"unknown")
        path = _text(bytes(origin)) if origin else ""
        return (
            f"Return-Path: <{path}>\n"
            f"Received: from {name} ([{ip}])\n"
            f"\tby {_text(self.host)} (coursenet) with {protocol}\n"
            f"\tfor <{_text(bytes(recipients[0].dest))}>; {_text(smtp.rfc822date())}"
        ).encode("utf-8", "replace")

    def _messageHandled(self, resultList: list[tuple[bool, Any]]) -> None:
        failures = [result for ok, result in resultList if not ok]
        for failure in failures:
            self._log.failure("could not store a message", failure)
        if failures:
            self.sendCode(
                451,
                "4.3.0 Could not store the message; try again later",
            )
        else:
            self.sendCode(250, "2.0.0 Ok: message stored")
            sender, recipients = self._envelope
            self._log.info(
                "delivered {messageId} ({size} octets) from <{sender}> to"
                " {recipients}: durable in {durable:.1f} ms",
                messageId=self._messageId or "(no Message-ID)",
                size=self._dataSize,
                sender=sender,
                recipients=", ".join(f"<{r}>" for r in recipients),
                durable=(self.receiverClock().seconds() - self._eomAt) * 1000,
            )

    def _cbAuthenticated(self, loginInfo):
        postmaster = self.delivery.postmaster
        result = smtp.ESMTP._cbAuthenticated(self, loginInfo)
        # The realm's delivery for the user: postmaster mail goes where
        # this server sends it.
        self.delivery.postmaster = postmaster
        self._log.info("{peer} authenticated", peer=peerName(self.transport.getPeer(), self.delivery.user))
        return result


class SMTPFactory(MailFactory, smtp.SMTPFactory):
    """
    Builds L{SMTPServer}s delivering into a store, for as many connections
    as its L{Admission} takes; the others are answered C{421 4.3.2} and
    closed.  C{reactor} and C{admission} are L{MailFactory}'s.
    """

    # Read for its busyReply: sessions are built, with their arguments, by
    # buildSession, not called as SMTP's no-argument class.
    protocol = SMTPServer  # type: ignore[assignment]

    def __init__(
        self,
        store: IMailStore,
        domains: Iterable[str],
        portal: Any = None,
        contextFactory: Any = None,
        maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE,
        hostname: str | None = None,
        timeout: int = 300,
        reactor: Any = None,
        admission: Admission | None = None,
        postmaster: str | None = None,
    ) -> None:
        """
        @param postmaster: the account that gets mail for C{postmaster}
            when no account has that name.
        """
        MailFactory.__init__(self, reactor, admission)
        smtp.SMTPFactory.__init__(self, portal)
        self.postmaster = postmaster
        self.store = store
        self.domains = list(domains)
        self.contextFactory = contextFactory
        self.maxMessageSize = maxMessageSize
        self.hostname = hostname or self.domains[0]
        self.timeout = timeout

    def buildSession(self, addr: Any) -> SMTPServer:
        p = SMTPServer(
            LocalDelivery(self.store, self.domains, postmaster=self.postmaster),
            self.contextFactory,
            self.maxMessageSize,
            self.reactor,
        )
        p.factory = self
        # Logins are throttled by the client's address (coursenet.throttle).
        p.portal = PeerPortal.forPeer(self.portal, addr)
        p.host = self.hostname
        p.timeout = self.timeout
        return p
