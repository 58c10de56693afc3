"""
The store: one Maildir per user under a root, Maildir++ folders inside it,
flags in file names, and persistent IMAP UIDs.

Layout of C{ROOT/alice}::

    tmp/ new/ cur/             INBOX
    .Work/ .Work.Projects/     folders (hierarchy delimiter ".")
    coursenet-uidlist          UIDVALIDITY, next UID, UID of each message
    subscriptions              subscribed folder names, one a line

A message file is named C{<unique>,S=<octets>,W=<octets with CRLF>} in
C{new/}, and C{<unique>,S=..,W=..:2,<flags>} in C{cur/}, the flags being
the letters D F P R S T in order (Maildir's convention, shared with Dovecot,
mutt and mbsync).

Durability: a message is written to C{tmp/}, fsync'd, renamed into C{new/}
and C{new/} itself is fsync'd before delivery is reported; concurrent
deliveries into one directory share that directory fsync (group commit).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import threading
import time
from typing import Iterable

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from mail.interfaces import IDelivery, IFolder, IMailStore

_log = Logger()

#: Maildir info letters and the IMAP flags they stand for.
LETTER_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
FLAG_LETTERS = {flag.lower(): letter for letter, flag in LETTER_FLAGS.items()}

UIDLIST = "coursenet-uidlist"
SUBSCRIPTIONS = "subscriptions"
INBOX = "INBOX"
DELIMITER = "."

_sequence = itertools.count(1)
_host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def uniqueName() -> str:
    """
    A Maildir file name unique across processes, hosts and time.
    """
    now = time.time()
    return (
        f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}"
        f"Q{next(_sequence)}R{secrets.token_hex(4)}.{_host}"
    )


def flagsToLetters(flags: Iterable[str]) -> str:
    """
    The Maildir info letters for IMAP C{flags}, sorted; unknown flags raise
    L{ValueError}.
    """
    letters = set()
    for flag in flags:
        letter = FLAG_LETTERS.get(flag.lower())
        if letter is None:
            raise ValueError(f"flag {flag} cannot be stored")
        letters.add(letter)
    return "".join(sorted(letters))


def lettersToFlags(letters: str) -> list[str]:
    """
    The IMAP flags of Maildir info C{letters}; unknown letters are ignored.
    """
    return [LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS]


def virtualSize(name: str) -> int | None:
    """
    The size with CRLF line ends recorded in a file name (C{,W=}), if any.
    """
    for field in name.partition(":")[0].split(",")[1:]:
        if field.startswith("W="):
            try:
                return int(field[2:])
            except ValueError:
                return None
    return None


def ensureMaildir(path: str) -> None:
    """
    Create C{path} with its C{tmp}, C{new} and C{cur} unless they exist.
    """
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def fsyncDirectory(path: str) -> None:
    """
    Make the entries of directory C{path} durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirectorySync:
    """
    Group commit of directory fsyncs: a caller returns once a fsync that
    began after its call has finished, and callers that arrive while one
    runs share the next.
    """

    _lock = threading.Lock()
    _syncers: dict[str, "_DirectorySync"] = {}

    def __init__(self, path: str) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._running = False

    @classmethod
    def forPath(cls, path: str) -> "_DirectorySync":
        with cls._lock:
            syncer = cls._syncers.get(path)
            if syncer is None:
                syncer = cls._syncers[path] = cls(path)
            return syncer

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                target = self._requested
                self._cond.release()
                try:
                    fsyncDirectory(self.path)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = max(self._done, target)


def syncDirectory(path: str) -> None:
    """
    fsync directory C{path}, sharing the call with concurrent callers.
    """
    _DirectorySync.forPath(path).sync()


def writeMessageFile(
    maildir: str,
    data: bytes,
    letters: str | None = None,
    mtime: float | None = None,
) -> str:
    """
    Deliver C{data} durably into C{maildir} (blocking: call it in a thread).

    @param letters: flag letters: the message goes to C{cur/} with them;
        L{None} puts it in C{new/}.
    @return: the file name in C{new/} or C{cur/}.
    """
    data = data.replace(b"\r\n", b"\n")
    name = uniqueName()
    tmp = os.path.join(maildir, "tmp", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    lines = data.count(b"\n")
    final = f"{name},S={len(data)},W={len(data) + lines}"
    sub = "new"
    if letters is not None:
        final += ":2," + letters
        sub = "cur"
    os.rename(tmp, os.path.join(maildir, sub, final))
    syncDirectory(os.path.join(maildir, sub))
    return final


@implementer(IDelivery)
class Delivery:
    """
    A message being received for a Maildir: kept in memory up to
    L{SPILL} octets, then in C{tmp/}; made durable in a thread by
    L{commit}.  Creating files in a directory that other threads are
    fsyncing can block for milliseconds, so small messages touch the disk
    only in the thread.
    """

    #: Messages larger than this go to C{tmp/} as they arrive.
    SPILL = 1024 * 1024

    def __init__(self, maildir: str, reactor, threadPool, onCommit=None) -> None:
        self._maildir = maildir
        self._reactor = reactor
        self._pool = threadPool
        self._onCommit = onCommit
        self._chunks: list[bytes] = []
        self._file = None
        self._tmp = None
        self.size = 0
        self._lines = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._lines += data.count(b"\n")
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self.size > self.SPILL:
            self._name = uniqueName()
            self._tmp = os.path.join(self._maildir, "tmp", self._name)
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=256 * 1024)
            self._file.writelines(self._chunks)
            self._chunks = []

    def _finish(self) -> str:
        if self._file is None:
            return writeMessageFile(self._maildir, b"".join(self._chunks))
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        final = f"{self._name},S={self.size},W={self.size + self._lines}"
        os.rename(self._tmp, os.path.join(self._maildir, "new", final))
        syncDirectory(os.path.join(self._maildir, "new"))
        return final

    def commit(self):
        d = deferToThreadPool(self._reactor, self._pool, self._finish)

        def failed(failure):
            self.abort()
            return failure

        d.addErrback(failed)
        if self._onCommit is not None:
            d.addCallback(self._onCommit)
        return d

    def abort(self) -> None:
        self._chunks = []
        if self._file is None:
            return
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


class _Entry:
    __slots__ = ("uid", "base", "sub", "letters")

    def __init__(self, uid: int, base: str, sub: str, letters: str) -> None:
        self.uid = uid
        self.base = base
        self.sub = sub
        self.letters = letters

    @property
    def filename(self) -> str:
        if self.sub == "new":
            return f"new/{self.base}"
        return f"cur/{self.base}:2,{self.letters}"


@implementer(IFolder)
class Folder:
    """
    One Maildir directory with UIDs that persist in C{coursenet-uidlist}:
    a first line C{V<uidvalidity> N<uidnext>}, then C{<uid> <unique name>}
    lines, appended and fsync'd before a UID is ever shown to a client.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        ensureMaildir(path)
        self._listeners: list = []
        self._entries: dict[str, _Entry] = {}
        self._byUid: dict[int, _Entry] = {}
        self._known: dict[str, int] = {}
        self._stale = 0
        self._load()
        self.scan()

    # -- the UID list -------------------------------------------------------

    def _load(self) -> None:
        path = os.path.join(self.path, UIDLIST)
        try:
            with open(path, encoding="utf-8") as f:
                header = f.readline().split()
                fields = {h[0]: int(h[1:]) for h in header if h[1:].isdigit()}
                self.uidValidity = fields["V"]
                self.uidNext = fields["N"]
                for line in f:
                    uid, _, base = line.strip().partition(" ")
                    if uid.isdigit() and base:
                        self._known[base] = int(uid)
                        self.uidNext = max(self.uidNext, int(uid) + 1)
        except (FileNotFoundError, KeyError, ValueError):
            if os.path.exists(path):
                _log.warn("unreadable {path}: new UIDVALIDITY", path=path)
            self.uidValidity = int(time.time())
            self.uidNext = 1
            self._known = {}
            self._rewrite()

    def _rewrite(self) -> None:
        path = os.path.join(self.path, UIDLIST)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"V{self.uidValidity} N{self.uidNext}\n")
            for entry in sorted(self._entries.values(), key=lambda e: e.uid):
                f.write(f"{entry.uid} {entry.base}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsyncDirectory(self.path)
        self._known = {e.base: e.uid for e in self._entries.values()}
        self._stale = 0

    def _append(self, entries: list[_Entry]) -> None:
        with open(os.path.join(self.path, UIDLIST), "a", encoding="utf-8") as f:
            f.writelines(f"{e.uid} {e.base}\n" for e in entries)
            f.flush()
            os.fsync(f.fileno())
        for e in entries:
            self._known[e.base] = e.uid

    # -- the directory ------------------------------------------------------

    def _list(self) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):
            with os.scandir(os.path.join(self.path, sub)) as it:
                for de in it:
                    if de.name.startswith("."):
                        continue
                    base, _, info = de.name.partition(":")
                    letters = info[2:] if info.startswith("2,") else ""
                    found[base] = (sub, letters)
        return found

    def scan(self) -> bool:
        found = self._list()
        changed = False
        for base in list(self._entries):
            if base not in found:
                entry = self._entries.pop(base)
                del self._byUid[entry.uid]
                self._stale += 1
                changed = True
        added = []
        for base in sorted(b for b in found if b not in self._entries):
            sub, letters = found[base]
            uid = self._known.get(base)
            if uid is None or uid in self._byUid:
                uid = self.uidNext
                self.uidNext += 1
                entry = _Entry(uid, base, sub, letters)
                added.append(entry)
            else:
                entry = _Entry(uid, base, sub, letters)
            self._entries[base] = entry
            self._byUid[uid] = entry
            changed = True
        for base, (sub, letters) in found.items():
            entry = self._entries[base]
            if (entry.sub, entry.letters) != (sub, letters):
                entry.sub, entry.letters = sub, letters
                changed = True
        if self._stale > 1000 and self._stale > len(self._entries):
            self._rewrite()
        elif added:
            self._append(added)
        if changed:
            self._notify()
        return changed

    def noteDelivered(self, name: str) -> None:
        """
        A message was just renamed into C{new/} by this process: give it a
        UID without listing the directory.
        """
        if name not in self._entries:
            entry = _Entry(self.uidNext, name, "new", "")
            self.uidNext += 1
            self._append([entry])
            self._entries[name] = entry
            self._byUid[entry.uid] = entry
            self._notify()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener.folderChanged(self)

    def addListener(self, listener) -> None:
        self._listeners.append(listener)

    def removeListener(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- messages -----------------------------------------------------------

    def uids(self) -> list[int]:
        """
        Every UID, ascending.
        """
        return sorted(self._byUid)

    def has(self, uid: int) -> bool:
        return uid in self._byUid

    def filename(self, uid: int) -> str:
        """
        The absolute file name of message C{uid}; L{KeyError} if it is gone.
        """
        return os.path.join(self.path, self._byUid[uid].filename)

    def size(self, uid: int) -> int:
        """
        The size of message C{uid} with CRLF line ends.
        """
        entry = self._byUid[uid]
        size = virtualSize(entry.base)
        if size is None:
            with open(self.filename(uid), "rb") as f:
                data = f.read()
            size = len(data) + data.count(b"\n") - data.count(b"\r\n")
        return size

    def letters(self, uid: int) -> str:
        return self._byUid[uid].letters

    def isNew(self, uid: int) -> bool:
        return self._byUid[uid].sub == "new"

    def setLetters(self, uid: int, letters: str) -> None:
        """
        Store flag C{letters} for message C{uid} in its file name.
        """
        entry = self._byUid[uid]
        letters = "".join(sorted(set(letters)))
        if entry.sub == "cur" and entry.letters == letters:
            return
        old = os.path.join(self.path, entry.filename)
        new = os.path.join(self.path, f"cur/{entry.base}:2,{letters}")
        try:
            os.rename(old, new)
        except FileNotFoundError:
            self.scan()
            raise KeyError(uid)
        entry.sub, entry.letters = "cur", letters

    def claimNew(self) -> set[int]:
        """
        Move every message from C{new/} to C{cur/}; the UIDs moved (the
        messages that are \\Recent for the session that claims them).
        """
        claimed = set()
        for entry in list(self._entries.values()):
            if entry.sub == "new":
                try:
                    self.setLetters(entry.uid, entry.letters)
                except KeyError:
                    continue
                claimed.add(entry.uid)
        return claimed

    def remove(self, uids: Iterable[int]) -> list[int]:
        """
        Delete messages C{uids}; the UIDs actually removed.
        """
        removed = []
        for uid in uids:
            entry = self._byUid.get(uid)
            if entry is None:
                continue
            try:
                os.unlink(os.path.join(self.path, entry.filename))
            except FileNotFoundError:
                pass
            del self._byUid[uid]
            del self._entries[entry.base]
            self._stale += 1
            removed.append(uid)
        if removed:
            self._notify()
        return removed

    def adopt(self, name: str) -> int:
        """
        Give a UID to a file this process just put in the folder (APPEND,
        COPY); the UID.
        """
        base, _, info = name.partition(":")
        if base not in self._entries:
            sub = "cur" if info else "new"
            entry = _Entry(self.uidNext, base, sub, info[2:])
            self.uidNext += 1
            self._append([entry])
            self._entries[base] = entry
            self._byUid[entry.uid] = entry
            self._notify()
        return self._entries[base].uid


class NoSuchFolder(KeyError):
    """
    The mailbox named does not exist.
    """


class BadFolderName(ValueError):
    """
    A mailbox name that cannot be stored.
    """


@implementer(IMailStore)
class MaildirStore:
    """
    Every user's mailboxes under one root directory.
    """

    def __init__(
        self, root: str, hasUser, reactor=None, maxMessageSize: int | None = None
    ) -> None:
        """
        @param hasUser: a callable telling whether a user name is an account.
        @param maxMessageSize: the largest message APPEND may store.
        """
        self.maxMessageSize = maxMessageSize
        if reactor is None:
            from twisted.internet import reactor
        self.root = os.path.abspath(root)
        self._hasUser = hasUser
        self._reactor = reactor
        self._pool = None
        self._folders: dict[str, Folder] = {}
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def threadPool(self):
        """
        The store's own threads for fsync: separate from the reactor's pool
        so that deliveries never wait behind other blocking work.
        """
        if self._pool is None:
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(minthreads=1, maxthreads=16, name="maildir")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        return self._pool

    def hasUser(self, name: str) -> bool:
        return self._userDirName(name) is not None and self._hasUser(name)

    @staticmethod
    def _userDirName(name: str) -> str | None:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            return None
        return name

    def maildir(self, user: str) -> str:
        """
        The INBOX directory of C{user}, created on first use.
        """
        dirname = self._userDirName(user)
        if dirname is None:
            raise ValueError(f"unusable user name {user!r}")
        path = os.path.join(self.root, dirname)
        if not os.path.isdir(os.path.join(path, "cur")):
            ensureMaildir(path)
        return path

    def folderPath(self, user: str, name: str) -> str:
        """
        The directory of mailbox C{name} (C{INBOX}, or a name with C{.}
        separating levels) of C{user}.

        @raise BadFolderName: for names that cannot be directory names.
        """
        if name.upper() == INBOX:
            return self.maildir(user)
        encoded = name.encode("imap4-utf-7").decode("ascii")
        parts = encoded.split(DELIMITER)
        if (
            not encoded
            or "/" in encoded
            or any(not p or p.upper() == INBOX and i == 0 for i, p in enumerate(parts))
            or any(ord(c) < 0x20 or c in '*%\\"' for c in encoded)
            or len(encoded) > 200
        ):
            raise BadFolderName(
                f"bad mailbox name {name!r}: use non-empty levels separated by"
                f" {DELIMITER!r}, no '/', '*', '%' or control characters"
            )
        return os.path.join(self.maildir(user), "." + encoded)

    def folder(self, user: str, name: str = INBOX) -> Folder:
        path = self.folderPath(user, name)
        folder = self._folders.get(path)
        if folder is None:
            if not os.path.isdir(os.path.join(path, "cur")):
                raise NoSuchFolder(name)
            folder = self._folders[path] = Folder(path)
        return folder

    def listFolders(self, user: str) -> list[str]:
        names = []
        with os.scandir(self.maildir(user)) as it:
            for de in it:
                if de.name.startswith(".") and de.name not in (".", "..") and de.is_dir():
                    try:
                        names.append(de.name[1:].encode("ascii").decode("imap4-utf-7"))
                    except UnicodeError:
                        continue
        return [INBOX] + sorted(names)

    def createFolder(self, user: str, name: str) -> None:
        """
        @raise FileExistsError: if it exists.
        """
        path = self.folderPath(user, name)
        if os.path.isdir(path):
            raise FileExistsError(name)
        ensureMaildir(path)
        fsyncDirectory(self.maildir(user))

    def deleteFolder(self, user: str, name: str) -> None:
        path = self.folderPath(user, name)
        if name.upper() == INBOX or not os.path.isdir(path):
            raise NoSuchFolder(name)
        self._folders.pop(path, None)
        shutil.rmtree(path)

    def renameFolder(self, user: str, old: str, new: str) -> None:
        """
        Rename C{old} and every folder below it.
        """
        oldPath = self.folderPath(user, old)
        newPath = self.folderPath(user, new)
        if old.upper() == INBOX or not os.path.isdir(oldPath):
            raise NoSuchFolder(old)
        if os.path.exists(newPath):
            raise FileExistsError(new)
        prefix = os.path.basename(oldPath) + DELIMITER
        newPrefix = os.path.basename(newPath) + DELIMITER
        top = self.maildir(user)
        moves = [(oldPath, newPath)]
        for entry in os.listdir(top):
            if entry.startswith(prefix):
                moves.append(
                    (os.path.join(top, entry), os.path.join(top, newPrefix + entry[len(prefix):]))
                )
        for src, dst in moves:
            if os.path.exists(dst):
                raise FileExistsError(dst)
        for src, dst in moves:
            self._folders.pop(src, None)
            os.rename(src, dst)
        fsyncDirectory(top)

    def subscriptions(self, user: str) -> list[str]:
        try:
            with open(os.path.join(self.maildir(user), SUBSCRIPTIONS), encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def setSubscriptions(self, user: str, names: list[str]) -> None:
        path = os.path.join(self.maildir(user), SUBSCRIPTIONS)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(n + "\n" for n in names)
        os.replace(path + ".tmp", path)

    def openDelivery(self, user: str) -> Delivery:
        maildir = self.maildir(user)

        def delivered(name: str) -> str:
            folder = self._folders.get(maildir)
            if folder is not None:
                folder.noteDelivered(name)
            return name

        return Delivery(maildir, self._reactor, self.threadPool(), delivered)

    def append(self, folder: Folder, data: bytes, letters: str | None, mtime: float | None):
        """
        Store C{data} in C{folder} durably, in a thread; a L{Deferred} firing
        with its new UID.
        """
        d = deferToThreadPool(
            self._reactor,
            self.threadPool(),
            writeMessageFile,
            folder.path,
            data,
            letters,
            mtime,
        )
        return d.addCallback(folder.adopt)
