"""
The private names of Twisted the post office relies on (mail/_compat.py)
still exist and still behave as it expects: an upgrade of Twisted that
changes one fails here.
"""

from __future__ import annotations

import inspect

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mail import _compat
from mail.imap import IMAPServer
from mail.pop3 import POP3Server
from mail.smtp import LocalDelivery, SMTPServer
from tests.test_mail_smtp import FakeStore


@pytest.mark.parametrize(
    "cls, name, params",
    _compat.OVERRIDDEN + _compat.LOGIN,
    ids=[f"{c.__name__}.{n}" for c, n, _ in _compat.OVERRIDDEN + _compat.LOGIN],
)
def test_private_methods_keep_their_signature(cls, name, params):
    """Each private Twisted method overridden or called here exists with the parameters it is called with."""
    method = getattr(cls, name)
    assert tuple(inspect.signature(method).parameters) == params


def smtp(store=None):
    p = SMTPServer(LocalDelivery(store or FakeStore(), ["example.test"]), None, 10_000, clock=Clock())
    p.host = b"example.test"
    p.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000)))
    return p


def test_smtp_transaction_state():
    """The HELO name, recipient count and DATA messages are read from SMTP's private state, and forgotten together."""
    store = FakeStore()
    p = smtp(store)
    assert _compat.smtpHeloName(p) is None and _compat.smtpRecipientCount(p) == 0
    p.dataReceived(b"EHLO c.test\r\nMAIL FROM:<x@else.test>\r\nRCPT TO:<alice@example.test>\r\n")
    assert _compat.smtpHeloName(p) == b"c.test" and _compat.smtpRecipientCount(p) == 1
    assert _compat.smtpMessages(p) == []
    p.dataReceived(b"DATA\r\nSubject: s\r\n")
    assert len(_compat.smtpMessages(p)) == 1
    _compat.smtpForget(p)
    assert _compat.smtpHeloName(p) is None and _compat.smtpRecipientCount(p) == 0
    p.transport.clear()
    p.dataReceived(b"\r\n.\r\nMAIL FROM:<x@else.test>\r\n")
    store.deliveries[0].committed.callback("name")
    assert p.transport.value().splitlines()[-1].startswith(b"503")


def test_pop3_forget_user():
    """Forgetting the USER makes the next PASS ask for USER again."""
    p = POP3Server(clock=Clock())
    t = StringTransport()
    p.makeConnection(t)
    p.dataReceived(b"USER alice\r\n")
    _compat.pop3ForgetUser(p)
    t.clear()
    p.dataReceived(b"PASS secret\r\n")
    assert t.value() == b"-ERR USER required before PASS\r\n"


def test_imap_file_literal():
    """Twisted's file literal asks for the data, reads exactly that many octets into a file and hands back the rest of the line."""
    p = IMAPServer(clock=Clock())
    t = StringTransport()
    p.makeConnection(t)
    t.clear()
    got = []
    _compat.fileLiteral(p, 5).addCallback(got.append)
    assert t.value() == b"+ Ready for 5 octets of data\r\n"
    p.dataReceived(b"hello rest\r\n")
    (data, rest), = got
    # (mail.imap drops the space that separates the rest of the line.)
    assert data.read() == b"hello" and rest == b"rest"


def test_imap_abandon_pending():
    """A command waiting for its line's rest after a literal, or for an AUTHENTICATE response, is failed through Twisted's pending literal."""
    p = IMAPServer(clock=Clock())
    t = StringTransport()
    p.makeConnection(t)
    got = []
    _compat.fileLiteral(p, 5).addErrback(got.append)
    p.dataReceived(b"hello")
    _compat.imapAbandonPending(p, ValueError("too long"))
    assert got[0].check(ValueError)
    p.parseState = "command"
    p.portal = object()
    p.dataReceived(b"a AUTHENTICATE PLAIN\r\n")
    t.clear()
    _compat.imapAbandonPending(p, ValueError("too long"))
    assert t.value() == b"a NO Authentication failed: too long\r\n"


def test_fetch_items_keep_their_shape():
    """The FETCH items Twisted's parser makes (instances of its private _FetchParser classes) carry the attributes mail.imap renders from."""
    query, rest = IMAPServer.arg_fetchatt(
        IMAPServer(), b"(UID BODY.PEEK[1.2.HEADER.FIELDS.NOT (A B)]<3.4> BODY[TEXT] BODY[2.MIME] BODY[] BODY BODYSTRUCTURE)"
    )
    assert rest == b"" and [p.type for p in query] == ["uid", "body", "body", "body", "body", "body", "bodystructure"]
    fields = query[1]
    assert fields.peek and fields.part == (0, 1) and (fields.partialBegin, fields.partialLength) == (3, 4)
    assert fields.header.negate and [f.upper() for f in fields.header.fields] == [b"A", b"B"]
    assert query[2].text and not query[2].header and query[3].mime and query[3].part == (1,)
    assert query[4].empty and not (query[5].header or query[5].text or query[5].mime or query[5].empty)
