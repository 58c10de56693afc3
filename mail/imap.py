"""
The IMAP4rev1 server: L{twisted.mail.imap4.IMAP4Server} over a Maildir
account, which Twisted does not have.

What is added here: the account and mailboxes (Maildir++ folders, flags in
file names, UIDs and UIDVALIDITY from the store), per-session sequence
numbers with EXPUNGE reported only where RFC 3501 allows (NOOP, CHECK,
IDLE), \\Recent, \\Seen set by non-PEEK fetches, partial fetches
(C{BODY[]<0.100>}), byte-exact sections, literal and line size limits, and
new mail pushed to selected (and idling) sessions as it is delivered.

Nothing here touches the disk: mailboxes and message contents come from
the store, whose threads do the work, so many commands finish later
(Twisted's server accepts L{Deferred}s from most mailbox methods; CREATE,
DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE are redone here to accept them)
and a session runs its commands one at a time.
"""

from __future__ import annotations

import email.utils
import io
import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from coursenet.accounts import PeerPortal
from coursenet.admission import Admission
from coursenet.transport import noDelay
from mail import _compat
from mail.interfaces import IFolder, IFolderListener, IMailStore
from mail.protocol import MailFactory, MailReceiver
from mail.maildir import (
    DELIMITER,
    INBOX,
    BadFolderName,
    MessageTooLarge,
    NoSuchFolder,
    flagsToLetters,
    lettersToFlags,
)

_log = Logger()

#: Longest command line, without its CRLF (RFC 7162 recommends accepting
#: at least 8192).
LINE_MAX = 65536
#: RFC 3501 9: a tag is ASTRING-CHARs but "+".
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]{1,64}')
_PERMANENT = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Forwarded"]


class _Part:
    """
    One MIME entity as bytes with CRLF line ends, sliced without
    re-encoding so that sections are byte-exact.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        if data.startswith(b"\r\n"):
            head, body = b"", data[2:]
        else:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                head, body = data + (b"" if data.endswith(b"\r\n") or not data else b"\r\n"), b""
            else:
                head, body = data[: end + 2], data[end + 4 :]
        self.rawHeader = head + b"\r\n"
        self.body = body
        self._items: list[tuple[str, str]] | None = None
        self._parts: list[_Part] | None = None

    def headerItems(self) -> list[tuple[str, str]]:
        if self._items is None:
            parsed = BytesHeaderParser(policy=compat32).parsebytes(self.rawHeader)
            self._items = [(k, str(v)) for k, v in parsed.items()]
        return self._items

    def headerLines(self, names: list[bytes | str], negate: bool) -> bytes:
        """
        The raw header fields named (or, with C{negate}, not named), then
        the blank line.
        """
        wanted = {n.decode() if isinstance(n, bytes) else n for n in names}
        wanted = {n.lower() for n in wanted}
        out, keep = [], False
        for line in self.rawHeader.split(b"\r\n")[:-2]:
            if line[:1] not in (b" ", b"\t"):
                name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
                keep = (name in wanted) != negate
            if keep:
                out.append(line + b"\r\n")
        return b"".join(out) + b"\r\n"

    # IMessagePart, for Twisted's BODYSTRUCTURE and ENVELOPE code.

    def getHeaders(self, negate: bool, *names: bytes | str) -> dict[str, str]:
        wanted = {(n.decode() if isinstance(n, bytes) else n).lower() for n in names}
        headers = {
            k.lower(): v for k, v in self.headerItems() if (k.lower() in wanted) != negate
        }
        if not negate and "content-type" in wanted and "content-type" not in headers:
            # RFC 2045 5.2: the default, so BODYSTRUCTURE says text/plain.
            headers["content-type"] = "text/plain; charset=us-ascii"
        return headers

    def getBodyFile(self) -> io.BytesIO:
        return io.BytesIO(self.body)

    def getSize(self) -> int:
        return len(self.data)

    def _contentType(self) -> str:
        for k, v in self.headerItems():
            if k.lower() == "content-type":
                return v
        return ""

    def isMultipart(self) -> bool:
        return self._contentType().strip().lower().startswith("multipart/") and bool(
            self.subParts()
        )

    def isMessage(self) -> bool:
        return self._contentType().strip().lower().startswith("message/rfc822")

    def subParts(self) -> list["_Part"]:
        if self._parts is None:
            self._parts = []
            parsed = BytesHeaderParser(policy=compat32).parsebytes(self.rawHeader)
            boundary = parsed.get_param("boundary")
            if isinstance(boundary, str) and boundary:
                self._parts = [_Part(p) for p in _splitMultipart(self.body, boundary.encode("utf-8", "replace"))]
        return self._parts

    def getSubPart(self, part: int) -> "_Part":
        return self.subParts()[part]


def _splitMultipart(body: bytes, boundary: bytes) -> list[bytes]:
    """
    The body parts of a multipart body (RFC 2046 5.1.1), preamble and
    epilogue left out.
    """
    text = b"\r\n" + body
    delimiter = b"\r\n--" + boundary
    parts = []
    pos = text.find(delimiter)
    while pos >= 0:
        after = pos + len(delimiter)
        if text.startswith(b"--", after):
            break
        eol = text.find(b"\r\n", after)
        if eol < 0 or text[after:eol].strip(b" \t"):
            pos = text.find(delimiter, after)
            continue
        nxt = text.find(delimiter, eol)
        parts.append(text[eol + 2 : nxt if nxt >= 0 else len(text)])
        pos = nxt
    return parts


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@implementer(imap4.IMessage, imap4.IMessageFile)
class MaildirMessage:
    """
    A message of a folder: UID, flags, size and date from memory; its
    contents read in the store's pool by L{load} before FETCH or SEARCH
    looks at them.
    """

    def __init__(
        self, uid: int, flags: list[str], folder: IFolder | None, size: int, mtime: float = 0
    ) -> None:
        """
        @param folder: the folder it is in, or L{None} for a message that
            was removed (it reads as empty).
        """
        self.uid = uid
        self.flags = flags
        self.folder = folder
        self.size = size
        self.mtime = mtime
        self._part: _Part | None = None
        self.readAhead: _ReadAhead | None = None

    @property
    def loaded(self) -> bool:
        return self._part is not None or self.folder is None

    def setData(self, data: bytes) -> None:
        self._part = _Part(_crlf(data))

    def unload(self) -> None:
        """
        Forget the contents (FETCH has sent them), keeping memory flat.
        """
        self._part = None

    def load(self) -> Deferred[None]:
        """
        Read the contents in the store's pool, with the next messages of
        the same FETCH.
        """
        if self.loaded:
            return succeed(None)
        if self.readAhead is not None:
            return self.readAhead.load(self)
        assert self.folder is not None
        uid = self.uid
        return self.folder.read([uid]).addCallback(lambda found: self.setData(found.get(uid, b"")))

    @property
    def part(self) -> _Part:
        if self._part is None:
            if self.folder is None:
                return _Part(b"")
            # Every caller here loads first; reading on the reactor thread
            # is a fallback for a path that did not.
            _log.warn("message {uid} read on the reactor thread", uid=self.uid)
            try:
                with open(self.folder.filename(self.uid), "rb") as f:
                    self.setData(f.read())
            except (KeyError, FileNotFoundError):
                self.setData(b"")
            assert self._part is not None
        return self._part

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.part.data)

    def getUID(self) -> int:
        return self.uid

    def getFlags(self) -> list[str]:
        return self.flags

    def getInternalDate(self) -> str:
        return email.utils.formatdate(self.mtime)

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        return self.part.getHeaders(negate, *names)

    def getBodyFile(self) -> io.BytesIO:
        return self.part.getBodyFile()

    def getSize(self) -> int:
        return self.size if self._part is None else len(self._part.data)

    def isMultipart(self) -> bool:
        return self.part.isMultipart()

    def getSubPart(self, part: int) -> _Part:
        return self.part.getSubPart(part)


class _ReadAhead:
    """
    The messages of one FETCH, read in the store's pool a window at a time:
    one trip to a thread for many small messages, and no more than
    L{BUDGET} octets of them held at once (beyond the one being sent).
    """

    COUNT = 64
    BUDGET = 4 * 1024 * 1024

    def __init__(self, folder: IFolder, messages: list[MaildirMessage]) -> None:
        self.folder = folder
        self.messages = messages
        self._index = {id(m): n for n, m in enumerate(messages)}
        for m in messages:
            m.readAhead = self

    def load(self, message: MaildirMessage) -> Deferred[None]:
        window: list[MaildirMessage] = []
        total = 0
        start = self._index[id(message)]
        for m in self.messages[start : start + self.COUNT]:
            if m.loaded:
                continue
            if window and total + m.size > self.BUDGET:
                break
            window.append(m)
            total += m.size

        def loaded(found: dict[int, bytes]) -> None:
            for m in window:
                m.setData(found.get(m.uid, b""))

        return self.folder.read([m.uid for m in window]).addCallback(loaded)


def _loadAll(folder: IFolder, messages: list[MaildirMessage]) -> Deferred[None]:
    wanted = [m for m in messages if not m.loaded]

    def loaded(found: dict[int, bytes]) -> None:
        for m in wanted:
            m.setData(found.get(m.uid, b""))

    return folder.read([m.uid for m in wanted]).addCallback(loaded)


@implementer(imap4.IMailbox, imap4.IMessageCopier, imap4.ICloseableMailbox, IFolderListener)
class MaildirMailbox:
    """
    One session's view of a folder: its own sequence numbers, which change
    only when this session is told (EXISTS as mail arrives, EXPUNGE at
    NOOP, CHECK and IDLE or after its own EXPUNGE).
    """

    def __init__(
        self, store: IMailStore, folder: IFolder, readWrite: bool, recent: set[int]
    ) -> None:
        self._store = store
        self.folder = folder
        self.readWrite = readWrite
        self.recent = recent
        self.uids = folder.uids()
        self._gone: set[int] = set()
        self._claiming: set[int] = set()
        # Batches of new UIDs waiting for their claim, oldest first: each
        # is [uids, what the claim gave, or None while it runs].
        self._batches: list[list[Any]] = []
        self.listeners: list[Any] = []
        #: Set while SEARCH asks for messages whose contents it will read.
        self.searchingContents = False

    @classmethod
    def open(cls, store: IMailStore, folder: IFolder, readWrite: bool) -> Deferred["MaildirMailbox"]:
        """
        A view of C{folder}, which a read-write one claims the new mail of.
        """
        if readWrite:
            d = folder.claimNew()
        else:
            d = succeed({uid for uid in folder.uids() if folder.isNew(uid)})
        return d.addCallback(lambda recent: cls(store, folder, readWrite, recent))

    # -- keeping up with the folder ---------------------------------------

    def folderChanged(self, folder: IFolder) -> None:
        present = set(folder.uids())
        known = set(self.uids)
        added = sorted(present - known - self._gone - self._claiming)
        removed = (known - present) - self._gone
        if added:
            if self.readWrite:
                # New mail is \Recent here if this session claims it first;
                # EXISTS and RECENT are announced once that is known.  Every
                # batch waits its turn, so sequence numbers follow UIDs.
                batch: list[Any] = [added, None]
                self._batches.append(batch)
                self._claiming.update(added)
                folder.claimNew().addBoth(self._claimed, batch)
            else:
                self._add(added)
        if removed:
            self._gone |= removed
            for listener in list(self.listeners):
                notify = getattr(listener, "expungesPending", None)
                if notify is not None:
                    notify()

    def _claimed(self, result: set[int] | Failure, batch: list[Any]) -> None:
        # Claims can finish out of order (a lock is released before the
        # callbacks of what it ran): announce the batches in order.
        batch[1] = result
        while self._batches and self._batches[0][1] is not None:
            added, claimed = self._batches.pop(0)
            self._claiming.difference_update(added)
            if isinstance(claimed, Failure):
                _log.failure("could not claim new messages", claimed)
            else:
                self.recent |= claimed
            self._add(added)

    def _add(self, added: list[int]) -> None:
        self.uids.extend(added)
        for listener in list(self.listeners):
            listener.newMessages(len(self.uids), self.getRecentCount())

    def takeExpunged(self) -> list[int]:
        """
        Forget messages other sessions removed; their sequence numbers,
        highest first (so each stays valid as it is reported).
        """
        if not self._gone:
            return []
        gone = self._gone
        seqs = [n + 1 for n, uid in enumerate(self.uids) if uid in gone]
        self.uids = [uid for uid in self.uids if uid not in gone]
        self._gone = set()
        return sorted(seqs, reverse=True)

    def addListener(self, listener: Any) -> None:
        if not self.listeners:
            self.folder.addListener(self)
        self.listeners.append(listener)

    def removeListener(self, listener: Any) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners:
            self.folder.removeListener(self)

    def close(self) -> None:
        self.listeners = []
        self.folder.removeListener(self)

    # -- IMailboxInfo / IMailbox --------------------------------------------

    def getFlags(self) -> list[str]:
        return list(_PERMANENT)

    def getHierarchicalDelimiter(self) -> str:
        return DELIMITER

    def getUIDValidity(self) -> int:
        return self.folder.uidValidity

    def getUIDNext(self) -> int:
        return self.folder.uidNext

    def getUID(self, message: int) -> int:
        return self.uids[message - 1]

    def getMessageCount(self) -> int:
        return len(self.uids)

    def getRecentCount(self) -> int:
        return len(self.recent & set(self.uids))

    def getUnseenCount(self) -> int:
        return sum(
            1
            for uid in self.uids
            if self.folder.has(uid) and "S" not in self.folder.letters(uid)
        )

    def isWriteable(self) -> bool:
        return self.readWrite

    def destroy(self) -> None:
        raise imap4.MailboxException("Use DELETE to remove a mailbox")

    def requestStatus(self, names: list[bytes]) -> dict[bytes, int]:
        return imap4.statusRequestHelper(self, names)

    def _flags(self, uid: int) -> list[str]:
        flags = lettersToFlags(self.folder.letters(uid)) if self.folder.has(uid) else []
        if uid in self.recent:
            flags.append("\\Recent")
        return flags

    def _message(self, uid: int) -> MaildirMessage:
        folder = self.folder
        if not folder.has(uid):
            return MaildirMessage(uid, [], None, 0)
        return MaildirMessage(uid, self._flags(uid), folder, folder.size(uid), folder.mtime(uid))

    def _select(self, messages: imap4.MessageSet, uid: int) -> list[tuple[int, int]]:
        """
        The C{(sequence number, UID)} pairs a message set names, without
        walking ranges such as C{1:4294967295} one number at a time.
        """
        if not self.uids:
            return []
        try:
            messages.last = self.uids[-1] if uid else len(self.uids)
        except ValueError:
            pass  # already set by an earlier call for the same command
        if uid:
            return [(n + 1, u) for n, u in enumerate(self.uids) if u in messages]
        return [(n + 1, u) for n, u in enumerate(self.uids) if n + 1 in messages]

    def fetch(self, messages: imap4.MessageSet, uid: int) -> Any:
        found = [(seq, self._message(u)) for seq, u in self._select(messages, uid)]
        loaded = [m for _, m in found]
        if self.searchingContents:
            return _loadAll(self.folder, loaded).addCallback(lambda _: found)
        _ReadAhead(self.folder, loaded)
        return found

    def _flagChange(self, flags: list[str], mode: int) -> tuple[str, str]:
        try:
            letters = flagsToLetters(f for f in flags if f.lower() != "\\recent")
        except ValueError as e:
            raise imap4.MailboxException(f"{e}: only {' '.join(_PERMANENT)} are kept")
        if mode == 1:
            return letters, ""
        if mode == -1:
            return "", letters
        return letters, "DFPRST"

    def store(
        self, messages: imap4.MessageSet, flags: list[str], mode: int, uid: int
    ) -> Deferred[dict[int, list[str]]]:
        if not self.readWrite:
            raise imap4.ReadOnlyMailbox("The mailbox is read-only (EXAMINE)")
        add, remove = self._flagChange(flags, mode)
        seqs = {u: seq for seq, u in self._select(messages, uid)}

        def stored(done: dict[int, str]) -> dict[int, list[str]]:
            return {seqs[u]: self._flags(u) for u in done}

        return self.folder.setFlags(seqs, add, remove).addCallback(stored)

    def markSeen(self, messages: imap4.MessageSet, uid: int) -> Deferred[Any]:
        """
        Set \\Seen on the messages named (a body FETCH without PEEK).
        """
        unseen = [
            u
            for _, u in self._select(messages, uid)
            if self.folder.has(u) and "S" not in self.folder.letters(u)
        ]
        if not unseen:
            return succeed({})
        return self.folder.setFlags(unseen, "S")

    def expunge(self) -> Deferred[list[int]]:
        if not self.readWrite:
            raise imap4.ReadOnlyMailbox("The mailbox is read-only (EXAMINE)")
        doomed = {u for u in self.uids if self.folder.has(u) and "T" in self.folder.letters(u)}
        seqs = [n + 1 for n, u in enumerate(self.uids) if u in doomed]
        # Out of this session's numbering at once, so that the folder's
        # notice of the removal is not taken for another session's.
        self.uids = [u for u in self.uids if u not in doomed]
        return self.folder.remove(sorted(doomed)).addCallback(lambda _: sorted(seqs, reverse=True))

    def addMessage(self, message: Any, flags: Any = (), date: Any = None) -> Deferred[int]:
        try:
            letters = flagsToLetters(f for f in flags if f.lower() != "\\recent")
        except ValueError as e:
            return fail(imap4.MailboxException(f"{e}: only {' '.join(_PERMANENT)} are kept"))
        mtime = None
        if date:
            parsed = email.utils.parsedate_tz(date if isinstance(date, str) else date.decode())
            if parsed is not None:
                mtime = email.utils.mktime_tz(parsed)

        return Deferred.fromCoroutine(self._append(message, letters, mtime))

    async def _append(self, message: Any, letters: str, mtime: float | None) -> int:
        try:
            return await self._store.append(self.folder, message, letters, mtime)
        except MessageTooLarge as e:
            raise imap4.MailboxException(str(e))

    def copy(self, message: MaildirMessage) -> Deferred[int]:
        if message.folder is None:
            return fail(imap4.MailboxException(f"message {message.uid} was removed"))
        letters = flagsToLetters(f for f in message.getFlags() if f != "\\Recent")
        return self._store.copy(self.folder, message.folder, message.uid, letters)


class _ListEntry:
    """
    What LIST says about a mailbox: attributes and delimiter.
    """

    def __init__(self, attributes: list[str]) -> None:
        self._attributes = attributes

    def getFlags(self) -> list[str]:
        return self._attributes

    def getHierarchicalDelimiter(self) -> str:
        return DELIMITER


@implementer(imap4.IAccount, imap4.INamespacePresenter)
class MaildirAccount:
    """
    One user's mailboxes: INBOX and Maildir++ folders, C{.} separating
    levels.
    """

    def __init__(self, store: IMailStore, user: str) -> None:
        self.store = store
        self.user = user
        # Read with LIST/LSUB, for isSubscribed, which must answer at once.
        self._subscribed: set[str] = set()

    def _path(self, name: str) -> str:
        try:
            return self.store.folderPath(self.user, name)
        except BadFolderName as e:
            raise imap4.MailboxException(str(e))

    def addMailbox(self, name: str, mbox: Any = None) -> Deferred[bool]:
        return self.create(name)

    def create(self, pathspec: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._create(pathspec))

    async def _create(self, pathspec: str) -> bool:
        name = pathspec.rstrip(DELIMITER)
        self._path(name)
        if name.upper() == INBOX:
            return False
        levels = name.split(DELIMITER)
        for n in range(1, len(levels) + 1):
            try:
                await self.store.createFolder(self.user, DELIMITER.join(levels[:n]))
            except FileExistsError:
                if n == len(levels):
                    raise imap4.MailboxCollision(name)
        return True

    def select(self, name: str, rw: bool = True) -> Deferred[MaildirMailbox | None]:
        self._path(name)
        return Deferred.fromCoroutine(self._select(name, bool(rw)))

    async def _select(self, name: str, rw: bool) -> MaildirMailbox | None:
        try:
            folder = await self.store.openFolder(self.user, name)
        except NoSuchFolder:
            return None
        return await MaildirMailbox.open(self.store, folder, rw)

    def delete(self, name: str) -> Deferred[None]:
        self._path(name)

        def missing(failure: Failure) -> None:
            failure.trap(NoSuchFolder)
            raise imap4.MailboxException("No such mailbox")

        return self.store.deleteFolder(self.user, name).addErrback(missing)

    def rename(self, oldname: str, newname: str) -> Deferred[None]:
        self._path(oldname)
        self._path(newname)

        def refused(failure: Failure) -> None:
            if failure.check(NoSuchFolder):
                raise imap4.NoSuchMailbox(oldname)
            failure.trap(FileExistsError)
            raise imap4.MailboxCollision(newname)

        return self.store.renameFolder(self.user, oldname, newname).addErrback(refused)

    def _canonical(self, name: str) -> str:
        return INBOX if name.upper() == INBOX else name

    def isSubscribed(self, name: str) -> bool:
        return self._canonical(name) in self._subscribed

    def subscribe(self, name: str) -> Deferred[None]:
        name = self._canonical(name)

        def done(_: None) -> None:
            self._subscribed.add(name)

        return self.store.subscribe(self.user, name).addCallback(done)

    def unsubscribe(self, name: str) -> Deferred[None]:
        name = self._canonical(name)

        def done(_: None) -> None:
            self._subscribed.discard(name)

        def missing(failure: Failure) -> None:
            failure.trap(KeyError)
            raise imap4.MailboxException(f"Not subscribed to {name}")

        return self.store.unsubscribe(self.user, name).addCallbacks(done, missing)

    def listMailboxes(self, ref: str, wildcard: str) -> Deferred[list[tuple[str, _ListEntry]]]:
        return Deferred.fromCoroutine(self._listMailboxes(ref, wildcard))

    async def _listMailboxes(self, ref: str, wildcard: str) -> list[tuple[str, _ListEntry]]:
        if not wildcard:
            return [("", _ListEntry(["\\Noselect"]))]
        pattern = imap4.wildcardToRegexp(ref + wildcard, DELIMITER)
        names = await self.store.listFolders(self.user)
        self._subscribed = set(await self.store.subscriptions(self.user))
        result = []
        for name in names:
            if pattern.fullmatch(name) or (name == INBOX and pattern.fullmatch("inbox")):
                children = any(n.startswith(name + DELIMITER) for n in names)
                attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
                result.append((name, _ListEntry(attributes)))
        return result

    def getPersonalNamespaces(self) -> list[list[bytes]]:
        return [[b"", DELIMITER.encode()]]

    def getSharedNamespaces(self) -> None:
        return None

    def getOtherNamespaces(self) -> None:
        return None

    def getUserNamespaces(self) -> None:
        return None


def _needsSeen(query: list[Any]) -> bool:
    for part in query:
        if part.type in ("rfc822", "rfc822text"):
            return True
        if part.type == "body" and not part.peek and (
            part.header or part.text or part.mime or part.empty
        ):
            return True
    return False


#: FETCH items that read a message's contents.
_CONTENT_ITEMS = frozenset(["envelope", "rfc822header", "rfc822text", "rfc822", "body", "bodystructure"])
#: SEARCH keys that read a message's contents.
_CONTENT_KEYS = frozenset(
    ["BCC", "BODY", "CC", "FROM", "HEADER", "SENTBEFORE", "SENTON", "SENTSINCE", "SUBJECT", "TEXT", "TO"]
)


def _needsContents(query: list[Any]) -> bool:
    return any(part.type in _CONTENT_ITEMS for part in query)


def _searchNeedsContents(query: Any) -> bool:
    if isinstance(query, (list, tuple)):
        return any(_searchNeedsContents(q) for q in query)
    if isinstance(query, bytes):
        query = query.decode("ascii", "replace")
    return isinstance(query, str) and query.upper() in _CONTENT_KEYS


def _command(handler: Any, *parsers: Any) -> Any:
    """
    An entry of Twisted's command table: the handler, then what parses its
    arguments.
    """
    return (handler, *parsers)


def _mailboxName(name: bytes | str) -> str:
    """
    A mailbox name from the wire (modified UTF-7, RFC 3501 5.1.3).
    """
    if isinstance(name, str):
        return name
    try:
        return name.decode("imap4-utf-7")
    except UnicodeError:
        raise imap4.IllegalMailboxEncoding(name)


# CommandReceiver's read-only "paused" over LineReceiver's attribute: only
# LineReceiver's own methods, which CommandReceiver replaces, set it.
class IMAPServer(MailReceiver, imap4.IMAP4Server):
    """
    One IMAP session.

    Commands run one at a time (RFC 3501 5.5): the line that starts a
    command answered later returns a L{Deferred} that fires once its tagged
    reply has gone, and the receiver holds the lines after it until then,
    so a pipelined SELECT and FETCH are answered in order.  The lines a
    command reads itself (the rest of a line after a literal, an
    AUTHENTICATE response, IDLE's DONE) are not held.  Untagged news
    (EXISTS, EXPUNGE) that comes while a command runs waits for its tagged
    reply, except during IDLE.
    """

    IDENT = b"coursenet IMAP4rev1 server ready"
    maxLineLength = LINE_MAX
    _log = Logger()
    transport: Any
    portal: Any
    challengers: Any
    blocked: Any

    #: The tag of the command running, until its tagged reply.
    _running: bytes | None = None
    #: What the receiver waits on while the command runs, if it asked.
    _done: Deferred[None] | None = None

    def __init__(
        self, contextFactory: Any = None, maxMessageSize: int | None = None, clock: Any = None
    ) -> None:
        """
        @param clock: the reactor that schedules work for this session;
            Twisted's global one by default.
        """
        self._clock = clock
        scheduler = None
        if clock is not None:
            cooperator = task.Cooperator(scheduler=lambda f: clock.callLater(0, f))
            scheduler = lambda steps: cooperator.cooperate(steps).whenDone()  # noqa: E731
        imap4.IMAP4Server.__init__(self, None, contextFactory, scheduler)
        self.maxMessageSize = maxMessageSize
        self._news: list[bytes] = []

    @staticmethod
    def busyReply(text: str) -> bytes:
        return b"* BYE " + text.encode("utf-8", "replace") + b"\r\n"

    def _selected(self) -> MaildirMailbox:
        assert isinstance(self.mbox, MaildirMailbox)
        return self.mbox

    def _account(self) -> MaildirAccount:
        assert isinstance(self.account, MaildirAccount)
        return self.account

    def connectionMade(self) -> None:
        noDelay(self.transport)
        if ISSLTransport.providedBy(self.transport) or self.ctx is None:
            self.challengers = {b"PLAIN": imap4.PLAINCredentials, b"LOGIN": imap4.LOGINCredentials}
        imap4.IMAP4Server.connectionMade(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.mbox is not None:
            mbox = self._selected()
            mbox.removeListener(self)
            mbox.close()
            self.mbox = None
        super().connectionLost(reason)

    # -- lines -------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> Deferred[None] | None:
        # Twisted's, without its own holding of lines (FETCH's): the
        # receiver holds them, on the Deferred returned here.
        self.resetTimeout()
        parse = getattr(self, "parse_" + self.parseState)
        try:
            parse(line)
        except Exception as e:
            self._log.failure("could not handle an IMAP line")
            self.sendBadResponse(self._running, b"Server error: " + str(e).encode("utf-8", "replace"))
        if self._running is None or self.parseState != "command":
            return None
        if self._done is None:
            self._done = Deferred()
        return self._done

    def rawDataReceived(self, data: bytes) -> None:
        imap4.IMAP4Server.rawDataReceived(self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        text = b"[TOOBIG] Line too long: lines are limited to %d octets" % (LINE_MAX,)
        if self.parseState == "idle":
            self.parse_idle(line)
        elif self.parseState == "pending":
            # The rest of a command's line, or its AUTHENTICATE response:
            # the command fails with it (tagged), the session goes on.
            self.parseState = "command"
            _compat.imapAbandonPending(self, imap4.IllegalClientResponse(text.decode()))
        else:
            tag = line.split(b" ", 1)[0]
            self.sendBadResponse(tag if _TAG.fullmatch(tag) else None, text)

    def _fileLiteral(self, size: int) -> Deferred[Any]:
        if self.maxMessageSize is not None and size > self.maxMessageSize:
            raise imap4.IllegalClientResponse(
                f"[TOOBIG] Literal of {size} octets exceeds the maximum message"
                f" size of {self.maxMessageSize} octets"
            )
        return _compat.fileLiteral(self, size)

    # -- one command at a time -------------------------------------------------

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes | None, uid: Any = None) -> None:
        self._running = tag
        imap4.IMAP4Server.dispatchCommand(self, tag, cmd, rest, uid)

    def sendPositiveResponse(self, tag: bytes | None = None, message: Any = b"") -> None:
        self._sendNews(tag)
        imap4.IMAP4Server.sendPositiveResponse(self, tag, message)
        self._finished(tag)

    def sendNegativeResponse(self, tag: bytes | None = None, message: Any = b"") -> None:
        self._sendNews(tag)
        imap4.IMAP4Server.sendNegativeResponse(self, tag, message)
        self._finished(tag)

    def sendBadResponse(self, tag: bytes | None = None, message: Any = b"") -> None:
        self._sendNews(tag)
        imap4.IMAP4Server.sendBadResponse(self, tag, message)
        self._finished(tag)

    def sendUntaggedResponse(self, message: bytes, isAsync: bool | None = None) -> None:
        if isAsync and self._running is not None and self.parseState != "idle":
            self._news.append(message)
        else:
            imap4.IMAP4Server.sendUntaggedResponse(self, message, isAsync)

    def _sendNews(self, tag: bytes | None) -> None:
        """
        Before a tagged reply: the untagged news that came meanwhile.
        """
        if tag is None:
            return
        news, self._news = self._news, []
        for message in news:
            imap4.IMAP4Server.sendUntaggedResponse(self, message)

    def _finished(self, tag: bytes | None) -> None:
        if tag is None or tag != self._running:
            return
        self._running = None
        done, self._done = self._done, None
        if done is not None:
            # Not from inside the reply: the code that sent it may still
            # be changing the session's state (Twisted's LOGIN and SELECT
            # do, after their OK).
            self.callLater(0, lambda: done.callback(None))

    def _answer(self, tag: bytes, command: bytes, ok: bytes, call: Any, *args: Any) -> None:
        """
        Call C{call}, which may finish later, and answer C{tag} with C{ok}
        or with what went wrong.
        """
        maybeDeferred(call, *args).addCallbacks(
            lambda _: self.sendPositiveResponse(tag, ok), self._failed, errbackArgs=(tag, command)
        )

    def _failed(self, failure: Failure, tag: bytes, command: bytes) -> None:
        if failure.check(imap4.MailboxException):
            self.sendNegativeResponse(tag, str(failure.value).encode("utf-8", "replace"))
            return
        self._log.failure("{command} failed", failure, command=command.decode())
        self.sendBadResponse(tag, command + b" failed: server error, try again later")

    # -- TLS -----------------------------------------------------------------------

    def do_STARTTLS(self, tag: bytes) -> None:
        starting = not self.startedTLS
        imap4.IMAP4Server.do_STARTTLS(self, tag)
        if starting and self.startedTLS:
            # What the client sent after STARTTLS, before TLS, is thrown
            # away, never run as if it came over TLS (CVE-2011-0411).
            self.clearLineBuffer()

    unauth_STARTTLS = _command(do_STARTTLS)

    # -- changes made by others ----------------------------------------------

    def _refresh(self) -> Deferred[None]:
        if self.mbox is None:
            return succeed(None)
        mbox = self._selected()

        def report(_: bool) -> None:
            for seq in mbox.takeExpunged():
                self.sendUntaggedResponse(b"%d EXPUNGE" % (seq,), isAsync=True)

        return mbox.folder.refresh().addCallback(report)

    def expungesPending(self) -> None:
        if self.parseState == "idle" and self.mbox is not None:
            for seq in self._selected().takeExpunged():
                self.sendUntaggedResponse(b"%d EXPUNGE" % (seq,))

    def do_NOOP(self, tag: bytes) -> None:
        self._refresh().addCallbacks(
            lambda _: imap4.IMAP4Server.do_NOOP(self, tag),
            self._failed,
            errbackArgs=(tag, b"NOOP"),
        )

    select_NOOP = _command(do_NOOP)

    def checkpoint(self) -> Deferred[None]:
        return self._refresh()

    def do_IDLE(self, tag: bytes) -> None:
        imap4.IMAP4Server.do_IDLE(self, tag)
        self._refresh().addErrback(lambda f: self._log.failure("IDLE could not look for changes", f))

    select_IDLE = _command(do_IDLE)
    auth_IDLE = select_IDLE

    def parse_idle(self, *args: bytes) -> None:
        line = args[0] if args else b""
        if line.strip().upper() != b"DONE":
            self.parseState = self.lastState
            del self.lastState
            tag = self.parseTag
            del self.parseTag
            self.sendBadResponse(tag, b"Expected DONE to end IDLE")
            return
        imap4.IMAP4Server.parse_idle(self, *args)

    # -- mailboxes, whose changes finish later ---------------------------------

    def do_CREATE(self, tag: bytes, name: bytes) -> None:
        def created(result: bool) -> None:
            if result:
                self.sendPositiveResponse(tag, b"Mailbox created")
            else:
                self.sendNegativeResponse(tag, b"Mailbox not created")

        maybeDeferred(self._account().create, _mailboxName(name)).addCallbacks(
            created, self._failed, errbackArgs=(tag, b"CREATE")
        )

    auth_CREATE = _command(do_CREATE, imap4.IMAP4Server.arg_finalastring)
    select_CREATE = auth_CREATE

    def do_DELETE(self, tag: bytes, name: bytes) -> None:
        mailbox = _mailboxName(name)
        if mailbox.lower() == "inbox":
            self.sendNegativeResponse(tag, b"You cannot delete the inbox")
            return
        self._answer(tag, b"DELETE", b"Mailbox deleted", self._account().delete, mailbox)

    auth_DELETE = _command(do_DELETE, imap4.IMAP4Server.arg_finalastring)
    select_DELETE = auth_DELETE

    def do_RENAME(self, tag: bytes, oldname: bytes, newname: bytes) -> None:
        old, new = _mailboxName(oldname), _mailboxName(newname)
        if old.lower() == "inbox" or new.lower() == "inbox":
            self.sendNegativeResponse(
                tag, b"You cannot rename the inbox, or rename another mailbox to inbox."
            )
            return
        self._answer(tag, b"RENAME", b"Mailbox renamed", self._account().rename, old, new)

    auth_RENAME = _command(do_RENAME, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_finalastring)
    select_RENAME = auth_RENAME

    def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._answer(tag, b"SUBSCRIBE", b"Subscribed", self._account().subscribe, _mailboxName(name))

    auth_SUBSCRIBE = _command(do_SUBSCRIBE, imap4.IMAP4Server.arg_finalastring)
    select_SUBSCRIBE = auth_SUBSCRIBE

    def do_UNSUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._answer(
            tag, b"UNSUBSCRIBE", b"Unsubscribed", self._account().unsubscribe, _mailboxName(name)
        )

    auth_UNSUBSCRIBE = _command(do_UNSUBSCRIBE, imap4.IMAP4Server.arg_finalastring)
    select_UNSUBSCRIBE = auth_UNSUBSCRIBE

    def do_APPEND(self, tag: bytes, mailbox: bytes, flags: Any, date: Any, message: Any) -> None:
        # Twisted fails on an APPEND without a flag list (imaplib sends none).
        imap4.IMAP4Server.do_APPEND(self, tag, mailbox, flags or [], date, message)

    auth_APPEND = _command(
        do_APPEND,
        imap4.IMAP4Server.arg_astring,
        imap4.IMAP4Server.opt_plist,
        imap4.IMAP4Server.opt_datetime,
        imap4.IMAP4Server.arg_literal,
    )
    select_APPEND = auth_APPEND

    # -- FETCH and SEARCH --------------------------------------------------------

    def do_FETCH(self, tag: bytes, messages: imap4.MessageSet, query: list[Any], uid: int = 0) -> None:
        mbox = self._selected()
        seen: Deferred[Any] = succeed(None)
        if query and mbox.isWriteable() and _needsSeen(query):
            seen = mbox.markSeen(messages, uid)
            if not any(p.type == "flags" for p in query):
                query = list(query) + self.arg_fetchatt(b"FLAGS")[0]
        seen.addCallbacks(
            lambda _: imap4.IMAP4Server.do_FETCH(self, tag, messages, query, uid),
            self._failed,
            errbackArgs=(tag, b"FETCH"),
        )

    select_FETCH = _command(do_FETCH, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_fetchatt)

    def spewMessage(self, id: int, msg: Any, query: list[Any], uid: int) -> Deferred[Any]:
        # One message at a time, each once the client has read the last
        # (a FETCH of a whole mailbox is not queued in the transport).
        return self.whenOutputDrained().addCallback(lambda _: self._spewLoaded(id, msg, query, uid))

    def _spewLoaded(self, id: int, msg: Any, query: list[Any], uid: int) -> Deferred[Any]:
        if not isinstance(msg, MaildirMessage) or not _needsContents(query):
            return imap4.IMAP4Server.spewMessage(self, id, msg, query, uid)

        def spew(_: None) -> Deferred[Any]:
            return imap4.IMAP4Server.spewMessage(self, id, msg, query, uid)

        def forget(result: Any) -> Any:
            msg.unload()
            return result

        return msg.load().addCallback(spew).addBoth(forget)

    def do_SEARCH(self, tag: bytes, charset: Any, query: Any, uid: int = 0) -> None:
        mbox = self._selected()
        mbox.searchingContents = _searchNeedsContents(query)
        try:
            imap4.IMAP4Server.do_SEARCH(self, tag, charset, query, uid)
        finally:
            mbox.searchingContents = False

    select_SEARCH = _command(do_SEARCH, imap4.IMAP4Server.opt_charset, imap4.IMAP4Server.arg_searchkeys)

    def spew_body(self, part: Any, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        if _w is None:
            _w = self.transport.write
        if not (part.header or part.text or part.mime or part.empty):
            return imap4.IMAP4Server.spew_body(self, part, id, msg, _w, _f)
        node = msg.part
        for n in part.part:
            if node.isMultipart():
                node = node.getSubPart(n)
            elif n > 0 or node is not msg.part:
                raise imap4.IMAP4Exception("No such body part")
        if part.part and node.isMessage() and (part.header or part.text):
            inner = _Part(node.body)
        else:
            inner = node
        if part.header:
            fields = part.header.fields
            data = (
                inner.headerLines(fields, part.header.negate) if fields else inner.rawHeader
            )
        elif part.text:
            data = inner.body
        elif part.mime:
            data = node.rawHeader
        elif part.part:
            data = node.body
        else:
            data = node.data
        begin, length = part.partialBegin, part.partialLength
        label_begin = part.partialBegin
        part.partialBegin = None
        label = part.getBytes()
        part.partialBegin = label_begin
        if begin is not None:
            data = data[begin : begin + length]
            label += b"<%d>" % (begin,)
        _w(label + b" {%d}\r\n" % (len(data),) + data)


class IMAPFactory(MailFactory, ServerFactory):
    """
    Builds L{IMAPServer}s for one portal, for as many connections as its
    L{Admission} takes; the others are answered C{* BYE} and closed.
    C{reactor} and C{admission} are L{MailFactory}'s.
    """

    protocol = IMAPServer

    def __init__(
        self,
        portal: Any,
        contextFactory: Any = None,
        maxMessageSize: int | None = None,
        timeout: int = 1800,
        reactor: Any = None,
        admission: Admission | None = None,
    ) -> None:
        MailFactory.__init__(self, reactor, admission)
        self.portal = portal
        self.contextFactory = contextFactory
        self.maxMessageSize = maxMessageSize
        self.timeout = timeout

    def buildSession(self, addr: Any) -> IMAPServer:
        p = IMAPServer(self.contextFactory, self.maxMessageSize, self.reactor)
        # Logins are throttled by the client's address (coursenet.throttle).
        p.portal = PeerPortal.forPeer(self.portal, addr)
        p.factory = self
        p.POSTAUTH_TIMEOUT = self.timeout
        return p
