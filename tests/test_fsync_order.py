"""
What is on disk before a success reply is sent: each test records every
fsync (of which file or directory), rename and reply of one operation, in
the order they happen, and compares the whole list with the order that
makes the reply true after a crash.  Removing any one fsync from the code
makes its test fail.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from bftp.fs import PARTIAL_PREFIX
from mail import maildir
from mail.maildir import Delivery, ensureMaildir, writeMessageFile
from mail.smtp import LocalDelivery, SMTPServer
from tests.bftp_support import LOGIN, FakeReactor, Raw, connected, makeFactory
from tests.mail_support import ManualPool, Session, memoryStore


class Recorder:
    """
    One list of what happened, in order: C{("fsync", path)},
    C{("rename", src, dst)}, C{("reply", line)}.
    """

    def __init__(self, monkeypatch, root: str) -> None:
        self.root = str(root)
        self.events: list[tuple] = []
        for name in ("rename", "replace"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._renamer(real))

    def _short(self, path) -> str:
        return os.path.relpath(os.fsdecode(path), self.root)

    def _renamer(self, real):
        def rename(src, dst, *args, **kwargs):
            self.events.append(("rename", self._short(src), self._short(dst)))
            return real(src, dst, *args, **kwargs)

        return rename

    def fsync(self, fd: int) -> None:
        """
        Stands in for C{os.fsync}: records the file C{fd} is open on.
        """
        self.events.append(("fsync", self._short(os.readlink(f"/proc/self/fd/{fd}"))))

    def fsyncDirectory(self, path: str) -> None:
        """
        Stands in for L{mail.maildir.fsyncDirectory}.
        """
        self.events.append(("fsync", self._short(path)))

    def watch(self, transport, keep=lambda line: line[:3]) -> None:
        """
        Record each reply line written to C{transport} as it is sent, as
        much of it as C{keep} returns (nothing: not recorded).
        """
        write = transport.write

        def recording(data: bytes) -> None:
            for line in bytes(data).split(b"\r\n"):
                kept = keep(line) if line else None
                if kept:
                    self.events.append(("reply", kept))
            write(data)

        transport.write = recording
        transport.writeSequence = lambda seq: recording(b"".join(seq))

    def clear(self) -> None:
        del self.events[:]


# -- BFTP ---------------------------------------------------------------------


def test_bftp_upload_synced_renamed_then_226(tmp_path, monkeypatch):
    """A PUT's data is fsync'd, renamed over the target and the directory fsync'd, all before 226."""
    root = tmp_path / "root"
    root.mkdir()
    record = Recorder(monkeypatch, root)
    fake = FakeReactor()
    factory = makeFactory(root, fake, fsync=record.fsync)
    client, server, pump = connected(factory, fake, Raw)
    record.watch(server.transport)
    client.transport.write(LOGIN + b"PUT a.txt\r\n")
    pump.flush()
    data = b"new contents\n"
    record.clear()
    client.transport.write(
        b"%08x" % len(data) + data + b"00000000" + hashlib.sha256(data).hexdigest().encode() + b"\r\n"
    )
    pump.flush()
    partial = PARTIAL_PREFIX + "a.txt"
    assert record.events == [
        ("fsync", partial),
        ("rename", partial, "a.txt"),
        ("fsync", "."),
        ("reply", b"226"),
    ]
    assert (root / "a.txt").read_bytes() == data


# -- the post office -------------------------------------------------------------


@pytest.fixture
def mailRecord(tmp_path, monkeypatch):
    """
    A recorder on the mail root, with every directory fsync going to it.
    """
    root = tmp_path / "mail"
    root.mkdir()
    record = Recorder(monkeypatch, root)
    monkeypatch.setattr(maildir, "fsyncDirectory", record.fsyncDirectory)
    return record


def smtpSession(store, record):
    p = SMTPServer(LocalDelivery(store, ["example.test"]), None, 100_000, clock=FakeReactor())
    p.host = b"example.test"
    t = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
    record.watch(t)  # before the connection: the outbox keeps the write it finds
    p.makeConnection(t)
    p.dataReceived(b"EHLO c.test\r\nMAIL FROM:<bob@else.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    p.dataReceived(b"Subject: durable\r\n\r\n" + b"x" * 70 + b"\r\n" * 3)
    return p


def assertDelivered(events, maildirName="alice"):
    """
    C{events} are: the message file in tmp/ synced, renamed into new/,
    new/ synced, then 250; nothing else.
    """
    assert [e[0] for e in events] == ["fsync", "rename", "fsync", "reply"], events
    (_, synced), (_, src, dst), (_, directory), (_, reply) = events
    assert synced == src and src.startswith(f"{maildirName}/tmp/")
    assert dst == f"{maildirName}/new/" + src.rpartition("/")[2] + dst.partition(",")[1] + dst.partition(",")[2]
    assert directory == f"{maildirName}/new" and reply == b"250"


@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "spilled"])
def test_smtp_250_after_message_synced_renamed_directory_synced(mailRecord, monkeypatch, spill):
    """The final 250 goes only after the message file is fsync'd, renamed into new/ and new/ fsync'd, in that order."""
    store = memoryStore(mailRecord.root, fsync=mailRecord.fsync)
    ensureMaildir(store.maildir("alice"))
    if spill:
        monkeypatch.setattr(Delivery, "SPILL", 64)
    p = smtpSession(store, mailRecord)
    mailRecord.clear()
    p.dataReceived(b".\r\n")
    assertDelivered(mailRecord.events)


def test_first_delivery_creates_the_maildir_durably(mailRecord):
    """A user's first message creates its Maildir with the new directories synced, before the message and its 250."""
    store = memoryStore(mailRecord.root, fsync=mailRecord.fsync)
    p = smtpSession(store, mailRecord)
    mailRecord.clear()
    p.dataReceived(b".\r\n")
    assert mailRecord.events[:2] == [("fsync", "alice"), ("fsync", ".")]
    assertDelivered(mailRecord.events[2:])


def imapSession(record, untagged=False):
    """
    A logged-in IMAP session over a store that records; its replies
    recorded whole, untagged ones only if C{untagged}.
    """
    clock = FakeReactor()
    pool = ManualPool(auto=True)
    store = memoryStore(record.root, pool, reactor=clock, fsync=record.fsync)
    session = Session(store, clock, pool)
    record.watch(
        session.server.transport, keep=lambda line: line if untagged or line[:1] not in b"*+" else None
    )
    return store, session


def test_imap_select_writes_a_new_uid_list_durably(mailRecord):
    """A folder's first UID list is written to a temporary file, synced, renamed and its directory synced before SELECT answers."""
    ensureMaildir(os.path.join(mailRecord.root, "alice"))
    mailRecord.clear()
    store, session = imapSession(mailRecord)
    session.say(b"a SELECT INBOX\r\n")
    assert mailRecord.events == [
        ("fsync", "alice/coursenet-uidlist.tmp"),
        ("rename", "alice/coursenet-uidlist.tmp", "alice/coursenet-uidlist"),
        ("fsync", "alice"),
        ("reply", b"a OK [READ-WRITE] SELECT successful"),
    ]


def test_imap_new_uid_synced_before_exists(mailRecord):
    """A message found by NOOP gets its UID appended and fsync'd to the UID list before EXISTS tells the client."""
    store, session = imapSession(mailRecord, untagged=True)
    session.say(b"a SELECT INBOX\r\n")
    writeMessageFile(store.maildir("alice"), b"Subject: new\n\nmail\n")
    mailRecord.clear()
    session.say(b"b NOOP\r\n")
    assert mailRecord.events[0] == ("fsync", "alice/coursenet-uidlist")
    assert mailRecord.events[1][0] == "rename" and mailRecord.events[1][2].startswith("alice/cur/")
    assert [e[1] for e in mailRecord.events[2:]] == [b"* 1 EXISTS", b"* 1 RECENT", b"b OK NOOP No operation performed"]


def test_imap_append_synced_before_ok(mailRecord):
    """APPEND answers OK only after the message is fsync'd, renamed into cur/, cur/ fsync'd and its UID fsync'd."""
    store, session = imapSession(mailRecord)
    session.say(b"a SELECT INBOX\r\n")
    message = b"Subject: kept\r\n\r\nsafe\r\n"
    session.say(b"b APPEND INBOX (\\Seen) {%d}\r\n" % len(message))
    mailRecord.clear()
    session.say(message + b"\r\n")
    events = mailRecord.events
    assert [e[0] for e in events] == ["fsync", "rename", "fsync", "fsync", "reply"], events
    assert events[0][1] == events[1][1] and events[0][1].startswith("alice/tmp/")
    assert events[1][2].startswith("alice/cur/") and events[1][2].endswith(":2,S")
    assert events[2:] == [
        ("fsync", "alice/cur"),
        ("fsync", "alice/coursenet-uidlist"),
        ("reply", b"b OK [APPENDUID %d 1] APPEND completed" % store.folder("alice").uidValidity),
    ]


def test_imap_create_and_rename_durable_before_ok(mailRecord):
    """CREATE syncs the new folder and its parent, RENAME renames then syncs the parent, each before its OK."""
    ensureMaildir(os.path.join(mailRecord.root, "alice"))
    store, session = imapSession(mailRecord)
    mailRecord.clear()
    session.say(b"a CREATE Work\r\n")
    assert mailRecord.events == [
        ("fsync", "alice/.Work"),
        ("fsync", "alice"),
        ("reply", b"a OK Mailbox created"),
    ]
    mailRecord.clear()
    session.say(b"b RENAME Work Job\r\n")
    assert mailRecord.events == [
        ("rename", "alice/.Work", "alice/.Job"),
        ("fsync", "alice"),
        ("reply", b"b OK Mailbox renamed"),
    ]


def test_directory_fsync_syncs_the_directory(tmp_path, monkeypatch):
    """fsyncDirectory fsyncs a descriptor open on the directory itself."""
    record = Recorder(monkeypatch, tmp_path)
    monkeypatch.setattr(os, "fsync", record.fsync)
    (tmp_path / "d").mkdir()
    maildir.fsyncDirectory(str(tmp_path / "d"))
    assert record.events == [("fsync", "d")]
