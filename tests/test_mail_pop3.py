"""
The POP3 server without sockets: deletions at QUIT only, RFC 1939
listings, CAPA, byte-stuffing, limits, the one-session lock, and commands
that wait for the store's threads.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import pop3

from mail.auth import PostOfficeRealm
from mail.maildir import ensureMaildir, writeMessageFile
from mail.pop3 import MailboxInUse, POP3Mailbox, POP3Server
from tests.mail_support import ManualPool, memoryStore


@pytest.fixture
def store(tmp_path):
    return memoryStore(str(tmp_path / "mail"))


@pytest.fixture
def folder(store):
    path = store.maildir("alice")
    ensureMaildir(path)
    for body in (b"Subject: one\n\nfirst\n", b"Subject: two\n\n.dotted\n..two\n", b"Subject: 3\n\nthird\n"):
        writeMessageFile(path, body)
    return store.folder("alice")


def session(folder, loggedIn=True):
    p = POP3Server(clock=Clock())
    t = StringTransport()
    p.makeConnection(t)
    if loggedIn:
        p.mbox = POP3Mailbox(folder)
    t.clear()
    return p, t


def pull(p, t) -> None:
    """
    Run the producer a command registered (RETR's file sender) until it
    is done: StringTransport does not pull producers.  The session's own
    outbox stays registered and is left alone.
    """
    while t.producer is not None and t.producer is not p.transport:
        t.producer.resumeProducing()


def say(p, t, data: bytes) -> bytes:
    t.clear()
    p.dataReceived(data)
    pull(p, t)
    return t.value()


def test_dele_takes_effect_only_at_quit(folder):
    """DELE hides a message in STAT/LIST/UIDL; a dropped connection keeps it; QUIT removes it."""
    p, t = session(folder)
    assert say(p, t, b"DELE 1\r\n") == b"+OK message 1 deleted\r\n"
    assert say(p, t, b"STAT\r\n").startswith(b"+OK 2 ")
    assert b"\r\n1 " not in say(p, t, b"LIST\r\n")
    assert say(p, t, b"RETR 1\r\n").startswith(b"-ERR")
    assert say(p, t, b"DELE 1\r\n").startswith(b"-ERR")
    p.connectionLost(None)
    assert len(os.listdir(os.path.join(folder.path, "new"))) == 3
    p, t = session(folder)
    say(p, t, b"DELE 2\r\nRSET\r\nDELE 3\r\nQUIT\r\n")
    assert len(os.listdir(os.path.join(folder.path, "new"))) == 2
    assert t.disconnecting


def test_uidl_forms(folder):
    """UIDL n answers "+OK n id" and UIDL lists "n id" lines, ids being UIDVALIDITY.UID."""
    p, t = session(folder)
    first = say(p, t, b"UIDL 2\r\n")
    v = folder.uidValidity
    assert v > 0 and first == b"+OK 2 %d.2\r\n" % v
    listing = say(p, t, b"UIDL\r\n").split(b"\r\n")
    assert listing[1:4] == [b"1 %d.1" % v, b"2 %d.2" % v, b"3 %d.3" % v] and listing[4] == b"."
    assert say(p, t, b"UIDL 9\r\n").startswith(b"-ERR")


def test_retr_byte_stuffs_and_sizes_match(folder):
    """RETR sends CRLF lines with leading dots doubled, and LIST's size counts CRLF octets."""
    p, t = session(folder)
    size = int(say(p, t, b"LIST 2\r\n").split()[2])
    out = say(p, t, b"RETR 2\r\n")
    assert out.startswith(b"+OK %d\r\n" % size)
    body = out.split(b"\r\n", 1)[1]
    assert body.endswith(b"\r\n..dotted\r\n...two\r\n.\r\n")
    assert len(body[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")) == size


def test_capa_and_stls_rules(folder):
    """CAPA uses RFC 2449 names; with TLS offered, USER is refused in clear text and not advertised."""
    p = POP3Server(contextFactory=object(), loginNeedsTLS=True, clock=Clock())
    t = StringTransport()
    p.makeConnection(t)
    caps = say(p, t, b"CAPA\r\n").split(b"\r\n")
    assert b"PIPELINING" in caps and b"RESP-CODES" in caps and b"STLS" in caps and b"UIDL" in caps
    assert b"USER" not in caps
    assert say(p, t, b"USER alice\r\n").startswith(b"-ERR [AUTH]")


def test_line_too_long_and_unknown(folder):
    """An overlong line or unknown command gets -ERR and the session goes on."""
    p, t = session(folder)
    assert say(p, t, b"X" * 400 + b"\r\n").startswith(b"-ERR Line too long")
    assert say(p, t, b"FROB\r\n").startswith(b"-ERR")
    assert say(p, t, b"NOOP\r\n") == b"+OK \r\n"


def test_bare_lf_ends_a_line(folder):
    """A line ended by a bare LF (netcat, telnet) is a command like one ended by CRLF."""
    p, t = session(folder)
    assert say(p, t, b"NOOP\nSTAT\r\n").startswith(b"+OK \r\n+OK 3 ")


def test_one_session_per_mailbox(store):
    """The realm refuses a second POP3 mailbox for a user until the first logs out."""
    realm = PostOfficeRealm(store, ["example.test"])
    _, box, logout = realm.requestAvatar("alice", None, pop3.IMailbox)
    with pytest.raises(MailboxInUse):
        realm.requestAvatar("alice", None, pop3.IMailbox)
    logout()
    realm.requestAvatar("alice", None, pop3.IMailbox)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300).filter(lambda b: b"\r\n" not in b), min_size=1, max_size=6))
def test_fuzz_commands_answered(tmp_path_factory, lines):
    """Arbitrary command lines before login each get +OK/-ERR and never crash the session."""
    f = memoryStore(str(tmp_path_factory.mktemp("fz"))).folder("alice")
    p, t = session(f, loggedIn=False)
    for line in lines:
        # A bare LF ends a line too: any piece may be QUIT.
        if any(piece.upper().startswith(b"QUIT") for piece in line.split(b"\n")):
            continue
        t.clear()
        p.dataReceived(line + b"\r\n")
        out = t.value()
        assert out.startswith((b"+OK", b"-ERR")) or out == b"", out
    assert not t.disconnecting


def test_commands_wait_for_the_mailbox(tmp_path):
    """After login the maildrop is read in the store's pool: commands get no answer until it has been, then answers in order."""
    pool = ManualPool(auto=True)
    store = memoryStore(str(tmp_path / "mail"), pool)
    path = store.maildir("alice")
    ensureMaildir(path)
    writeMessageFile(path, b"Subject: one\n\nfirst\n")
    pool.auto = False
    p, t = session(store.folder("alice"))
    p.dataReceived(b"STAT\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert t.value() == b""
    while pool.queue:
        pool.runAll()
        pull(p, t)
    replies = t.value().split(b"\r\n")
    assert replies[0].startswith(b"+OK 1 ")
    assert replies[1].startswith(b"+OK ") and b"Subject: one" in replies[2]
    assert b"+OK message 1 deleted" in replies and replies[-2] == b"+OK coursenet POP3 server signing off"
    assert os.listdir(os.path.join(path, "new")) == [] and t.disconnecting


def test_unreadable_mailbox_answered(tmp_path):
    """If the maildrop cannot be read the next command gets -ERR [SYS/TEMP] and the connection closes."""
    store = memoryStore(str(tmp_path / "mail"))
    (tmp_path / "mail").rmdir()
    (tmp_path / "mail").write_bytes(b"not a directory")
    p, t = session(store.folder("alice"))
    assert say(p, t, b"STAT\r\n").startswith(b"-ERR [SYS/TEMP]")
    assert t.disconnecting
