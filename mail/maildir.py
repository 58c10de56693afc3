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
A UID is appended to C{coursenet-uidlist} and fsync'd before any client
sees it; a directory created or renamed has its parent fsync'd.

Threads: every disk operation of the store (message files written, read,
renamed or removed, the UID list appended or rewritten, folders listed,
created, renamed or deleted, and every fsync) runs in the store's thread
pool.  The reactor thread keeps only the in-memory view of each folder and
changes it after the disk work it depends on has finished.  The changes to
one folder are serialized by that folder's L{DeferredLock}, so concurrent
writers never interleave; folder creation, deletion, renaming and
subscriptions are serialized per user the same way.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import threading
import time
from typing import IO, Any, Callable, Iterable

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mail.interfaces import IDelivery, IFolder, IFolderListener, IMailStore

_log = Logger()

#: Runs a blocking function in the store's thread pool: a L{Deferred}.
Runner = Callable[..., Deferred]
#: Makes a file descriptor's data durable (L{os.fsync}, or a test's recorder).
Fsync = Callable[[int], None]

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
#: A folder's keywords: line N names the keyword of info letter chr(97 + N).
KEYWORDS = "coursenet-keywords"
#: A folder's mod-sequences (RFC 7162): "<uid> <modseq>" lines, the last
#: for a UID counting.
MODSEQS = "coursenet-modseq"
#: Maildir info has the letters a to z for keywords.
MAX_KEYWORDS = 26
SUBSCRIPTIONS = "subscriptions"
INBOX = "INBOX"
DELIMITER = "."

_sequence = itertools.count(1)
_host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def uniqueName() -> str:
    """
    A Maildir file name unique across processes, hosts and time.  Names
    sort in the order they were made (the microseconds are zero-padded),
    so messages found by one scan get their UIDs in order of arrival.
    """
    now = time.time()
    return (
        f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}"
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


def lettersToFlags(letters: str, keywords: list[str] = []) -> list[str]:
    """
    The IMAP flags of Maildir info C{letters}, the letters a to z standing
    for C{keywords}; unknown letters are ignored.
    """
    flags = []
    for c in letters:
        if c in LETTER_FLAGS:
            flags.append(LETTER_FLAGS[c])
        elif "a" <= c <= "z" and ord(c) - 97 < len(keywords):
            flags.append(keywords[ord(c) - 97])
    return flags


class TooManyKeywords(ValueError):
    """
    A folder has no letter left for another keyword.
    """


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


def crlfSize(data: bytes) -> int:
    """
    The size of C{data} once every line ends in CRLF.
    """
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


# -- blocking helpers: each runs in a thread of the store's pool ----------------


def fsyncDirectory(path: str) -> None:
    """
    Make the entries of directory C{path} durable (blocking).

    Every directory fsync of the store goes through this name, so that a
    test can replace it and see which directories are synced when.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_lastValidity = 0


def newUidValidity() -> int:
    """
    A UIDVALIDITY for a new folder: the time in seconds, but always more
    than the last one given, so that a folder deleted and made again
    within one second does not get its old value (RFC 3501 section 2.3.1.1).
    """
    global _lastValidity
    _lastValidity = max(int(time.time()), _lastValidity + 1)
    return _lastValidity


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


def ensureMaildir(path: str) -> bool:
    """
    Create C{path} with its C{tmp}, C{new} and C{cur} unless they exist,
    durably: each directory that got a new entry is fsync'd (blocking).

    @return: whether anything was created.
    """
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    created = made = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    for sub in ("tmp", "new", "cur"):
        try:
            os.mkdir(os.path.join(path, sub), 0o700)
            made = True
        except FileExistsError:
            pass
    if made:
        fsyncDirectory(path)
    if created:
        fsyncDirectory(parent)
    return created or made


#: How old a file in C{tmp/} may be before it is taken for the remains of
#: an interrupted delivery and removed (the Maildir convention, 36 hours:
#: cr.yp.to/proto/maildir.html).
TMP_MAX_AGE = 36 * 3600


def removeStaleTmp(maildir: str, maxAge: float, now: float | None = None) -> list[str]:
    """
    Remove the files in C{maildir}'s C{tmp/} last modified more than
    C{maxAge} seconds before C{now} (the wall clock by default).  Blocking.

    @return: the names removed.
    """
    if now is None:
        now = time.time()
    removed: list[str] = []
    try:
        entries = list(os.scandir(os.path.join(maildir, "tmp")))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < now - maxAge:
                os.unlink(entry.path)
                removed.append(entry.name)
        except FileNotFoundError:
            continue
    return removed


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _createTmp(maildir: str, name: str) -> int:
    """
    Open a new file C{name} in C{maildir}'s C{tmp/}, creating the Maildir
    (durably) on its first delivery.
    """
    path = os.path.join(maildir, "tmp", name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        ensureMaildir(maildir)
        return os.open(path, flags, 0o600)


def writeMessageFile(
    maildir: str,
    data: bytes,
    letters: str | None = None,
    mtime: float | None = None,
    fsync: Fsync = os.fsync,
) -> str:
    """
    Deliver C{data} durably into C{maildir} (blocking: call it in a thread).

    @param letters: flag letters: the message goes to C{cur/} with them;
        L{None} puts it in C{new/}.
    @param fsync: how the message file is made durable.
    @return: the file name in C{new/} or C{cur/}.
    """
    data = data.replace(b"\r\n", b"\n")
    name = uniqueName()
    fd = _createTmp(maildir, name)
    try:
        _writeAll(fd, data)
        fsync(fd)
    finally:
        os.close(fd)
    tmp = os.path.join(maildir, "tmp", name)
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


def _findMessage(maildir: str, name: str) -> str | None:
    """
    Where message C{name} is now, whatever its flags: C{new/} or C{cur/}
    relative file name, or L{None} if it is gone.
    """
    base = name.rpartition("/")[2].partition(":")[0]
    if os.path.exists(os.path.join(maildir, "new", base)):
        return f"new/{base}"
    try:
        with os.scandir(os.path.join(maildir, "cur")) as it:
            for de in it:
                if de.name == base or de.name.startswith(base + ":"):
                    return f"cur/{de.name}"
    except FileNotFoundError:
        pass
    return None


def readMessageFile(maildir: str, name: str) -> tuple[bytes, float] | None:
    """
    The bytes and modification time of message C{name} (C{new/...} or
    C{cur/...}), followed if its flags renamed it meanwhile; L{None} if it
    was removed.
    """
    for _ in range(3):
        try:
            with open(os.path.join(maildir, name), "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            found = _findMessage(maildir, name)
            if found is None:
                return None
            name = found
    return None


def _listMaildir(path: str, known: frozenset[str]) -> dict[str, tuple[str, str, int | None, float | None]]:
    """
    The messages in C{path}: base name to C{(sub, letters, size, mtime)}, the
    size (with CRLF) and mtime only for names not in C{known}.
    """
    found: dict[str, tuple[str, str, int | None, float | None]] = {}
    for sub in ("new", "cur"):
        with os.scandir(os.path.join(path, sub)) as it:
            for de in it:
                if de.name.startswith("."):
                    continue
                base, _, info = de.name.partition(":")
                letters = info[2:] if info.startswith("2,") else ""
                size = mtime = None
                if base not in known:
                    try:
                        mtime = de.stat().st_mtime
                        size = virtualSize(de.name)
                        if size is None:
                            with open(de.path, "rb") as f:
                                size = crlfSize(f.read())
                    except FileNotFoundError:
                        continue
                found[base] = (sub, letters, size, mtime)
    return found


def _renameAll(root: str, moves: list[tuple[str, str]]) -> list[bool]:
    """
    Rename each C{(old, new)} under C{root}; for each, whether it was there.
    """
    done = []
    for old, new in moves:
        try:
            os.rename(os.path.join(root, old), os.path.join(root, new))
            done.append(True)
        except FileNotFoundError:
            done.append(False)
    return done


def _unlinkAll(root: str, names: list[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(root, name))
        except FileNotFoundError:
            pass


# -- a message on its way in ----------------------------------------------------


@implementer(IDelivery)
class Delivery:
    """
    A message being received for a Maildir, written in the store's pool:
    kept in memory until L{SPILL} octets have come, then appended to a file
    in C{tmp/} that many at a time; made durable by L{commit}.
    """

    #: Octets held in memory before they are written to C{tmp/}.
    SPILL = 1024 * 1024

    def __init__(
        self,
        maildir: str,
        run: Runner,
        onCommit: Callable[[str], Any] | None = None,
        fsync: Fsync = os.fsync,
    ) -> None:
        """
        @param run: runs a blocking function in the store's pool.
        @param onCommit: called with the file name once the message is
            durable; its result is the result of L{commit}.
        """
        self._maildir = maildir
        self._run = run
        self._onCommit = onCommit
        self._fsync = fsync
        self._chunks: list[bytes] = []
        self._buffered = 0
        # The spill writes, one after the other; commit and abort wait for them.
        self._writes: Deferred[None] = succeed(None)
        self._name: str | None = None
        self._fd: int | None = None
        self._ended = False
        self.size = 0
        self._lines = 0

    def write(self, data: bytes) -> None:
        if self._ended:
            return
        self.size += len(data)
        self._lines += data.count(b"\n")
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= self.SPILL:
            chunk = b"".join(self._chunks)
            self._chunks = []
            self._buffered = 0
            self._writes.addCallback(lambda _: self._run(self._spill, chunk))

    def _spill(self, data: bytes) -> None:
        if self._fd is None:
            self._name = uniqueName()
            self._fd = _createTmp(self._maildir, self._name)
        _writeAll(self._fd, data)

    def _finish(self, rest: bytes) -> str:
        if self._fd is None:
            return writeMessageFile(self._maildir, rest, fsync=self._fsync)
        assert self._name is not None
        try:
            _writeAll(self._fd, rest)
            self._fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
        final = f"{self._name},S={self.size},W={self.size + self._lines}"
        os.rename(
            os.path.join(self._maildir, "tmp", self._name),
            os.path.join(self._maildir, "new", final),
        )
        self._name = None
        syncDirectory(os.path.join(self._maildir, "new"))
        return final

    def _discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._name is not None:
            try:
                os.unlink(os.path.join(self._maildir, "tmp", self._name))
            except FileNotFoundError:
                pass
            self._name = None

    def commit(self) -> Deferred[Any]:
        self._ended = True
        rest = b"".join(self._chunks)
        self._chunks = []
        d = self._writes.addCallback(lambda _: self._run(self._finish, rest))

        def failed(failure: Failure) -> Deferred[Any]:
            return self._run(self._discard).addBoth(lambda _: failure)

        d.addErrback(failed)
        if self._onCommit is not None:
            d.addCallback(self._onCommit)
        return d

    def abort(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._chunks = []
        self._writes.addBoth(lambda _: self._run(self._discard))
        self._writes.addErrback(
            lambda f: _log.failure("could not remove a partial message", f)
        )


# -- one folder -------------------------------------------------------------------


class NoSuchFolder(KeyError):
    """
    The mailbox named does not exist.
    """


class BadFolderName(ValueError):
    """
    A mailbox name that cannot be stored.
    """


class MessageTooLarge(ValueError):
    """
    A message over the store's maximum size was refused.
    """


class _Entry:
    __slots__ = ("uid", "base", "sub", "letters", "size", "mtime")

    def __init__(
        self, uid: int, base: str, sub: str, letters: str, size: int, mtime: float
    ) -> None:
        self.uid = uid
        self.base = base
        self.sub = sub
        self.letters = letters
        self.size = size
        self.mtime = mtime

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

    Nothing is read until the first L{refresh}; every method that changes
    the folder returns a L{Deferred} and runs after the changes before it.
    """

    def __init__(
        self, path: str, run: Runner, fsync: Fsync = os.fsync, create: bool = False
    ) -> None:
        """
        @param run: runs a blocking function in the store's pool.
        @param create: make the directory if it is missing (INBOX); other
            folders fail with L{NoSuchFolder}.
        """
        self.path = path
        self.uidValidity = 0
        self.uidNext = 1
        self._run = run
        self._fsync = fsync
        self._create = create
        self._lock = DeferredLock()
        self._loaded = False
        self._listeners: list[IFolderListener] = []
        self._entries: dict[str, _Entry] = {}
        self._byUid: dict[int, _Entry] = {}
        self._known: dict[str, int] = {}
        self._stale = 0
        #: Messages appended or copied here in cur/ that no session has
        #: seen yet: \\Recent for the first to claim them, as mail in new/.
        self._unclaimed: set[int] = set()
        #: The keywords of the info letters a, b, ... (L{KEYWORDS}).
        self.keywords: list[str] = []
        #: Each message's mod-sequence, and the highest given (L{MODSEQS}).
        self._modseqs: dict[int, int] = {}
        self.highestModseq = 0
        self._modseqLines = 0

    # -- the UID list, in a thread -------------------------------------------

    def _readUidList(self) -> tuple[int, int, dict[str, int]] | None:
        if self._create:
            ensureMaildir(self.path)
        elif not os.path.isdir(os.path.join(self.path, "cur")):
            raise NoSuchFolder(self.path)
        path = os.path.join(self.path, UIDLIST)
        try:
            with open(path, encoding="utf-8") as f:
                header = f.readline().split()
                fields = {h[0]: int(h[1:]) for h in header if h[1:].isdigit()}
                validity, uidNext = fields["V"], fields["N"]
                known = {}
                for line in f:
                    uid, _, base = line.strip().partition(" ")
                    if uid.isdigit() and base:
                        known[base] = int(uid)
                        uidNext = max(uidNext, int(uid) + 1)
                return validity, uidNext, known
        except FileNotFoundError:
            return None
        except (KeyError, ValueError):
            _log.warn("unreadable {path}: new UIDVALIDITY", path=path)
            return None

    def _writeUidList(self, validity: int, uidNext: int, lines: list[tuple[int, str]]) -> None:
        path = os.path.join(self.path, UIDLIST)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"V{validity} N{uidNext}\n")
            f.writelines(f"{uid} {base}\n" for uid, base in lines)
            f.flush()
            self._fsync(f.fileno())
        os.replace(tmp, path)
        fsyncDirectory(self.path)

    def _appendUidList(self, lines: list[tuple[int, str]]) -> None:
        with open(os.path.join(self.path, UIDLIST), "a", encoding="utf-8") as f:
            f.writelines(f"{uid} {base}\n" for uid, base in lines)
            f.flush()
            self._fsync(f.fileno())

    def _addFile(self, uid: int, name: str) -> float:
        """
        The mtime of new message C{name}, once its UID is durable.
        """
        found = _findMessage(self.path, name)
        mtime = os.stat(os.path.join(self.path, found)).st_mtime if found else time.time()
        self._appendUidList([(uid, name.partition(":")[0])])
        return mtime

    def _readKeywords(self) -> list[str]:
        try:
            with open(os.path.join(self.path, KEYWORDS), encoding="utf-8") as f:
                lines = [line.rstrip("\n").partition(" ") for line in f]
        except FileNotFoundError:
            return []
        names = {int(n): name for n, _, name in lines if n.isdigit() and name}
        return [names.get(i, f"$unknown{i}") for i in range(min(len(names), MAX_KEYWORDS))]

    def _writeKeywords(self, keywords: list[str]) -> None:
        path = os.path.join(self.path, KEYWORDS)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{n} {name}\n" for n, name in enumerate(keywords))
            f.flush()
            self._fsync(f.fileno())
        os.replace(tmp, path)
        fsyncDirectory(self.path)

    # -- mod-sequences (CONDSTORE) ------------------------------------------------
    #
    # A mod-sequence is the time in microseconds when it is handed out, or
    # one more than the last if that is larger: so every one handed out
    # after a restart is above every one before it, though only the
    # messages' own are kept (in MODSEQS, written before the change it
    # records, without fsync: a process that dies keeps them, a machine
    # that loses power may give some messages a new, higher one).

    def _readModseqs(self) -> dict[int, int]:
        found: dict[int, int] = {}
        try:
            with open(os.path.join(self.path, MODSEQS), encoding="ascii", errors="replace") as f:
                for line in f:
                    uid, _, value = line.strip().partition(" ")
                    if uid.isdigit() and value.isdigit():
                        found[int(uid)] = int(value)
        except FileNotFoundError:
            pass
        return found

    def _writeModseqs(self, lines: list[tuple[int, int]], rewrite: bool = False) -> None:
        path = os.path.join(self.path, MODSEQS)
        if rewrite:
            with open(path + ".tmp", "w", encoding="ascii") as f:
                f.writelines(f"{uid} {value}\n" for uid, value in lines)
            os.replace(path + ".tmp", path)
            return
        with open(path, "a", encoding="ascii") as f:
            f.writelines(f"{uid} {value}\n" for uid, value in lines)

    def _compactModseqs(self, mine: dict[int, int], known: set[int], uidNext: int) -> int:
        """
        Rewrite MODSEQS without the lines of messages this view knows are
        gone.  Lines other sessions appended meanwhile are kept: a message
        at or above this view's uidNext may be in another session's view
        already, and losing its line would reset its mod-sequence to 1.
        Blocking: call it in a thread.

        @return: the number of lines written.
        """
        merged = self._readModseqs()
        merged.update(mine)
        everything = sorted((u, m) for u, m in merged.items() if u in known or u >= uidNext)
        self._writeModseqs(everything, True)
        return len(everything)

    def _nextModseq(self) -> int:
        self.highestModseq = max(self.highestModseq + 1, int(time.time() * 1e6))
        return self.highestModseq

    async def _recordModseqs(self, uids: Iterable[int]) -> None:
        """
        Give C{uids} a new mod-sequence, on disk before in memory.
        """
        lines = [(uid, self._nextModseq()) for uid in uids]
        if not lines:
            return
        self._modseqLines += len(lines)
        if self._modseqLines > 2 * len(self._modseqs) + 1000:
            mine = dict(self._modseqs)
            mine.update(lines)
            known, uidNext = set(self._byUid) | {u for u, _ in lines}, self.uidNext
            self._modseqLines = await self._run(self._compactModseqs, mine, known, uidNext)
        else:
            await self._run(self._writeModseqs, lines)
        self._modseqs.update(lines)

    def modseq(self, uid: int) -> int:
        # A message with no line (just appended, or expunged while a
        # session still shows it) gets the highest given so far: a
        # mod-sequence seen by a client must never go down (RFC 7162 3.1).
        return self._modseqs.get(uid, self.highestModseq)

    def keywordLetters(self, names: Iterable[str], create: bool = True) -> Deferred[str]:
        return self._lock.run(self._keywordLetters, list(names), create)

    async def _keywordLetters(self, names: list[str], create: bool) -> str:
        if not self._loaded:
            await self._load()
        known = {k.lower(): n for n, k in enumerate(self.keywords)}
        keywords = list(self.keywords)
        letters = set()
        for name in names:
            n = known.get(name.lower())
            if n is None:
                if not create:
                    continue
                if len(keywords) >= MAX_KEYWORDS:
                    raise TooManyKeywords(
                        f"[LIMIT] A mailbox holds at most {MAX_KEYWORDS} keywords; {name} is one too many"
                    )
                n = known[name.lower()] = len(keywords)
                keywords.append(name)
            letters.add(chr(97 + n))
        if keywords != self.keywords:
            # Durable before any file name carries the new letter.
            await self._run(self._writeKeywords, keywords)
            self.keywords = keywords
            self._notify()
        return "".join(sorted(letters))

    def flags(self, uid: int) -> list[str]:
        return lettersToFlags(self._byUid[uid].letters, self.keywords)

    # -- keeping the view up to date, on the reactor thread ------------------

    async def _load(self) -> None:
        self.keywords = await self._run(self._readKeywords)
        self._modseqs = await self._run(self._readModseqs)
        self._modseqLines = len(self._modseqs)
        self.highestModseq = max([int(time.time() * 1e6), *self._modseqs.values()])
        state = await self._run(self._readUidList)
        if state is None:
            validity = newUidValidity()
            await self._run(self._writeUidList, validity, 1, [])
            state = validity, 1, {}
        self.uidValidity, self.uidNext, self._known = state
        self._loaded = True

    def refresh(self) -> Deferred[bool]:
        return self._lock.run(self._refresh)

    async def _refresh(self) -> bool:
        if not self._loaded:
            await self._load()
        found = await self._run(_listMaildir, self.path, frozenset(self._entries))
        changed = False
        for base in [b for b in self._entries if b not in found]:
            entry = self._entries.pop(base)
            del self._byUid[entry.uid]
            self._stale += 1
            changed = True
        added: list[_Entry] = []
        fresh: list[_Entry] = []
        relettered: list[int] = []
        taken: set[int] = set()
        uidNext = self.uidNext
        for base in sorted(found):
            sub, letters, size, mtime = found[base]
            known = self._entries.get(base)
            if known is not None:
                if (known.sub, known.letters) != (sub, letters):
                    if known.letters != letters:
                        relettered.append(known.uid)
                    known.sub, known.letters = sub, letters
                    changed = True
                continue
            assert size is not None and mtime is not None
            uid = self._known.get(base)
            if uid is None or uid in self._byUid or uid in taken:
                uid = uidNext
                uidNext += 1
                entry = _Entry(uid, base, sub, letters, size, mtime)
                fresh.append(entry)
            else:
                entry = _Entry(uid, base, sub, letters, size, mtime)
            taken.add(uid)
            added.append(entry)
        if self._stale > 1000 and self._stale > len(self._entries) + len(added):
            everything = sorted([*self._entries.values(), *added], key=lambda e: e.uid)
            lines = [(e.uid, e.base) for e in everything]
            await self._run(self._writeUidList, self.uidValidity, uidNext, lines)
            self._known = dict((base, uid) for uid, base in lines)
            self._stale = 0
        elif fresh:
            await self._run(self._appendUidList, [(e.uid, e.base) for e in fresh])
            self._known.update((e.base, e.uid) for e in fresh)
        self.uidNext = uidNext
        for entry in added:
            self._entries[entry.base] = entry
            self._byUid[entry.uid] = entry
            changed = True
        # Flags another program changed, and messages with no mod-sequence
        # yet, get a new one.
        await self._recordModseqs(relettered + [e.uid for e in added if e.uid not in self._modseqs])
        if changed:
            self._notify()
        return changed

    async def _addEntry(self, name: str) -> int:
        base, _, info = name.partition(":")
        uid = self.uidNext
        mtime = await self._run(self._addFile, uid, name)
        size = virtualSize(name)
        if size is None:
            size = 0
        entry = _Entry(uid, base, "cur" if info else "new", info[2:], size, mtime)
        self.uidNext = uid + 1
        self._known[base] = uid
        self._entries[base] = entry
        self._byUid[uid] = entry
        if entry.sub == "cur":
            self._unclaimed.add(uid)
        await self._recordModseqs([uid])
        self._notify()
        return uid

    def noteDelivered(self, name: str) -> Deferred[None]:
        return self._lock.run(self._noteDelivered, name)

    async def _noteDelivered(self, name: str) -> None:
        if self._loaded and name.partition(":")[0] not in self._entries:
            await self._addEntry(name)

    def adopt(self, name: str) -> Deferred[int]:
        return self._lock.run(self._adopt, name)

    async def _adopt(self, name: str) -> int:
        if not self._loaded:
            await self._refresh()
        entry = self._entries.get(name.partition(":")[0])
        if entry is not None:
            return entry.uid
        return await self._addEntry(name)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener.folderChanged(self)

    def addListener(self, listener: IFolderListener) -> None:
        self._listeners.append(listener)

    def removeListener(self, listener: IFolderListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- messages ----------------------------------------------------------------

    def uids(self) -> list[int]:
        return sorted(self._byUid)

    def has(self, uid: int) -> bool:
        return uid in self._byUid

    def filename(self, uid: int) -> str:
        return os.path.join(self.path, self._byUid[uid].filename)

    def size(self, uid: int) -> int:
        return self._byUid[uid].size

    def mtime(self, uid: int) -> float:
        return self._byUid[uid].mtime

    def letters(self, uid: int) -> str:
        return self._byUid[uid].letters

    def isNew(self, uid: int) -> bool:
        return self._byUid[uid].sub == "new" or uid in self._unclaimed

    def read(self, uids: Iterable[int]) -> Deferred[dict[int, bytes]]:
        wanted = [(uid, self._byUid[uid].filename) for uid in uids if uid in self._byUid]

        def readAll() -> dict[int, bytes]:
            out = {}
            for uid, name in wanted:
                found = readMessageFile(self.path, name)
                if found is not None:
                    out[uid] = found[0]
            return out

        return self._run(readAll)

    def setFlags(self, uids: Iterable[int], add: str = "", remove: str = "") -> Deferred[dict[int, str]]:
        return self._lock.run(self._setFlags, list(uids), add, remove)

    async def _setFlags(self, uids: list[int], add: str, remove: str) -> dict[int, str]:
        done: dict[int, str] = {}
        moves: list[tuple[int, str, str, str]] = []
        for uid in uids:
            entry = self._byUid.get(uid)
            if entry is None:
                continue
            letters = "".join(sorted((set(entry.letters) - set(remove)) | set(add)))
            if entry.sub == "cur" and entry.letters == letters:
                done[uid] = letters
                continue
            moves.append((uid, entry.filename, f"cur/{entry.base}:2,{letters}", letters))
        if not moves:
            return done
        await self._recordModseqs(
            uid for uid, _, _, letters in moves if self._byUid[uid].letters != letters
        )
        renamed = await self._run(_renameAll, self.path, [(old, new) for _, old, new, _ in moves])
        missing = False
        for (uid, _, _, letters), ok in zip(moves, renamed):
            entry = self._byUid.get(uid)
            if ok and entry is not None:
                entry.sub, entry.letters = "cur", letters
                done[uid] = letters
            else:
                missing = True
        if missing:
            await self._refresh()
        else:
            self._notify()
        return done

    def claimNew(self) -> Deferred[set[int]]:
        return self._lock.run(self._claimNew)

    async def _claimNew(self) -> set[int]:
        new = [e.uid for e in self._entries.values() if e.sub == "new"]
        claimed = set(await self._setFlags(new, "", "")) if new else set()
        claimed |= {uid for uid in self._unclaimed if uid in self._byUid}
        self._unclaimed.clear()
        return claimed

    def remove(self, uids: Iterable[int]) -> Deferred[list[int]]:
        return self._lock.run(self._remove, list(uids))

    async def _remove(self, uids: list[int]) -> list[int]:
        doomed = [(uid, self._byUid[uid].filename) for uid in uids if uid in self._byUid]
        if not doomed:
            return []
        await self._run(_unlinkAll, self.path, [name for _, name in doomed])
        removed = []
        for uid, _ in doomed:
            entry = self._byUid.pop(uid, None)
            self._unclaimed.discard(uid)
            self._modseqs.pop(uid, None)
            if entry is not None:
                del self._entries[entry.base]
                self._stale += 1
                removed.append(uid)
        if removed:
            # RFC 7162 3.2: an expunge raises HIGHESTMODSEQ.
            self._nextModseq()
            self._notify()
        return removed


# -- the store --------------------------------------------------------------------


@implementer(IMailStore)
class MaildirStore:
    """
    Every user's mailboxes under one root directory.
    """

    def __init__(
        self,
        root: str,
        hasUser: Callable[[str], bool],
        reactor: Any = None,
        maxMessageSize: int | None = None,
        threadPool: Any = None,
        fsync: Fsync = os.fsync,
        tmpMaxAge: float = TMP_MAX_AGE,
    ) -> None:
        """
        @param hasUser: a callable telling whether a user name is an account.
        @param maxMessageSize: the largest message APPEND may store.
        @param threadPool: where the disk work runs; by default the store's
            own pool, started on first use and stopped by L{close} (or at
            reactor shutdown).
        @param fsync: how message files and UID lists are made durable.
        @param tmpMaxAge: seconds after which a file left in a Maildir's
            C{tmp/} (an interrupted delivery) is removed, by L{start} and
            when the store first opens that Maildir.
        """
        self.maxMessageSize = maxMessageSize
        if reactor is None:
            from twisted.internet import reactor
        self.root = os.path.abspath(root)
        self._hasUser = hasUser
        self._reactor = reactor
        self._pool = threadPool
        self._ownPool = threadPool is None
        self._closed = False
        self._shutdownTrigger: Any = None
        self._fsync = fsync
        self._folders: dict[str, Folder] = {}
        self._userLocks: dict[str, DeferredLock] = {}
        self.tmpMaxAge = tmpMaxAge
        self._swept: set[str] = set()
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def start(self) -> Deferred[list[str]]:
        """
        Remove stale C{tmp/} files from every Maildir under the root, in
        the store's pool.

        @return: a L{Deferred} firing with the paths removed.
        """

        def sweepAll() -> list[str]:
            removed = []
            for maildir in self._allMaildirs():
                self._swept.add(maildir)
                removed += [os.path.join(maildir, "tmp", n) for n in removeStaleTmp(maildir, self.tmpMaxAge)]
            return removed

        d = self.run(sweepAll)
        d.addCallback(self._sweptLog)
        return d

    def _allMaildirs(self) -> list[str]:
        found = []
        with os.scandir(self.root) as users:
            for user in users:
                if not user.is_dir(follow_symlinks=False):
                    continue
                found.append(user.path)
                with os.scandir(user.path) as folders:
                    found += [
                        f.path for f in folders
                        if f.name.startswith(".") and f.is_dir(follow_symlinks=False)
                    ]
        return found

    def _sweep(self, maildir: str) -> None:
        """
        Remove stale C{tmp/} files of C{maildir} the first time the store
        opens it, in the pool; a failure is logged, never the caller's.
        """
        if maildir in self._swept:
            return
        self._swept.add(maildir)
        d = self.run(lambda: [os.path.join(maildir, "tmp", n) for n in removeStaleTmp(maildir, self.tmpMaxAge)])
        d.addCallback(self._sweptLog)
        d.addErrback(lambda f: _log.failure("could not clean {path}/tmp", f, path=maildir))

    @staticmethod
    def _sweptLog(removed: list[str]) -> list[str]:
        for path in removed:
            _log.info("removed {path}, left by an interrupted delivery", path=path)
        return removed

    # -- threads -------------------------------------------------------------------

    def threadPool(self) -> Any:
        """
        The store's threads: separate from the reactor's pool so that
        deliveries never wait behind other blocking work.
        """
        if self._pool is None:
            if self._closed:
                raise RuntimeError("the mail store is closed")
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(minthreads=1, maxthreads=16, name="maildir")
            self._pool.start()
            self._shutdownTrigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._pool.stop
            )
        return self._pool

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call blocking C{f} in the store's pool: a L{Deferred} of its result.
        """
        return deferToThreadPool(self._reactor, self.threadPool(), f, *args, **kwargs)

    def close(self) -> None:
        """
        Stop the store's own threads (work already queued finishes first).
        """
        self._closed = True
        if self._ownPool and self._pool is not None:
            pool, self._pool = self._pool, None
            self._reactor.removeSystemEventTrigger(self._shutdownTrigger)
            pool.stop()

    def _userLock(self, user: str) -> DeferredLock:
        lock = self._userLocks.get(user)
        if lock is None:
            lock = self._userLocks[user] = DeferredLock()
        return lock

    # -- names ---------------------------------------------------------------------

    def hasUser(self, name: str) -> bool:
        return self._userDirName(name) is not None and self._hasUser(name)

    @staticmethod
    def _userDirName(name: str) -> str | None:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            return None
        return name

    def maildir(self, user: str) -> str:
        dirname = self._userDirName(user)
        if dirname is None:
            raise ValueError(f"unusable user name {user!r}")
        return os.path.join(self.root, dirname)

    def folderPath(self, user: str, name: str) -> str:
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

    # -- folders -------------------------------------------------------------------

    def folder(self, user: str, name: str = INBOX) -> Folder:
        path = self.folderPath(user, name)
        folder = self._folders.get(path)
        if folder is None:
            self._sweep(path)
            folder = self._folders[path] = Folder(
                path, self.run, self._fsync, create=name.upper() == INBOX
            )
        return folder

    def openFolder(self, user: str, name: str = INBOX) -> Deferred[IFolder]:
        return Deferred.fromCoroutine(self._openFolder(user, name))

    async def _openFolder(self, user: str, name: str) -> IFolder:
        folder = self.folder(user, name)
        try:
            await folder.refresh()
        except NoSuchFolder:
            if self._folders.get(folder.path) is folder:
                del self._folders[folder.path]
            raise NoSuchFolder(name)
        return folder

    def listFolders(self, user: str) -> Deferred[list[str]]:
        top = self.maildir(user)

        def names() -> list[str]:
            found = []
            try:
                with os.scandir(top) as it:
                    for de in it:
                        if de.name.startswith(".") and de.name not in (".", "..") and de.is_dir():
                            try:
                                found.append(de.name[1:].encode("ascii").decode("imap4-utf-7"))
                            except UnicodeError:
                                continue
            except FileNotFoundError:
                pass
            return [INBOX] + sorted(found)

        return self.run(names)

    def createFolder(self, user: str, name: str) -> Deferred[None]:
        path = self.folderPath(user, name)
        top = self.maildir(user)

        def create() -> None:
            if os.path.isdir(path):
                raise FileExistsError(name)
            ensureMaildir(top)
            ensureMaildir(path)

        return self._userLock(user).run(self.run, create)

    def deleteFolder(self, user: str, name: str) -> Deferred[None]:
        path = self.folderPath(user, name)
        if name.upper() == INBOX:
            return fail(NoSuchFolder(name))

        def delete() -> None:
            if not os.path.isdir(path):
                raise NoSuchFolder(name)
            shutil.rmtree(path)

        def forget(_: None) -> None:
            self._folders.pop(path, None)

        return self._userLock(user).run(self.run, delete).addCallback(forget)

    def renameFolder(self, user: str, old: str, new: str) -> Deferred[None]:
        oldPath = self.folderPath(user, old)
        newPath = self.folderPath(user, new)
        top = self.maildir(user)

        def rename() -> list[str]:
            if old.upper() == INBOX or not os.path.isdir(oldPath):
                raise NoSuchFolder(old)
            if os.path.exists(newPath):
                raise FileExistsError(new)
            prefix = os.path.basename(oldPath) + DELIMITER
            newPrefix = os.path.basename(newPath) + DELIMITER
            moves = [(oldPath, newPath)]
            for entry in os.listdir(top):
                if entry.startswith(prefix):
                    moves.append(
                        (os.path.join(top, entry), os.path.join(top, newPrefix + entry[len(prefix) :]))
                    )
            for src, dst in moves:
                if os.path.exists(dst):
                    raise FileExistsError(dst)
            for src, dst in moves:
                os.rename(src, dst)
            fsyncDirectory(top)
            return [src for src, _ in moves]

        def forget(moved: list[str]) -> None:
            for src in moved:
                self._folders.pop(src, None)

        return self._userLock(user).run(self.run, rename).addCallback(forget)

    # -- subscriptions -----------------------------------------------------------

    def _readSubscriptions(self, user: str) -> list[str]:
        try:
            with open(os.path.join(self.maildir(user), SUBSCRIPTIONS), encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def _writeSubscriptions(self, user: str, names: list[str]) -> None:
        top = self.maildir(user)
        ensureMaildir(top)
        path = os.path.join(top, SUBSCRIPTIONS)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(n + "\n" for n in names)
        os.replace(path + ".tmp", path)

    def subscriptions(self, user: str) -> Deferred[list[str]]:
        return self._userLock(user).run(self.run, self._readSubscriptions, user)

    def subscribe(self, user: str, name: str) -> Deferred[None]:
        def add() -> None:
            names = self._readSubscriptions(user)
            if name not in names:
                self._writeSubscriptions(user, names + [name])

        return self._userLock(user).run(self.run, add)

    def unsubscribe(self, user: str, name: str) -> Deferred[None]:
        def drop() -> None:
            names = self._readSubscriptions(user)
            if name not in names:
                raise KeyError(name)
            self._writeSubscriptions(user, [n for n in names if n != name])

        return self._userLock(user).run(self.run, drop)

    # -- messages ----------------------------------------------------------------

    def openDelivery(self, user: str) -> Delivery:
        maildir = self.maildir(user)
        self._sweep(maildir)

        def delivered(name: str) -> str:
            folder = self._folders.get(maildir)
            if folder is not None:
                folder.noteDelivered(name).addErrback(
                    lambda f: _log.failure("could not give {name} a UID", f, name=name)
                )
            return name

        return Delivery(maildir, self.run, delivered, self._fsync)

    def append(
        self,
        folder: IFolder,
        message: bytes | IO[bytes],
        letters: str | None,
        mtime: float | None,
    ) -> Deferred[int]:
        limit = self.maxMessageSize

        def write() -> str:
            data = message if isinstance(message, bytes) else message.read()
            if limit is not None and len(data) > limit:
                raise MessageTooLarge(f"[TOOBIG] Messages are limited to {limit} octets")
            return writeMessageFile(folder.path, data, letters, mtime, self._fsync)

        return self.run(write).addCallback(folder.adopt)

    def copy(self, folder: IFolder, source: IFolder, uid: int, letters: str) -> Deferred[int]:
        name = os.path.relpath(source.filename(uid), source.path)

        def write() -> str:
            found = readMessageFile(source.path, name)
            if found is None:
                raise KeyError(uid)
            data, mtime = found
            return writeMessageFile(folder.path, data, letters, mtime, self._fsync)

        return self.run(write).addCallback(folder.adopt)
