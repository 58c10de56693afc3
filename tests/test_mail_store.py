"""
The Maildir store and the IMAP account over it, without sockets: UIDs and
UIDVALIDITY that persist, flags in file names, folders, concurrent
deliveries, byte-exact MIME sections.
"""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.mail import imap4

from mail.imap import MaildirAccount, _Part
from mail.maildir import BadFolderName, Folder, MaildirStore, writeMessageFile


@pytest.fixture
def store(tmp_path):
    return MaildirStore(str(tmp_path / "mail"), lambda n: n == "alice", reactor=Clock())


def deliver(store, n=3):
    path = store.maildir("alice")
    for i in range(n):
        writeMessageFile(path, b"Subject: m%d\n\nbody %d\n" % (i, i))


def test_uids_and_uidvalidity_persist(store, tmp_path):
    """A fresh Folder on the same directory (a restart) sees the same UIDVALIDITY and UIDs; new mail gets higher UIDs."""
    deliver(store)
    first = Folder(store.maildir("alice"))
    uids, validity = first.uids(), first.uidValidity
    assert uids == [1, 2, 3]
    first.remove([2])
    deliver(store, 1)
    again = Folder(store.maildir("alice"))
    assert again.uidValidity == validity and again.uids() == [1, 3, 4]


def test_flags_live_in_file_names(store):
    """STORE renames the file into cur/ with the Maildir info letters; EXPUNGE unlinks \\Deleted ones."""
    deliver(store)
    box = MaildirAccount(store, "alice").select("INBOX")
    assert box.getRecentCount() == 3 and os.listdir(os.path.join(store.maildir("alice"), "new")) == []
    result = box.store(imap4.MessageSet(1, 2), ["\\Seen", "\\Flagged"], 1, False)
    assert sorted(result[1]) == ["\\Flagged", "\\Recent", "\\Seen"]
    names = sorted(os.listdir(os.path.join(store.maildir("alice"), "cur")))
    assert sum(n.endswith(":2,FS") for n in names) == 2
    box.store(imap4.MessageSet(3), ["\\Deleted"], 0, False)
    assert box.expunge() == [3]
    assert box.getMessageCount() == 2
    with pytest.raises(imap4.MailboxException):
        box.store(imap4.MessageSet(1), ["$Custom"], 1, False)


def test_other_sessions_see_expunge_only_when_told(store):
    """A second session keeps its sequence numbers until it takes the pending EXPUNGEs."""
    deliver(store)
    account = MaildirAccount(store, "alice")
    a, b = account.select("INBOX"), account.select("INBOX")

    class Listener:
        def newMessages(self, exists, recent): pass
        def expungesPending(self): self.told = True

    listener = Listener()
    b.addListener(listener)
    a.store(imap4.MessageSet(1), ["\\Deleted"], 1, False)
    a.expunge()
    assert listener.told and b.getMessageCount() == 3
    assert b.takeExpunged() == [1] and b.getMessageCount() == 2


def test_folders_create_rename_delete_list(store):
    """CREATE makes Maildir++ directories (parents too), RENAME moves children, DELETE removes, LIST matches wildcards."""
    account = MaildirAccount(store, "alice")
    assert account.create("Work.Projects")
    account.rename("Work", "Job")
    names = [n for n, _ in account.listMailboxes("", "*")]
    assert names == ["INBOX", "Job", "Job.Projects"]
    assert [n for n, _ in account.listMailboxes("", "%")] == ["INBOX", "Job"]
    account.delete("Job.Projects")
    assert os.path.isdir(os.path.join(store.maildir("alice"), ".Job"))
    with pytest.raises(imap4.MailboxException):
        account.delete("Nope")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_folder_names_never_escape(tmp_path_factory, name):
    """Whatever a client names a mailbox, its directory is inside the user's Maildir or the name is refused."""
    store = MaildirStore(str(tmp_path_factory.mktemp("n")), lambda n: True, reactor=Clock())
    top = store.maildir("alice")
    try:
        path = store.folderPath("alice", name)
    except BadFolderName:
        return
    assert os.path.dirname(path) == top or path == top


def test_concurrent_writers_never_clobber(store):
    """Sixteen threads delivering 20 messages each into one Maildir leave 320 distinct, whole files."""
    path = store.maildir("alice")

    def worker(k):
        for i in range(20):
            writeMessageFile(path, b"Subject: %d-%d\n\n" % (k, i) + b"x" * 4000 + b"\n")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = os.listdir(os.path.join(path, "new"))
    assert len(names) == 320 and os.listdir(os.path.join(path, "tmp")) == []
    for n in names:
        assert os.path.getsize(os.path.join(path, "new", n)) == int(n.split(",S=")[1].split(",")[0])


def test_mime_sections_are_byte_exact():
    """Multipart bodies split at boundaries: parts, their MIME headers and HEADER.FIELDS keep the original bytes."""
    raw = (
        b"From: a@b\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
        b"preamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\n"
        b"Content-Type: text/html\r\n\r\n<b>hi</b>\r\n--XX--\r\nepilogue\r\n"
    )
    part = _Part(raw)
    assert part.isMultipart() and len(part.subParts()) == 2
    assert part.getSubPart(0).body == b"hello"
    assert part.getSubPart(1).rawHeader == b"Content-Type: text/html\r\n\r\n"
    assert part.headerLines([b"SUBJECT"], False) == b"Subject: s\r\n\r\n"
    assert part.getHeaders(False, "subject") == {"subject": "s"}


def test_large_delivery_spills_to_tmp_and_aborts_clean(store):
    """A message over the in-memory limit goes to tmp/ as it arrives; commit moves it to new/ whole, abort leaves nothing."""
    from mail.maildir import Delivery

    path = store.maildir("alice")
    d = Delivery(path, None, None)
    d.SPILL = 100
    for _ in range(10):
        d.write(b"x" * 50 + b"\n")
    assert len(os.listdir(os.path.join(path, "tmp"))) == 1
    name = d._finish()
    assert os.listdir(os.path.join(path, "tmp")) == []
    assert os.path.getsize(os.path.join(path, "new", name)) == 510 and name.endswith(",S=510,W=520")
    d = Delivery(path, None, None)
    d.SPILL = 10
    d.write(b"y" * 50 + b"\n")
    d.abort()
    assert os.listdir(os.path.join(path, "tmp")) == []
