"""
The ESMTP server without sockets: replies, limits, relaying rules and the
moment of the final 250, over StringTransport.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage

from coursenet.accounts import PasswordChecker
from mail.smtp import LocalDelivery, SMTPServer
from mail.tap import Options, postmasterAccount


class FakeDelivery:
    def __init__(self) -> None:
        self.data = b""
        self.committed = Deferred()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def commit(self):
        return self.committed

    def abort(self) -> None:
        self.aborted = True


class FakeStore:
    def __init__(self) -> None:
        self.deliveries: list[FakeDelivery] = []
        #: The account of each delivery, in order.
        self.users: list[str] = []

    def hasUser(self, name: str) -> bool:
        return name in ("alice", "bob")

    def openDelivery(self, user: str) -> FakeDelivery:
        d = FakeDelivery()
        self.deliveries.append(d)
        self.users.append(user)
        return d


def connect(store=None, maxSize=10_000, postmaster=None):
    store = store or FakeStore()
    p = SMTPServer(LocalDelivery(store, ["example.test"], postmaster=postmaster), None, maxSize, clock=Clock())
    p.host = b"example.test"
    t = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
    p.makeConnection(t)
    t.clear()
    return p, t, store


def say(p, t, data: bytes) -> list[bytes]:
    t.clear()
    p.dataReceived(data)
    return t.value().splitlines()


def test_ehlo_advertises_extensions_but_no_auth_without_tls():
    """EHLO lists SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES; AUTH only appears under TLS."""
    p, t, _ = connect()
    lines = say(p, t, b"EHLO c.test\r\n")
    assert b"250-SIZE 10000" in lines and b"250-8BITMIME" in lines
    assert b"250-PIPELINING" in lines and lines[-1] == b"250 ENHANCEDSTATUSCODES"
    assert not any(b"AUTH" in line for line in lines)
    assert say(p, t, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n") == [
        b"530 5.7.0 Must issue a STARTTLS command first"
    ]


def test_final_250_waits_for_commit_and_unstuffs_dots():
    """The 250 after DATA comes only when the store's commit fires; dot-stuffed lines are unstuffed and Received: is added."""
    p, t, store = connect()
    say(p, t, b"EHLO c.test\r\nMAIL FROM:<x@else.test> BODY=8BITMIME SIZE=100\r\n"
              b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
    lines = say(p, t, b"Subject: s\r\n\r\n..leading dot\r\n.\r\n")
    assert lines == []
    delivery = store.deliveries[0]
    assert b"..leading" not in delivery.data and b"\n.leading dot\n" in delivery.data
    assert delivery.data.startswith(b"Return-Path: <x@else.test>\nReceived: from c.test ([192.0.2.7])")
    delivery.committed.callback("name")
    assert t.value() == b"250 2.0.0 Ok: message stored\r\n"


def test_failed_commit_is_temporary_error():
    """If the message cannot be made durable the reply is 451, so the sender keeps it and retries."""
    p, t, store = connect()
    say(p, t, b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    t.clear()
    store.deliveries[0].committed.errback(OSError("disk full"))
    assert t.value().startswith(b"451 4.3.0")


def test_open_relay_and_unknown_users_refused_at_rcpt():
    """Other domains get 550 5.7.1, unknown local users 550 5.1.1, malformed addresses 501/553."""
    p, t, _ = connect()
    say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\n")
    assert say(p, t, b"RCPT TO:<v@elsewhere.test>\r\n")[0].startswith(b"550 5.7.1")
    assert say(p, t, b"RCPT TO:<carol@example.test>\r\n")[0].startswith(b"550 5.1.1")
    assert say(p, t, b"RCPT TO:<<<>\r\n")[0][:3] in (b"501", b"553")
    assert say(p, t, b"RCPT TO:<" + b"a" * 70 + b"@example.test>\r\n")[0].startswith(b"553")
    assert say(p, t, b"RCPT TO:<alice@example.test> NOTIFY=NEVER\r\n")[0].startswith(b"555")


def test_postmaster_accepted_with_or_without_domain():
    """RCPT TO:<postmaster> (no domain, any case) and postmaster@ a local domain go to the postmaster account (RFC 5321 4.5.1); another domain's postmaster is still not relayed."""
    p, t, store = connect(postmaster="bob")
    say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\n")
    assert say(p, t, b"RCPT TO:<postmaster>\r\n") == [b"250 2.0.0 Recipient address accepted"]
    assert say(p, t, b"RCPT TO:<PostMaster@Example.Test>\r\n") == [b"250 2.0.0 Recipient address accepted"]
    assert say(p, t, b"RCPT TO:<postmaster@else.test>\r\n")[0].startswith(b"550 5.7.1")
    say(p, t, b"DATA\r\nhi\r\n.\r\n")
    assert store.users == ["bob", "bob"]


def test_postmaster_without_an_account_is_refused_saying_so():
    """With no postmaster account configured, RCPT TO:<postmaster> gets 550 5.1.1 naming the address."""
    p, t, _ = connect()
    say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\n")
    assert say(p, t, b"RCPT TO:<postmaster>\r\n") == [b"550 5.1.1 <postmaster@example.test>: no such user here"]


def test_quoted_local_part_names_the_same_mailbox():
    """<"alice"@domain> is alice's mailbox and <"b\\ob"@domain> bob's (RFC 5321 4.1.2 quoted string); a quoted name of no account is 550 5.1.1."""
    p, t, store = connect()
    say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\n")
    assert say(p, t, b'RCPT TO:<"alice"@example.test>\r\n') == [b"250 2.0.0 Recipient address accepted"]
    assert say(p, t, b'RCPT TO:<"b\\ob"@example.test>\r\n') == [b"250 2.0.0 Recipient address accepted"]
    assert say(p, t, b'RCPT TO:<"al ice"@example.test>\r\n')[0].startswith(b"550 5.1.1")
    say(p, t, b"DATA\r\nhi\r\n.\r\n")
    assert store.users == ["alice", "bob"]


def test_size_limit_does_not_count_dot_stuffing():
    """A message of exactly the SIZE limit is taken even when every line was dot-stuffed; one octet more is 552 (RFC 1870)."""
    for extra, stored in ((0, True), (1, False)):
        p, t, store = connect(maxSize=2000)
        say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        # 20 lines of 100 octets with their CRLF: 2000; each is sent as 101.
        body = (b"." + b"d" * 97 + b"\r\n") * 19 + b"." + b"d" * (97 + extra) + b"\r\n"
        lines = say(p, t, b"." + body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        if stored:
            assert lines == [] and not store.deliveries[0].aborted
        else:
            assert lines[0].startswith(b"552 5.3.4") and store.deliveries[0].aborted


def test_mail_requires_helo():
    """MAIL before EHLO/HELO is a 503 with an explanation."""
    p, t, _ = connect()
    assert say(p, t, b"MAIL FROM:<x@y.test>\r\n") == [b"503 5.5.1 Send EHLO or HELO first"]


def test_size_limits():
    """A declared SIZE over the limit is refused at MAIL; an actual message over it at the final dot, and nothing is kept."""
    p, t, store = connect(maxSize=2000)
    say(p, t, b"EHLO c\r\n")
    assert say(p, t, b"MAIL FROM:<x@else.test> SIZE=99999999999999\r\n")[0].startswith(b"552 5.3.4")
    say(p, t, b"MAIL FROM:<x@else.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    lines = say(p, t, (b"y" * 900 + b"\r\n") * 3 + b".\r\n")
    assert lines[0].startswith(b"552 5.3.4") and store.deliveries[0].aborted
    assert say(p, t, b"NOOP\r\n") == [b"250 2.0.0 OK"]


def test_line_limits():
    """Commands over 512 octets and text lines over 1000 get 500 replies; the session survives."""
    p, t, store = connect()
    assert say(p, t, b"EHLO " + b"h" * 600 + b"\r\n")[0].startswith(b"500 5.5.2 Line too long")
    say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    p.dataReceived(b"z" * 700)
    p.dataReceived(b"z" * 700)  # one line, 1400 octets, in two packets
    lines = say(p, t, b"\r\nmore\r\n.\r\n")
    assert lines[0].startswith(b"500 5.5.6")
    assert say(p, t, b"NOOP\r\n") == [b"250 2.0.0 OK"]


def test_bare_lf_smuggling_refused():
    """A message with a bare LF (the smuggling trick "\\n.\\n") is refused whole; the smuggled command is never run."""
    p, t, store = connect()
    say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    lines = say(p, t, b"hi\n.\nMAIL FROM:<evil@else.test>\r\n.\r\n")
    assert len(lines) == 1 and lines[0].startswith(b"550 5.6.11")
    assert store.deliveries[0].aborted
    assert say(p, t, b"HELO x\nRSET\r\n")[0].startswith(b"500 5.5.2 Bare")


def test_commands_after_the_final_dot_wait_for_its_reply():
    """Commands pipelined after DATA's final dot run only once its 250 has gone, so the replies come in order (RFC 2920)."""
    p, t, store = connect()
    say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert say(p, t, b"hi\r\n.\r\nMAIL FROM:<y@else.test>\r\nRCPT TO:<bob@example.test>\r\n") == []
    store.deliveries[0].committed.callback("name")
    assert t.value().splitlines() == [
        b"250 2.0.0 Ok: message stored",
        b"250 2.0.0 Sender address accepted",
        b"250 2.0.0 Recipient address accepted",
    ]


def test_starttls_unavailable_without_certificate():
    """STARTTLS on a server without a certificate is 454."""
    p, t, _ = connect()
    assert say(p, t, b"STARTTLS\r\n") == [b"454 4.7.0 TLS not available"]


_REPLY = re.compile(rb"^\d{3}[ -]")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=700).filter(lambda b: b"\r\n" not in b), min_size=1, max_size=8))
def test_fuzz_commands_always_answered(lines):
    """Any command lines get well-formed replies and never crash or drop the session."""
    p, t, _ = connect()
    for line in lines:
        p.dataReceived(line + b"\r\n")
    for reply in t.value().splitlines():
        assert _REPLY.match(reply) or reply.startswith(b"250"), reply
    # A bare LF ends a line too (answered with 500): each piece may be QUIT.
    pieces = [piece for line in lines for piece in line.split(b"\n")]
    if not any(piece.strip().upper().startswith(b"QUIT") for piece in pieces):
        assert not t.disconnecting


def test_postmaster_account_chosen_by_twistd_options(tmp_path):
    """twistd postoffice sends postmaster mail to --postmaster, else an account named postmaster, else the first --user; an unknown --postmaster is a usage error."""
    def chosen(*argv: str) -> str | None:
        options = Options()
        options.parseOptions(["--maildir", str(tmp_path), *argv])
        return postmasterAccount(options, PasswordChecker(None, options["users"]))

    assert chosen("--user", "bob:x", "--user", "alice:y") == "bob"
    assert chosen("--user", "bob:x", "--user", "postmaster:z") == "postmaster"
    assert chosen("--user", "bob:x", "--user", "alice:y", "--postmaster", "alice") == "alice"
    with pytest.raises(usage.UsageError, match="--postmaster carol: no such account"):
        chosen("--user", "bob:x", "--postmaster", "carol")
