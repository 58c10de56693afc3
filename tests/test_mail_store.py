"""
The Maildir store and the IMAP account over it, without sockets: UIDs and
UIDVALIDITY that persist, flags in file names, folders, concurrent
deliveries, byte-exact MIME sections, and every disk operation in the
store's thread pool, one folder change at a time.
"""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st
from twisted.mail import imap4
from twisted.python.failure import Failure

from mail import maildir
from mail.imap import MaildirAccount
from mail.maildir import BadFolderName, Delivery, Folder, writeMessageFile
from mail.pop3 import POP3Mailbox
from tests.mail_support import DiskGuard, ManualPool, memoryStore, result


@pytest.fixture
def store(tmp_path):
    return memoryStore(str(tmp_path / "mail"))


def deliver(store, n=3, user="alice"):
    path = store.maildir(user)
    maildir.ensureMaildir(path)
    for i in range(n):
        writeMessageFile(path, b"Subject: m%d\n\nbody %d\n" % (i, i))


def test_uids_and_uidvalidity_persist(store):
    """A fresh Folder on the same directory (a restart) sees the same UIDVALIDITY and UIDs; new mail gets higher UIDs."""
    deliver(store)
    first = Folder(store.maildir("alice"), store.run, create=True)
    result(first.refresh())
    uids, validity = first.uids(), first.uidValidity
    assert uids == [1, 2, 3]
    result(first.remove([2]))
    deliver(store, 1)
    again = Folder(store.maildir("alice"), store.run, create=True)
    result(again.refresh())
    assert again.uidValidity == validity and again.uids() == [1, 3, 4]


def test_flags_live_in_file_names(store):
    """STORE renames the file into cur/ with the Maildir info letters; EXPUNGE unlinks \\Deleted ones."""
    deliver(store)
    box = result(MaildirAccount(store, "alice").select("INBOX"))
    assert box.getRecentCount() == 3 and os.listdir(os.path.join(store.maildir("alice"), "new")) == []
    stored = result(box.store(imap4.MessageSet(1, 2), ["\\Seen", "\\Flagged"], 1, False))
    assert sorted(stored[1]) == ["\\Flagged", "\\Recent", "\\Seen"]
    names = sorted(os.listdir(os.path.join(store.maildir("alice"), "cur")))
    assert sum(n.endswith(":2,FS") for n in names) == 2
    result(box.store(imap4.MessageSet(3), ["\\Deleted"], 0, False))
    assert result(box.expunge()) == [3]
    assert box.getMessageCount() == 2 and len(os.listdir(os.path.join(store.maildir("alice"), "cur"))) == 2
    with pytest.raises(imap4.MailboxException):
        result(box.store(imap4.MessageSet(1), ["\\Custom"], 1, False))


def test_other_sessions_see_expunge_only_when_told(store):
    """A second session keeps its sequence numbers until it takes the pending EXPUNGEs."""
    deliver(store)
    account = MaildirAccount(store, "alice")
    a, b = result(account.select("INBOX")), result(account.select("INBOX"))

    class Listener:
        told = False

        def newMessages(self, exists, recent):
            pass

        def expungesPending(self):
            self.told = True

    listener = Listener()
    b.addListener(listener)
    result(a.store(imap4.MessageSet(1), ["\\Deleted"], 1, False))
    result(a.expunge())
    assert listener.told and b.getMessageCount() == 3
    assert b.takeExpunged() == [1] and b.getMessageCount() == 2


def test_new_mail_claimed_by_one_session(store):
    """Mail found by a refresh is announced to every selected session, \\Recent only in the first read-write one."""
    account = MaildirAccount(store, "alice")
    a, b = result(account.select("INBOX")), result(account.select("INBOX"))
    heard = []

    class Listener:
        def __init__(self, name):
            self.name = name

        def newMessages(self, exists, recent):
            heard.append((self.name, exists, recent))

    a.addListener(Listener("a"))
    b.addListener(Listener("b"))
    deliver(store, 2)
    assert result(a.folder.refresh())
    assert sorted(heard) == [("a", 2, 2), ("b", 2, 0)]
    assert os.listdir(os.path.join(store.maildir("alice"), "new")) == []


def test_folders_create_rename_delete_list(store):
    """CREATE makes Maildir++ directories (parents too), RENAME moves children, DELETE removes, LIST matches wildcards."""
    account = MaildirAccount(store, "alice")
    assert result(account.create("Work.Projects"))
    with pytest.raises(imap4.MailboxCollision):
        result(account.create("Work.Projects"))
    result(account.rename("Work", "Job"))
    names = [n for n, _ in result(account.listMailboxes("", "*"))]
    assert names == ["INBOX", "Job", "Job.Projects"]
    assert [n for n, _ in result(account.listMailboxes("", "%"))] == ["INBOX", "Job"]
    result(account.delete("Job.Projects"))
    assert os.path.isdir(os.path.join(store.maildir("alice"), ".Job"))
    assert not os.path.exists(os.path.join(store.maildir("alice"), ".Job.Projects"))
    with pytest.raises(imap4.MailboxException):
        result(account.delete("Nope"))
    assert result(account.select("Nope")) is None


def test_subscriptions(store):
    """SUBSCRIBE and UNSUBSCRIBE keep the list in the user's Maildir; LSUB's isSubscribed answers from what LIST read."""
    account = MaildirAccount(store, "alice")
    result(account.create("Work"))
    result(account.subscribe("Work"))
    result(account.subscribe("inbox"))
    other = MaildirAccount(store, "alice")
    result(other.listMailboxes("", "*"))
    assert other.isSubscribed("Work") and other.isSubscribed("INBOX")
    result(account.unsubscribe("Work"))
    with pytest.raises(imap4.MailboxException):
        result(account.unsubscribe("Work"))
    assert result(store.subscriptions("alice")) == ["INBOX"]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_folder_names_never_escape(tmp_path_factory, name):
    """Whatever a client names a mailbox, its directory is inside the user's Maildir or the name is refused."""
    store = memoryStore(str(tmp_path_factory.mktemp("n")))
    top = store.maildir("alice")
    try:
        path = store.folderPath("alice", name)
    except BadFolderName:
        return
    assert os.path.dirname(path) == top or path == top


def test_concurrent_writers_never_clobber(store):
    """Sixteen threads delivering 20 messages each into one Maildir leave 320 distinct, whole files."""
    path = store.maildir("alice")
    maildir.ensureMaildir(path)

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


def test_large_delivery_spills_to_tmp_and_aborts_clean(store):
    """A message over the in-memory limit goes to tmp/ as it arrives; commit moves it to new/ whole, abort leaves nothing."""
    path = store.maildir("alice")
    d = Delivery(path, store.run)
    d.SPILL = 100
    for _ in range(10):
        d.write(b"x" * 50 + b"\n")
    assert len(os.listdir(os.path.join(path, "tmp"))) == 1
    name = result(d.commit())
    assert os.listdir(os.path.join(path, "tmp")) == []
    assert os.path.getsize(os.path.join(path, "new", name)) == 510 and name.endswith(",S=510,W=520")
    d = Delivery(path, store.run)
    d.SPILL = 10
    d.write(b"y" * 50 + b"\n")
    assert len(os.listdir(os.path.join(path, "tmp"))) == 1
    d.abort()
    assert os.listdir(os.path.join(path, "tmp")) == []


def test_append_refuses_too_large(tmp_path):
    """APPEND over the store's maximum size fails with [TOOBIG] and stores nothing."""
    store = memoryStore(str(tmp_path), maxMessageSize=100)
    box = result(MaildirAccount(store, "alice").select("INBOX"))
    with pytest.raises(imap4.MailboxException, match="TOOBIG"):
        result(box.addMessage(io.BytesIO(b"x" * 101), []))
    assert result(box.addMessage(io.BytesIO(b"Subject: ok\n\nfits\n"), ["\\Seen"])) == 1
    assert os.listdir(os.path.join(store.maildir("alice"), "new")) == []


# -- off the reactor ----------------------------------------------------------------


def test_every_disk_operation_runs_in_the_pool(tmp_path, monkeypatch):
    """Delivering, opening, flagging, expunging, appending, copying, reading, folder changes and POP3 touch the disk only inside the store's pool."""
    pool = ManualPool(auto=True)
    store = memoryStore(str(tmp_path / "mail"), pool)
    guard = DiskGuard(monkeypatch, pool)

    delivery = store.openDelivery("alice")
    delivery.write(b"Subject: one\n\nfirst\n")
    result(delivery.commit())
    account = MaildirAccount(store, "alice")
    box = result(account.select("INBOX"))
    box.addListener(type("L", (), {"newMessages": lambda *a: None})())
    big = store.openDelivery("alice")
    big.SPILL = 10
    big.write(b"Subject: two\n\n" + b"z" * 100 + b"\n")
    result(big.commit())
    assert box.getMessageCount() == 2
    result(box.store(imap4.MessageSet(1), ["\\Seen"], 1, False))
    result(box.addMessage(io.BytesIO(b"Subject: three\n\n"), ["\\Flagged"], "01-Jan-2020 00:00:00 +0000"))
    messages = box.fetch(imap4.MessageSet(1, 3), False)
    result(messages[0][1].load())
    assert messages[0][1].getHeaders(False, "subject") == {"subject": "one"}
    result(account.create("Work"))
    work = result(account.select("Work"))
    result(work.copy(messages[1][1]))
    result(account.rename("Work", "Job"))
    result(account.subscribe("Job"))
    assert [n for n, _ in result(account.listMailboxes("", "*"))] == ["INBOX", "Job"]
    result(account.delete("Job"))
    result(box.store(imap4.MessageSet(2), ["\\Deleted"], 1, False))
    assert result(box.expunge()) == [2]
    pop = POP3Mailbox(store.folder("alice"))
    result(pop.whenOpen())
    assert result(pop.getMessage(0)).read().startswith(b"Subject: one")
    pop.deleteMessage(0)
    result(pop.sync())
    aborted = store.openDelivery("bob")
    aborted.SPILL = 10
    aborted.write(b"x" * 20)
    aborted.abort()

    assert guard.outside == []
    assert guard.calls > 50 and pool.ran > 20


def test_nothing_happens_until_the_pool_runs(tmp_path):
    """Opening a folder, delivering and creating a mailbox wait for the pool: until it runs, nothing is on disk and nothing has fired."""
    pool = ManualPool()
    store = memoryStore(str(tmp_path / "mail"), pool)
    done: list = []
    delivery = store.openDelivery("alice")
    delivery.write(b"Subject: s\n\nbody\n")
    for d in [store.openFolder("alice"), store.createFolder("alice", "Work"), delivery.commit()]:
        d.addBoth(done.append)
    assert done == [] and os.listdir(store.root) == []
    pool.runAll()
    assert len(done) == 3 and not any(isinstance(r, Failure) for r in done)
    assert os.path.isdir(os.path.join(store.maildir("alice"), ".Work", "cur"))


def test_one_folder_change_at_a_time(tmp_path):
    """A folder's changes queue behind each other: one piece of its work is in the pool at a time, run in call order."""
    pool = ManualPool(auto=True)
    store = memoryStore(str(tmp_path / "mail"), pool)
    deliver(store, 3)
    folder = result(store.openFolder("alice"))
    pool.auto = False
    deliver(store, 1)
    changes = [
        folder.refresh(),
        folder.setFlags([1, 2], "S"),
        folder.remove([2]),
        folder.setFlags([2, 3, 4], "F"),
    ]
    assert len(pool.queue) == 1
    while pool.queue:
        assert len(pool.queue) == 1
        pool.runOne()
    assert result(changes[2]) == [2]
    assert result(changes[3]) == {3: "F", 4: "F"}
    assert folder.letters(1) == "S" and folder.uids() == [1, 3, 4]



def test_sequence_numbers_follow_uids_while_new_mail_is_claimed(tmp_path):
    """Mail announced while earlier new mail is still being claimed gets later sequence numbers, in UID order."""
    pool = ManualPool(auto=True)
    store = memoryStore(str(tmp_path / "mail"), pool)
    box = result(MaildirAccount(store, "alice").select("INBOX"))
    heard = []
    box.addListener(type("L", (), {"newMessages": lambda self, exists, recent: heard.append((exists, recent))})())
    pool.auto = False
    writeMessageFile(store.maildir("alice"), b"Subject: new\n\n")
    box.folder.refresh()
    store.append(box.folder, b"Subject: appended\n\n", "S", None)
    pool.runOne()  # the listing: only the new message is there
    pool.runOne()  # the appended message is written; its UID waits for the refresh
    pool.runAll()
    assert box.uids == [1, 2] and box.folder.letters(2) == "S"
    assert heard == [(1, 1), (2, 2)]  # the appended message is \\Recent too


def test_unique_names_sort_in_order_made(monkeypatch):
    """Maildir names made one after the other sort in that order, across microsecond and second boundaries."""
    times = iter([1000.099999, 1000.1, 1000.999999, 1001.0])
    monkeypatch.setattr(maildir.time, "time", lambda: next(times))
    names = [maildir.uniqueName() for _ in range(4)]
    assert sorted(names) == names


def test_uidValidityOfAFolderMadeAgainInTheSameSecondDiffers():
    """New folders get strictly increasing UIDVALIDITY values, even within one second."""
    from mail.maildir import newUidValidity

    values = [newUidValidity() for _ in range(5)]
    assert values == sorted(set(values)) and len(values) == 5


def test_stale_tmp_files_removed_at_start_and_on_first_open(tmp_path):
    """Files in tmp/ older than the store's tmpMaxAge go at start and when a Maildir is first opened; younger ones stay, all in the pool."""
    pool = ManualPool()
    store = memoryStore(str(tmp_path / "mail"), pool, tmpMaxAge=36 * 3600)
    old = time.time() - 37 * 3600
    paths = {}
    for where in ["alice", "alice/.Work", "bob"]:
        top = os.path.join(store.root, where)
        maildir.ensureMaildir(top)
        for age in ("old", "young"):
            path = paths[where, age] = os.path.join(top, "tmp", f"{age}.partial")
            with open(path, "wb") as f:
                f.write(b"half a message")
        os.utime(paths[where, "old"], (old, old))
    started = store.start()
    assert os.path.exists(paths["alice", "old"])  # nothing on the reactor thread
    pool.runAll()
    assert sorted(result(started)) == sorted(paths[w, "old"] for w in ["alice", "alice/.Work", "bob"])
    assert all(os.path.exists(paths[w, "young"]) for w in ["alice", "alice/.Work", "bob"])

    later = memoryStore(str(tmp_path / "mail"), pool, tmpMaxAge=60)
    os.utime(paths["bob", "young"], (time.time() - 120,) * 2)
    later.openFolder("bob")
    pool.runAll()
    assert not os.path.exists(paths["bob", "young"]) and os.path.exists(paths["alice", "young"])
