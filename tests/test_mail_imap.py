"""
The IMAP server over StringTransport, with a store whose "threads" the
test runs: commands that wait for the store hold the commands pipelined
after them, and every reply comes once the disk work behind it is done.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.mail import imap4

from mail.imap import LINE_MAX, IMAPServer, MaildirAccount, _ReadAhead
from mail.maildir import writeMessageFile
from tests.bftp_support import FakeReactor
from tests.mail_support import DiskGuard, ManualPool, Session, clock, pool, storeWith  # noqa: F401 (fixtures)


@pytest.fixture
def store(tmp_path, pool, clock):
    return storeWith(str(tmp_path / "mail"), pool, clock, [b"Subject: m%d\n\nbody %d\n" % (i, i) for i in range(3)])


def tagged(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if not line.startswith((b"*", b"+"))]


def test_pipelined_select_fetch_answered_in_order(store, clock, pool):
    """SELECT, FETCH and NOOP sent together: nothing is answered before the pool reads the folder, then each in order."""
    s = Session(store, clock, pool)
    lines = s.sayHeld(b"a SELECT INBOX\r\nb FETCH 1:* (UID FLAGS)\r\nc NOOP\r\n")
    assert tagged(lines) == [
        b"a OK [READ-WRITE] SELECT successful",
        b"b OK FETCH completed",
        b"c OK NOOP No operation performed",
    ]
    assert b"* 3 EXISTS" in lines and b"* 3 RECENT" in lines
    fetched = [line for line in lines if b"FETCH (" in line]
    assert lines.index(b"a OK [READ-WRITE] SELECT successful") < lines.index(fetched[0])
    assert len(fetched) == 3 and b"UID 3" in fetched[2]


def test_fetch_reads_bodies_in_the_pool(store, clock, pool):
    """A body FETCH sends nothing until the pool has read the message files, and sets \\Seen there too."""
    s = Session(store, clock, pool)
    s.say(b"a SELECT INBOX\r\n")
    lines = s.sayHeld(b"b FETCH 2 (BODY[])\r\n")
    assert lines[0] == b"* 2 FETCH (BODY[] {23}"
    assert lines[1:3] == [b"Subject: m1", b""] and b"body 1" in lines[3]
    assert b"FLAGS (\\Seen \\Recent)" in lines[4] and lines[-1] == b"b OK FETCH completed"
    assert any(n.endswith(":2,S") for n in os.listdir(os.path.join(store.maildir("alice"), "cur")))


def test_fetch_reads_ahead_in_windows(store, clock, pool, monkeypatch):
    """FETCH of many message bodies reads them a window at a time: one trip to the pool per window, not per message."""
    monkeypatch.setattr(_ReadAhead, "COUNT", 4)
    inbox = store.maildir("alice")
    for i in range(7):
        writeMessageFile(inbox, b"Subject: more %d\n\nx\n" % i)
    s = Session(store, clock, pool)
    s.say(b"a SELECT INBOX\r\n")
    before = pool.ran
    lines = s.say(b"b FETCH 1:* (BODY.PEEK[])\r\n")
    assert sum(line.startswith(b"* ") and b" FETCH " in line for line in lines) == 10
    assert pool.ran - before == 3


def test_mailbox_commands_wait_for_the_store(store, clock, pool):
    """CREATE, RENAME, SUBSCRIBE, LSUB, DELETE and STATUS pipelined get their own replies, in order, after the disk work."""
    s = Session(store, clock, pool)
    lines = s.sayHeld(
        b"a CREATE Work.Projects\r\nb CREATE Work\r\nc RENAME Work Job\r\nd SUBSCRIBE Job\r\n"
        b"e LSUB \"\" *\r\nf DELETE Nope\r\ng RENAME Nope Other\r\nh UNSUBSCRIBE Job\r\n"
        b"i STATUS INBOX (MESSAGES UNSEEN)\r\nj DELETE Job.Projects\r\nk LIST \"\" *\r\n"
    )
    assert tagged(lines) == [
        b"a OK Mailbox created",
        b"b NO Mailbox named Work already exists",
        b"c OK Mailbox renamed",
        b"d OK Subscribed",
        b"e OK LSUB completed",
        b"f NO No such mailbox",
        b"g NO No mailbox named Nope exists",
        b"h OK Unsubscribed",
        b"i OK STATUS complete",
        b"j OK Mailbox deleted",
        b"k OK LIST completed",
    ]
    assert b'* LSUB () "." "Job"' in lines
    assert b"* STATUS INBOX (MESSAGES 3 UNSEEN 3)" in lines
    assert lines[-3:-1] == [b'* LIST (\\HasNoChildren) "." "INBOX"', b'* LIST (\\HasNoChildren) "." "Job"']


def test_other_sessions_expunge_reported_at_noop(store, clock, pool):
    """One session's EXPUNGE is answered after the files are gone; another learns of it at NOOP, not before."""
    a, b = Session(store, clock, pool), Session(store, clock, pool)
    a.say(b"a SELECT INBOX\r\n")
    b.say(b"b EXAMINE INBOX\r\n")
    assert tagged(a.say(b"a STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")) == [b"a OK STORE completed"]
    assert a.say(b"a EXPUNGE\r\n") == [b"* 2 EXPUNGE", b"a OK EXPUNGE completed"]
    assert len(os.listdir(os.path.join(store.maildir("alice"), "cur"))) == 2
    assert tagged(b.say(b"b FETCH 3 (UID)\r\n")) == [b"b OK FETCH completed"]
    assert b.say(b"b NOOP\r\n") == [b"* 2 EXPUNGE", b"b OK NOOP No operation performed"]


def test_append_then_search_contents(store, clock, pool):
    """APPEND answers once the message and its UID are stored; SEARCH BODY reads the messages in the pool."""
    s = Session(store, clock, pool)
    s.say(b"a SELECT INBOX\r\n")
    message = b"Subject: needle\r\n\r\nhay\r\n"
    s.send(b"b APPEND INBOX (\\Flagged) {%d}\r\n" % len(message))
    assert s.lines()[0].startswith(b"+")
    lines = s.say(message + b"\r\n")
    validity = store.folder("alice").uidValidity
    assert lines == [b"* 4 EXISTS", b"* 4 RECENT", b"b OK [APPENDUID %d 4] APPEND completed" % validity]
    assert s.say(b"c UID SEARCH BODY hay\r\n") == [b"* SEARCH 4", b"c OK SEARCH completed"]


def test_session_never_touches_the_disk_itself(tmp_path, monkeypatch):
    """A whole IMAP session (SELECT, FETCH, SEARCH, STORE, COPY, APPEND, EXPUNGE, folders) does every file operation inside the store's pool."""
    pool = ManualPool()
    clock = FakeReactor()
    store = storeWith(str(tmp_path / "mail"), pool, clock, [b"Subject: m\n\nbody\n"])
    guard = DiskGuard(monkeypatch, pool)
    s = Session(store, clock, pool)
    lines = s.say(
        b"a SELECT INBOX\r\nb FETCH 1 (ENVELOPE BODYSTRUCTURE INTERNALDATE RFC822.SIZE BODY[TEXT])\r\n"
        b"c SEARCH BODY body\r\nd CREATE Work\r\ne COPY 1 Work\r\nf STORE 1 +FLAGS (\\Deleted)\r\n"
        b"g EXPUNGE\r\nh APPEND Work {5}\r\n"
    )
    lines += s.say(b"hello\r\ni STATUS Work (MESSAGES)\r\nj LIST \"\" *\r\nk RENAME Work Job\r\nl NOOP\r\n")
    replies = [line for line in lines if line[:1] in b"abcdefghijkl" and line[1:2] == b" "]
    assert [line.split()[1] for line in replies] == [b"OK"] * 12
    assert guard.outside == [] and guard.calls > 30


TOO_LONG = b"[TOOBIG] Line too long: lines are limited to %d octets" % LINE_MAX


def test_overlong_line_answered_with_its_tag(store, clock, pool):
    """A command line over the limit gets a tagged BAD [TOOBIG], even sent in pieces, and the next command is answered."""
    s = Session(store, clock, pool)
    s.send(b"a LIST " + b"x" * 40000)
    s.send(b"y" * 40000)
    assert s.say(b"z\r\nb NOOP\r\n") == [b"a BAD " + TOO_LONG, b"b OK NOOP No operation performed"]


def test_overlong_line_after_a_literal_fails_its_command(store, clock, pool):
    """An overlong rest of a line after a literal fails that command with its own tag; the session goes on."""
    s = Session(store, clock, pool)
    assert s.say(b"a CREATE {3}\r\n") == [b"+ Ready for 3 octets of text"]
    lines = s.say(b"Box" + b"y" * 70000 + b"\r\nb NOOP\r\n")
    assert lines == [b"a BAD Illegal syntax: " + TOO_LONG, b"b OK NOOP No operation performed"]


def test_overlong_line_ends_idle(store, clock, pool):
    """An overlong line during IDLE is not DONE: IDLE ends with a tagged BAD and commands are taken again."""
    s = Session(store, clock, pool)
    assert s.say(b"a IDLE\r\n") == [b"+"]
    lines = s.say(b"D" * 70000 + b"\r\nb NOOP\r\n")
    assert lines == [b"a BAD Expected DONE to end IDLE", b"b OK NOOP No operation performed"]


class HeldPortal:
    """
    A portal whose logins wait until the test fires them.
    """

    def __init__(self) -> None:
        self.logins: list[Deferred] = []

    def login(self, credentials, mind, *interfaces):
        d: Deferred = Deferred()
        self.logins.append(d)
        return d


def test_commands_after_login_wait_for_its_reply(store, clock, pool):
    """A SELECT pipelined after LOGIN runs only once LOGIN has answered and the session is authenticated, not before."""
    server = IMAPServer(clock=clock)
    transport = StringTransport()
    server.makeConnection(transport)
    server.portal = portal = HeldPortal()
    transport.clear()
    server.dataReceived(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    clock.advance(0)
    assert transport.value() == b""
    portal.logins[0].callback((imap4.IAccount, MaildirAccount(store, "alice"), lambda: None))
    for _ in range(5):
        pool.runAll()
        clock.advance(0)
    replies = [line for line in transport.value().split(b"\r\n") if line[:2] in (b"a ", b"b ")]
    assert replies == [b"a OK LOGIN succeeded", b"b OK [READ-WRITE] SELECT successful"]
