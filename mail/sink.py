"""
C{twistd postoffice --sink}: a development sink, like aiosmtpd's default
handler.  Mail for any address, in any domain, is accepted into one
Maildir (the account L{SINK_ACCOUNT}'s) and each message is logged.  It is
delivered nowhere else, so nothing is relayed; still, a server that takes
anyone's mail for anyone belongs on loopback, and L{nonLoopback} finds the
listeners that are not.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from zope.interface import implementer

from coursenet.logs import peerName
from mail.interfaces import IDelivery, IMailStore
from mail.smtp import LocalDelivery, SMTPFactory, SMTPServer, SMTPServerError, _text

#: The account whose Maildir (C{ROOT/sink}) the sink fills.
SINK_ACCOUNT = "sink"

_log = Logger()


@implementer(IMessageSMTP)
class _SinkMessage:
    """
    The one stored copy of a message, whatever its recipients: written as
    it comes, logged with its envelope and subject once durable.
    """

    def __init__(self, delivery: IDelivery, peer: str, sender: str, recipients: list[str]) -> None:
        self._delivery = delivery
        self._peer = peer
        self._sender = sender
        self._recipients = recipients
        self._inHeader = True
        self._subject: str | None = None
        self._inSubject = False
        # The envelope, which the header need not show (Bcc, lists).
        delivery.write(b"X-Envelope-To: " + ", ".join(f"<{r}>" for r in recipients).encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        if self._inHeader:
            self._readHeader(line)
        self._delivery.write(line + b"\n")

    def _readHeader(self, line: bytes) -> None:
        if not line:
            self._inHeader = False
            return
        if line[:1] in (b" ", b"\t"):
            if self._inSubject and self._subject is not None:
                self._subject = (self._subject + " " + _text(line.strip()))[:200]
            return
        name, colon, value = line.partition(b":")
        self._inSubject = bool(colon) and name.strip().lower() == b"subject"
        if self._inSubject:
            self._subject = _text(value.strip())[:200]

    def eomReceived(self) -> Deferred[Any]:
        size = self._delivery.size

        def stored(name: str) -> str:
            _log.info(
                "sink: {peer} sent a message from <{sender}> to {recipients}, subject {subject!r},"
                " {size} octets, kept as {name}",
                peer=self._peer, sender=self._sender, recipients=", ".join(f"<{r}>" for r in self._recipients),
                subject=self._subject if self._subject is not None else "(none)", size=size, name=name,
            )
            return name

        return self._delivery.commit().addCallback(stored)

    def connectionLost(self) -> None:
        self._delivery.abort()


@implementer(IMessageSMTP)
class _SameCopy:
    """
    Another recipient of a message the sink already keeps once.
    """

    def lineReceived(self, line: bytes) -> None:
        pass

    def eomReceived(self) -> Deferred[None]:
        return succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(IMessageDelivery)
class SinkDelivery(LocalDelivery):
    """
    Anyone to anyone: every recipient accepted, the message kept once in
    the sink account's Maildir.
    """

    def __init__(self, store: IMailStore, peer: str, account: str = SINK_ACCOUNT) -> None:
        """
        @param peer: the client, as log lines name it (L{peerName}).
        """
        super().__init__(store, ())
        self._peer = peer
        self._account = account
        self._sender = ""
        self._recipients: list[str] = []

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        origin = super().validateFrom(helo, origin)
        # A new transaction (MAIL FROM): its own recipients and copy.
        self._sender = _text(bytes(origin))
        self._recipients = []
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], Any]:
        dest = user.dest
        address = _text(bytes(dest))
        if len(dest.local) > 64 or len(dest.domain) > 255:
            raise SMTPServerError(553, f"5.1.3 <{address}>: address too long")
        recipients = self._recipients
        recipients.append(address)
        if len(recipients) > 1:
            return _SameCopy
        store, account, peer, sender = self._store, self._account, self._peer, self._sender
        return lambda: _SinkMessage(store.openDelivery(account), peer, sender, recipients)


class SinkSMTPFactory(SMTPFactory):
    """
    An L{SMTPFactory} whose sessions deliver into the sink, with no AUTH
    (no account is needed to send).
    """

    def buildSession(self, addr: Any) -> SMTPServer:
        session = super().buildSession(addr)
        session.delivery = SinkDelivery(self.store, peerName(addr))
        session.portal = None
        return session


def nonLoopback(description: str) -> str | None:
    """
    Where a server endpoint string listens, if that is beyond loopback
    (C{"every interface"} when it names none); L{None} for a loopback or
    UNIX-socket listener.
    """
    kind = description.split(":", 1)[0].lower()
    if kind in ("unix", "systemd"):
        return None
    match = re.search(r"(?:^|:)interface=((?:\\.|[^:\\])*)", description)
    if match is None:
        return "every interface"
    interface = re.sub(r"\\(.)", r"\1", match.group(1))
    if interface == "localhost":
        return None
    try:
        if ipaddress.ip_address(interface).is_loopback:
            return None
    except ValueError:
        pass
    return interface or "every interface"


def sinkPath(root: str, account: str = SINK_ACCOUNT) -> str:
    """
    The Maildir the sink fills under the store C{root}.
    """
    return os.path.join(root, account)
