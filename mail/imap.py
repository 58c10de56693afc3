"""
The IMAP4rev1 server: L{twisted.mail.imap4.IMAP4Server} over a Maildir
account, which Twisted does not have.

What is added here: the account and mailboxes (Maildir++ folders, flags
and keywords in file names, UIDs, UIDVALIDITY and mod-sequences from the
store), per-session sequence numbers with EXPUNGE reported only where RFC
3501 allows (NOOP, CHECK, EXPUNGE, IDLE), \\Recent, \\Seen set by non-PEEK
fetches, literal and line size limits, and new mail and other sessions'
flag changes pushed to selected (and idling) sessions.

Twisted's IMAP4Server keeps the framing, literals, AUTHENTICATE, LOGIN,
STARTTLS, IDLE, CREATE/DELETE/RENAME plumbing and its command table; what
it gets wrong is replaced here: SELECT/EXAMINE data, LIST/LSUB, APPEND,
COPY, STORE, EXPUNGE, UID, SEARCH (L{mail.imap_search}), FETCH rendering
(L{mail.mime}), unsolicited responses; and the extensions it lacks are
added (SORT and THREAD in L{mail.imap_sort}, CONDSTORE, ESEARCH, UIDPLUS,
MOVE, LITERAL+, MULTIAPPEND, LIST-EXTENDED, ...: L{EXTENSIONS}).

Nothing here touches the disk: mailboxes and message contents come from
the store, whose threads do the work, so many commands finish later
and a session runs its commands one at a time.
"""

from __future__ import annotations

import calendar
import email.utils
import io
import re
import time
from typing import Any, Iterable

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
from coursenet.logs import peerName
from coursenet.transport import noDelay
from mail import _compat
from mail.interfaces import IFolder, IFolderListener, IMailStore
from mail.imap_search import Candidate, Query, SearchError, compileQuery
from mail.imap_sort import (
    THREAD_ALGORITHMS,
    needsContents,
    orderedSubject,
    parseCriteria,
    references,
    renderThreads,
    sortIds,
    sortValue,
    threadMessage,
)
from mail.mime import (
    Entity,
    binarySection,
    crlf,
    encodeBinaryParts,
    envelope,
    quote,
    render,
    section,
    structure,
)
from mail.protocol import MailFactory, MailReceiver
from mail.maildir import (
    DELIMITER,
    INBOX,
    BadFolderName,
    MessageTooLarge,
    NoSuchFolder,
    FLAG_LETTERS,
    MAX_KEYWORDS,
    TooManyKeywords,
    flagsToLetters,
)

_log = Logger()

#: Longest command line, without its CRLF (RFC 7162 recommends accepting
#: at least 8192).
LINE_MAX = 65536
#: One message of an APPEND: flags, date-time, literal (RFC 3501 6.3.11).
_APPEND_ONE = re.compile(
    rb'\s*(?:\((?P<flags>[^()]*)\)\s*)?(?:"(?P<date>[^"]*)"\s*)?(?P<binary>~?)\{(?P<size>\d{1,12})\}'
)
#: MULTIAPPEND's bounds: messages in one APPEND, and octets in all as a
#: multiple of the largest message.
MULTIAPPEND_MAX = 1000
MULTIAPPEND_FACTOR = 4
#: CONDSTORE's FETCH item and modifiers (RFC 7162).
_MODSEQ_ITEM = re.compile(rb"(?<![\w.\[\]-])MODSEQ(?![\w.\[\]-])", re.I)
_CHANGEDSINCE = re.compile(rb"\s*\(\s*CHANGEDSINCE\s+(\d{1,19})\s*\)\s*$", re.I)
_BINARY_ITEM = re.compile(rb"(?<![\w.])BINARY(\.PEEK|\.SIZE)?\[(\d+(?:\.\d+)*)?\](?:<(\d{1,10})\.(\d{1,10})>)?", re.I)
_UNCHANGEDSINCE = re.compile(rb"\(\s*UNCHANGEDSINCE\s+(\d{1,19})\s*\)\s*", re.I)
#: A non-synchronizing literal at the end of a line (RFC 7888).
_LITERAL_PLUS = re.compile(rb"\{(\d{1,10})\+\}$")
#: RFC 3501 9: a tag is ASTRING-CHARs but "+".
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]{1,64}')
_PERMANENT = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Forwarded"]


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
        self._part: Entity | None = None
        self.readAhead: _ReadAhead | None = None
        #: Its file was gone when read: another session expunged it.
        self.vanished = folder is None

    @property
    def loaded(self) -> bool:
        return self._part is not None or self.folder is None

    def setData(self, data: bytes | None) -> None:
        """
        The contents read, or L{None} if the file was gone.
        """
        if data is None:
            self.vanished = True
            data = b""
        self._part = Entity(crlf(data))

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
        return self.folder.read([uid]).addCallback(lambda found: self.setData(found.get(uid)))

    @property
    def part(self) -> Entity:
        if self._part is None:
            if self.folder is None:
                return Entity(b"")
            # Every caller here loads first; reading on the reactor thread
            # is a fallback for a path that did not.
            _log.warn("message {uid} read on the reactor thread", uid=self.uid)
            try:
                with open(self.folder.filename(self.uid), "rb") as f:
                    self.setData(f.read())
            except (KeyError, FileNotFoundError):
                self.setData(None)
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

    # The rest of IMessage: FETCH and SEARCH here read L{part} instead.

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        wanted = {(n.decode() if isinstance(n, bytes) else n).lower() for n in names}
        return {
            k.lower(): str(v)
            for k, v in self.part.message.items()
            if (k.lower() in wanted) != negate
        }

    def getBodyFile(self) -> io.BytesIO:
        return io.BytesIO(self.part.body)

    def getSize(self) -> int:
        return self.size if self._part is None else len(self._part.data)

    def isMultipart(self) -> bool:
        return self.part.isMultipart

    def getSubPart(self, part: int) -> Any:
        raise TypeError("sub-parts are read through the message's part")


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
                m.setData(found.get(m.uid))

        return self.folder.read([m.uid for m in window]).addCallback(loaded)


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
        self._settling: list[Deferred[None]] = []
        #: Each message's flag letters as this session last reported them.
        self._letters = {uid: folder.letters(uid) for uid in self.uids}
        #: Messages whose flags this session is changing itself.
        self._storing: set[int] = set()
        #: The folder's keywords as this session last reported them.
        self._keywords = list(folder.keywords)
        self.listeners: list[Any] = []

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
        if folder.keywords != self._keywords:
            self._keywords = list(folder.keywords)
            for listener in list(self.listeners):
                notify = getattr(listener, "keywordsChanged", None)
                if notify is not None:
                    notify(self.getFlags())
        changed: dict[int, list[str]] = {}
        for n, uid in enumerate(self.uids):
            if uid in self._gone or not folder.has(uid):
                continue
            letters = folder.letters(uid)
            old = self._letters.get(uid)
            if old != letters:
                self._letters[uid] = letters
                if old is not None and uid not in self._storing:
                    changed[n + 1] = self._flags(uid)
        if changed:
            # Another session's STORE (or a mail client's rename).
            for listener in list(self.listeners):
                notify = getattr(listener, "flagsChanged", None)
                if notify is not None:
                    notify(changed)

    def settled(self) -> Deferred[None]:
        """
        Fires once the new messages seen so far are numbered (and
        announced to the listeners).
        """
        if not self._batches:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._settling.append(d)
        return d

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
        if not self._batches:
            waiting, self._settling = self._settling, []
            for d in waiting:
                d.callback(None)

    def _add(self, added: list[int]) -> None:
        self.uids.extend(added)
        for uid in added:
            if self.folder.has(uid):
                self._letters[uid] = self.folder.letters(uid)
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
        return list(_PERMANENT) + list(self.folder.keywords)

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

    def firstUnseen(self) -> int | None:
        """
        The sequence number of the first message without \\Seen, if any.
        """
        for n, uid in enumerate(self.uids):
            if self.folder.has(uid) and "S" not in self.folder.letters(uid):
                return n + 1
        return None

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
        known = [n for n in names if n.upper() != "HIGHESTMODSEQ"]
        status = imap4.statusRequestHelper(self, known)
        if len(known) != len(names):
            status["HIGHESTMODSEQ"] = self.folder.highestModseq
        return status

    def flagsOf(self, uid: int) -> list[str]:
        """
        The flags of message C{uid} as this session shows them.
        """
        return self._flags(uid)

    def _flags(self, uid: int) -> list[str]:
        flags = self.folder.flags(uid) if self.folder.has(uid) else []
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
        _ReadAhead(self.folder, [m for _, m in found])
        return found

    def store(
        self, messages: imap4.MessageSet, flags: list[str], mode: int, uid: int
    ) -> Deferred[dict[int, list[str]]]:
        """
        Add (C{mode} 1), remove (-1) or set (0) C{flags}; each message's
        flags afterwards, by sequence number.
        """
        if not self.readWrite:
            raise imap4.ReadOnlyMailbox("The mailbox is read-only (EXAMINE)")
        seqs = {u: seq for seq, u in self._select(messages, uid)}
        return Deferred.fromCoroutine(self._storeFlags(seqs, flags, mode))

    async def _storeFlags(self, seqs: dict[int, int], flags: list[str], mode: int) -> dict[int, list[str]]:
        letters = await folderLetters(self.folder, flags, create=mode != -1)
        if mode == 1:
            add, remove = letters, ""
        elif mode == -1:
            add, remove = "", letters
        else:
            add, remove = letters, _ALL_LETTERS
        done = await self._changing(seqs, self.folder.setFlags(seqs, add, remove))
        return {seqs[u]: self._flags(u) for u in done}

    def _changing(self, uids: Any, change: Deferred[Any]) -> Deferred[Any]:
        """
        C{change} is this session's own change of the flags of C{uids}:
        not reported to it as another's.
        """
        uids = set(uids)
        self._storing |= uids

        def done(result: Any) -> Any:
            self._storing -= uids
            for uid in uids:
                if self.folder.has(uid):
                    self._letters[uid] = self.folder.letters(uid)
            return result

        return change.addBoth(done)

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
        return self._changing(unseen, self.folder.setFlags(unseen, "S"))

    def expunge(self, among: imap4.MessageSet | None = None) -> Deferred[list[int]]:
        """
        Remove the messages marked \\Deleted (of those whose UIDs are in
        C{among}, for UID EXPUNGE); their sequence numbers, highest first.
        """
        if not self.readWrite:
            raise imap4.ReadOnlyMailbox("The mailbox is read-only (EXAMINE)")
        if among is not None:
            candidates = [u for _, u in self._select(among, 1)]
        else:
            candidates = self.uids
        doomed = [u for u in candidates if self.folder.has(u) and "T" in self.folder.letters(u)]
        return self.expungeUids(doomed)

    def expungeUids(self, uids: list[int]) -> Deferred[list[int]]:
        """
        Remove the messages C{uids} (MOVE, EXPUNGE); their sequence
        numbers, highest first.
        """
        doomed = set(uids) & set(self.uids)
        # Out of this session's numbering at once, so that the folder's
        # notice of the removal is not taken for another session's.
        seqs = [n + 1 for n, u in enumerate(self.uids) if u in doomed]
        self.uids = [u for u in self.uids if u not in doomed]
        return self.folder.remove(sorted(doomed)).addCallback(lambda _: sorted(seqs, reverse=True))

    def addMessage(self, message: Any, flags: Any = (), date: Any = None) -> Deferred[int]:
        mtime = None
        if date:
            parsed = email.utils.parsedate_tz(date if isinstance(date, str) else date.decode())
            if parsed is not None:
                mtime = email.utils.mktime_tz(parsed)
        return Deferred.fromCoroutine(self._append(message, list(flags), mtime))

    async def _append(self, message: Any, flags: list[str], mtime: float | None) -> int:
        letters = await folderLetters(self.folder, flags)
        try:
            return await self._store.append(self.folder, message, letters, mtime)
        except MessageTooLarge as e:
            raise imap4.MailboxException(str(e))

    def copy(self, message: MaildirMessage) -> Deferred[int]:
        if message.folder is None:
            return fail(imap4.MailboxException(f"message {message.uid} was removed"))
        return Deferred.fromCoroutine(copyMessage(self._store, self.folder, message))


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
            if _matches(pattern, name):
                children = any(n.startswith(name + DELIMITER) for n in names)
                attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
                special = SPECIAL_USE.get(name.lower())
                if special is not None:
                    attributes.append(special)
                result.append((name, _ListEntry(attributes)))
        return result

    def listSubscribed(self, ref: str, wildcard: str) -> Deferred[list[tuple[str, list[str]]]]:
        return Deferred.fromCoroutine(self._listSubscribed(ref, wildcard))

    async def _listSubscribed(self, ref: str, wildcard: str) -> list[tuple[str, list[str]]]:
        """
        LSUB: the subscribed names that match, and (RFC 3501 6.3.9) the
        parents that a C{%} matches of subscribed names it does not, as
        \\Noselect.
        """
        pattern = imap4.wildcardToRegexp(ref + wildcard, DELIMITER)
        subscribed = await self.store.subscriptions(self.user)
        self._subscribed = set(subscribed)
        found: dict[str, list[str]] = {}
        for name in subscribed:
            if _matches(pattern, name):
                found[name] = []
            levels = name.split(DELIMITER)
            for n in range(1, len(levels)):
                parent = DELIMITER.join(levels[:n])
                if parent not in self._subscribed and parent not in found and _matches(pattern, parent):
                    found[parent] = ["\\Noselect"]
        return sorted(found.items())

    async def listExtended(
        self, ref: str, patterns: list[str], select: set[bytes], returns: set[bytes]
    ) -> list[tuple[str, list[str], bytes]]:
        """
        LIST-EXTENDED (RFC 5258): names matching any pattern, or with
        SUBSCRIBED the subscribed ones (\\NonExistent if gone), and with
        RECURSIVEMATCH the matching parents of subscribed names that match
        none (CHILDINFO); attributes, then extended data.
        """
        regexes = [imap4.wildcardToRegexp(ref + p, DELIMITER) for p in patterns]
        names = await self.store.listFolders(self.user)
        existing = set(names)
        subscribed = set(await self.store.subscriptions(self.user))
        self._subscribed = subscribed

        def matches(name: str) -> bool:
            return any(_matches(r, name) for r in regexes)

        def attributes(name: str) -> list[str]:
            if name not in existing:
                return ["\\NonExistent"]
            children = any(n.startswith(name + DELIMITER) for n in names)
            out = ["\\HasChildren" if children else "\\HasNoChildren"]
            special = SPECIAL_USE.get(name.lower())
            if special is not None:
                out.append(special)
            return out

        wantSubscribed = b"SUBSCRIBED" in select or b"SUBSCRIBED" in returns
        found: dict[str, tuple[list[str], bytes]] = {}
        if b"SUBSCRIBED" in select:
            chosen = {n for n in subscribed if matches(n)}
        else:
            chosen = {n for n in existing if matches(n)}
        for name in chosen:
            found[name] = (attributes(name) + (["\\Subscribed"] if wantSubscribed and name in subscribed else []), b"")
        if b"RECURSIVEMATCH" in select:
            parents = set(existing)
            for name in subscribed:
                levels = name.split(DELIMITER)
                parents.update(DELIMITER.join(levels[:n]) for n in range(1, len(levels)))
            for name in parents:
                if not matches(name):
                    continue
                hidden = [d for d in subscribed if d.startswith(name + DELIMITER) and not matches(d)]
                if hidden:
                    own = found.get(name, (attributes(name), b""))[0]
                    found[name] = (own, b' ("CHILDINFO" ("SUBSCRIBED"))')
        return [(name, *found[name]) for name in sorted(found)]

    def getPersonalNamespaces(self) -> list[list[bytes]]:
        return [[b"", DELIMITER.encode()]]

    def getSharedNamespaces(self) -> None:
        return None

    def getOtherNamespaces(self) -> None:
        return None

    def getUserNamespaces(self) -> None:
        return None


_ALL_LETTERS = "DFPRST" + "".join(chr(97 + n) for n in range(MAX_KEYWORDS))


async def folderLetters(folder: IFolder, flags: Iterable[str], create: bool = True) -> str:
    """
    The Maildir info letters of IMAP C{flags} in C{folder}: system flags'
    letters, and keywords' letters a to z (new keywords get one, with
    C{create}).  \\Recent is not a flag that can be set; an unknown system
    flag is refused.
    """
    system, keywords = [], []
    for flag in flags:
        if flag.lower() == "\\recent":
            continue
        if flag.lower() in FLAG_LETTERS:
            system.append(flag)
        elif flag.startswith("\\"):
            raise imap4.MailboxException(
                f"{flag} is not a system flag; these are {' '.join(_PERMANENT)}"
            )
        else:
            keywords.append(flag)
    letters = flagsToLetters(system)
    if keywords:
        try:
            letters += await folder.keywordLetters(keywords, create)
        except TooManyKeywords as e:
            raise imap4.MailboxException(str(e))
    return "".join(sorted(letters))


async def copyMessage(store: IMailStore, target: IFolder, message: MaildirMessage) -> int:
    """
    Copy C{message} into C{target}, flags and keywords too; its new UID.
    """
    assert message.folder is not None
    letters = await folderLetters(target, message.getFlags())
    return await store.copy(target, message.folder, message.uid, letters)


def _internalDate(mtime: float) -> bytes:
    """
    An INTERNALDATE (RFC 3501 9: date-time), in UTC.
    """
    return time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime(mtime)).encode()


def _sectionLabel(part: Any) -> tuple[list[int], str, list[bytes], bytes]:
    """
    A FETCH BODY[...] item: its part numbers, its text (C{""}, C{"HEADER"},
    C{"HEADER.FIELDS"}, C{"HEADER.FIELDS.NOT"}, C{"TEXT"}, C{"MIME"}), the
    header fields it names, and its name in the reply (without C{<n>}).
    """
    path = [n + 1 for n in part.part or ()]
    fields: list[bytes] = []
    if part.header:
        fields = [f if isinstance(f, bytes) else f.encode() for f in part.header.fields or []]
        spec = "HEADER"
        if fields:
            spec += ".FIELDS.NOT" if part.header.negate else ".FIELDS"
    elif part.text:
        spec = "TEXT"
    elif part.mime:
        spec = "MIME"
    else:
        spec = ""
    label = b".".join(b"%d" % n for n in path)
    if spec:
        label += (b"." if label else b"") + spec.encode()
    if fields:
        label += b" (" + b" ".join(quote(f) if not f.isalnum() and b"-" not in f else f for f in fields) + b")"
    return path, spec, fields, b"BODY[" + label + b"]"


def fetchItems(msg: MaildirMessage, query: list[Any], uid: int) -> list[bytes]:
    """
    The items of one message's FETCH reply, in the order asked, with UID
    first for UID FETCH (RFC 3501 6.4.8).
    """
    items: list[bytes] = []
    if uid and not any(p.type == "uid" for p in query):
        items.append(b"UID %d" % (msg.uid,))
    for p in query:
        kind = p.type
        if kind == "uid":
            items.append(b"UID %d" % (msg.uid,))
        elif kind == "flags":
            items.append(b"FLAGS (" + " ".join(msg.flags).encode("utf-8", "replace") + b")")
        elif kind == "internaldate":
            items.append(b'INTERNALDATE "' + _internalDate(msg.mtime) + b'"')
        elif kind == "rfc822size":
            items.append(b"RFC822.SIZE %d" % (msg.getSize(),))
        elif kind == "envelope":
            items.append(b"ENVELOPE " + render(envelope(msg.part)))
        elif kind == "bodystructure":
            items.append(b"BODYSTRUCTURE " + render(structure(msg.part, True)))
        elif kind == "rfc822header":
            items.append(b"RFC822.HEADER " + _literal(msg.part.header))
        elif kind == "rfc822text":
            items.append(b"RFC822.TEXT " + _literal(msg.part.body))
        elif kind == "rfc822":
            items.append(b"RFC822 " + _literal(msg.part.data))
        elif kind in ("binary", "binarysize"):
            path = p.part
            try:
                data = binarySection(msg.part, path)
            except ValueError:
                raise UnknownEncoding()
            data = b"" if data is None else data
            label = b"[" + b".".join(b"%d" % n for n in path) + b"]"
            if kind == "binarysize":
                items.append(b"BINARY.SIZE" + label + b" %d" % len(data))
                continue
            label = b"BINARY" + label
            if p.partialBegin is not None:
                data = data[p.partialBegin : p.partialBegin + p.partialLength]
                label += b"<%d>" % (p.partialBegin,)
            # A literal8 (RFC 3516) only where an ordinary one cannot go.
            items.append(label + b" " + (b"~" if b"\x00" in data else b"") + _literal(data))
        elif kind == "body" and not (p.header or p.text or p.mime or p.empty):
            items.append(b"BODY " + render(structure(msg.part, False)))
        elif kind == "body":
            path, spec, fields, label = _sectionLabel(p)
            data = section(msg.part, path, spec, fields)
            if data is None:
                # No such part: RFC 3501 leaves the answer open; Dovecot's.
                data = b""
            if p.partialBegin is not None:
                data = data[p.partialBegin : p.partialBegin + p.partialLength]
                label += b"<%d>" % (p.partialBegin,)
            items.append(label + b" " + _literal(data))
    return items


class UnknownEncoding(Exception):
    """
    BINARY asked for a part whose Content-Transfer-Encoding is not known.
    """


class BinaryItem:
    """
    A FETCH BINARY[...], BINARY.PEEK[...] or BINARY.SIZE[...] item.
    """

    def __init__(self, match: re.Match[bytes]) -> None:
        kind = (match.group(1) or b"").upper()
        self.type = "binarysize" if kind == b".SIZE" else "binary"
        self.peek = kind == b".PEEK"
        self.part = [int(n) for n in match.group(2).split(b".")] if match.group(2) else []
        self.partialBegin = int(match.group(3)) if match.group(3) is not None else None
        self.partialLength = int(match.group(4)) if match.group(4) is not None else None


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n%s" % (len(data), data)


_MONTHS = {m: n for n, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
)}
_DATE_TIME = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


def _parseInternalDate(text: bytes) -> float | None:
    """
    The time an APPEND's date-time (RFC 3501 9) names, or L{None}.
    """
    m = _DATE_TIME.fullmatch(text)
    if m is None or m.group(2).lower().decode() not in _MONTHS:
        return None
    day, _, year, hour, minute, second = (int(g) if g.isdigit() else 0 for g in m.groups()[:6])
    month = _MONTHS[m.group(2).lower().decode()]
    offset = (int(m.group(8)) * 60 + int(m.group(9))) * 60 * (-1 if m.group(7) == b"-" else 1)
    try:
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    except (ValueError, OverflowError):
        return None


def _uidSet(uids: list[int]) -> bytes:
    """
    UIDs, in order, as a sequence set with ranges (C{1:3,7}).
    """
    ranges: list[list[int]] = []
    for uid in uids:
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in ranges)


def _copyUid(validity: int, pairs: list[tuple[int, int]]) -> bytes:
    """
    UIDPLUS's COPYUID code (RFC 4315 3) for (source, new) UID pairs.
    """
    return b"[COPYUID %d %s %s]" % (
        validity,
        _uidSet([old for old, _ in pairs]),
        _uidSet([new for _, new in pairs]),
    )


#: Extensions advertised (with IMAP4rev1, IDLE, NAMESPACE and AUTH= from
#: Twisted), each once imaptest's scripts for it pass.
EXTENSIONS = [
    b"CONDSTORE",
    b"ESEARCH",
    b"SORT",
    b"ESORT",
    b"SORT=DISPLAY",
    b"THREAD=ORDEREDSUBJECT",
    b"THREAD=REFERENCES",
    b"LITERAL+",
    b"UIDPLUS",
    b"MOVE",
    b"MULTIAPPEND",
    b"ID",
    b"ENABLE",
    b"UNSELECT",
    b"CHILDREN",
    b"SPECIAL-USE",
    b"LIST-EXTENDED",
    b"BINARY",
]

#: RFC 6154 attributes of the folders that mail clients make by these names.
SPECIAL_USE = {
    "sent": "\\Sent",
    "sent messages": "\\Sent",
    "drafts": "\\Drafts",
    "trash": "\\Trash",
    "deleted messages": "\\Trash",
    "junk": "\\Junk",
    "spam": "\\Junk",
    "archive": "\\Archive",
}


def _matches(pattern: re.Pattern[str], name: str) -> bool:
    return bool(pattern.fullmatch(name) or (name == INBOX and pattern.fullmatch("inbox")))


def _esearch(tag: bytes, uid: int, returns: list[str], matches: list[int], ordered: bool = False) -> bytes:
    """
    An ESEARCH reply (RFC 4731) with the RETURN options asked; for ESORT
    (C{ordered}, RFC 5267) MIN and MAX are the first and last in sort
    order and ALL keeps that order.
    """
    out = b'ESEARCH (TAG "' + tag + b'")' + (b" UID" if uid else b"")
    if "MIN" in returns and matches:
        out += b" MIN %d" % (matches[0] if ordered else min(matches))
    if "MAX" in returns and matches:
        out += b" MAX %d" % (matches[-1] if ordered else max(matches))
    if "COUNT" in returns:
        out += b" COUNT %d" % len(matches)
    if "ALL" in returns and matches:
        out += b" ALL " + _uidSet(matches if ordered else sorted(matches))
    return out


class ListCommand:
    """
    The arguments of a LIST, as LIST-EXTENDED has them.
    """

    def __init__(self) -> None:
        self.select: set[bytes] = set()
        self.reference = b""
        self.patterns: list[bytes] = []
        self.returns: set[bytes] = set()


def _parenthesised(line: bytes) -> tuple[list[bytes], bytes]:
    """
    The words of a parenthesised list at the start of C{line} (no nesting,
    quoted words kept whole), and what follows it.
    """
    end = line.find(b")")
    if not line.startswith(b"(") or end < 0:
        raise imap4.IllegalClientResponse("a parenthesised list is not closed")
    words = re.findall(rb'"(?:[^"\\]|\\.)*"|[^\s"]+', line[1:end])
    return [w[1:-1] if w.startswith(b'"') else w for w in words], line[end + 1 :]


async def _maybe(result: Any) -> Any:
    """
    The result of a Twisted argument parser, which may be a Deferred.
    """
    if isinstance(result, Deferred):
        return await result
    return result


def _needsSeen(query: list[Any]) -> bool:
    for part in query:
        if part.type in ("rfc822", "rfc822text"):
            return True
        if part.type == "body" and not part.peek and (
            part.header or part.text or part.mime or part.empty
        ):
            return True
        if part.type == "binary" and not part.peek:
            return True
    return False


#: FETCH items that read a message's contents.
_CONTENT_ITEMS = frozenset(
    ["envelope", "rfc822header", "rfc822text", "rfc822", "body", "bodystructure", "binary", "binarysize"]
)
def _needsContents(query: list[Any]) -> bool:
    return any(part.type in _CONTENT_ITEMS for part in query)


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
    mbox: Any
    challengers: Any
    blocked: Any

    #: The tag of the command running, until its tagged reply.
    _running: bytes | None = None
    #: What the receiver waits on while the command runs, if it asked.
    _done: Deferred[None] | None = None
    #: New mail came while a command ran: EXISTS goes before its reply.
    _existsPending = False
    #: The line being parsed ends in a LITERAL+ literal: no "+" for it.
    _nonSync = False
    #: CONDSTORE is enabled: FETCH responses with FLAGS carry MODSEQ.
    _condstore = False

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
        #: UIDs whose flags another session changed, not reported yet.
        self._flagsPending: set[int] = set()

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
        if self.parseState == "pending" and line.startswith(b" "):
            # The rest of a line after a literal: Twisted hands it on with
            # its separating space, which its list and set parsers refuse
            # (STATUS {5}CRLF INBOX (MESSAGES) failed).
            line = line[1:]
        plus = _LITERAL_PLUS.search(line) if self.parseState in ("command", "pending") else None
        if plus is not None:
            # LITERAL+ (RFC 7888): the data follows without a "+" from us;
            # Twisted's parsers see a plain literal.
            line = line[: plus.start()] + b"{" + plus.group(1) + b"}"
            self._nonSync = True
        try:
            parse(line)
        except Exception as e:
            self._log.failure("could not handle an IMAP line")
            self.sendBadResponse(self._running, b"Server error: " + str(e).encode("utf-8", "replace"))
        refused, self._nonSync = self._nonSync, False
        if refused and plus is not None and int(plus.group(1)):
            # The literal was refused, but its data is on the way and would
            # be read as commands: the session cannot go on.
            self.sendUntaggedResponse(b"BYE The literal was refused; its data cannot be skipped")
            self.transport.loseConnection()
            return None
        if self._running is None or self.parseState != "command":
            return None
        if self._done is None:
            self._done = Deferred()
        return self._done

    def rawDataReceived(self, data: bytes) -> None:
        imap4.IMAP4Server.rawDataReceived(self, data)

    def sendContinuationRequest(self, msg: bytes | None = b"Ready for additional command text") -> None:
        if self._nonSync:
            self._nonSync = False
            return
        imap4.IMAP4Server.sendContinuationRequest(self, msg)

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
        if not (cmd.isascii() and cmd.isalpha()):
            # Twisted's lookup fails on a name that is not ASCII.
            self.sendBadResponse(tag, b"Unsupported command")
            return
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
        if self.state == "logout" and not message.startswith(b"BYE"):
            # After LOGOUT nothing more may come (imaptest dies of it).
            return
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
        if self._existsPending:
            self._existsPending = False
            self._sendCounts()
        self._sendFlags()

    def flagsChanged(self, newFlags: dict[int, list[str]]) -> None:
        # Kept by UID and sent with the sequence numbers of the moment it
        # goes out, after any EXISTS that numbers it.
        if not isinstance(self.mbox, MaildirMailbox) or self.state == "logout":
            return
        uids = self.mbox.uids
        self._flagsPending.update(uids[seq - 1] for seq in newFlags if 0 < seq <= len(uids))
        if self._running is None or self.parseState == "idle":
            self._sendFlags()

    def _sendFlags(self) -> None:
        pending, self._flagsPending = self._flagsPending, set()
        if not pending or not isinstance(self.mbox, MaildirMailbox):
            return
        mbox = self.mbox
        for seq, uid in enumerate(mbox.uids, 1):
            if uid in pending and mbox.folder.has(uid):
                flags = " ".join(mbox.flagsOf(uid)).encode("utf-8", "replace")
                modseq = b" MODSEQ (%d)" % (mbox.folder.modseq(uid),) if self._condstore else b""
                imap4.IMAP4Server.sendUntaggedResponse(self, b"%d FETCH (FLAGS (%s)%s)" % (seq, flags, modseq))

    def newMessages(self, exists: int | None, recent: int | None) -> None:
        # The counts are taken when sent, not when the mail came: an
        # EXPUNGE sent meanwhile (MOVE into the same mailbox) is counted.
        if self._running is not None and self.parseState != "idle":
            self._existsPending = True
        elif self.state != "logout":
            self._sendCounts()

    def _sendCounts(self) -> None:
        if isinstance(self.mbox, MaildirMailbox):
            imap4.IMAP4Server.sendUntaggedResponse(self, b"%d EXISTS" % (self.mbox.getMessageCount(),))
            imap4.IMAP4Server.sendUntaggedResponse(self, b"%d RECENT" % (self.mbox.getRecentCount(),))

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

    def capabilities(self) -> dict[bytes, Any]:
        caps = imap4.IMAP4Server.capabilities(self)
        for name in EXTENSIONS:
            caps[name] = None
        return caps

    def loggedIn(self, user: str) -> None:
        """
        Log a successful LOGIN or AUTHENTICATE, naming the peer as every
        service does (L{peerName}).
        """
        self._log.info("{peer} logged in", peer=peerName(self.transport.getPeer(), user))

    def do_ID(self, tag: bytes, line: bytes) -> None:
        # RFC 2971: what the client says of itself is only for logs.
        try:
            fields = imap4.parseNestedParens(line)
        except Exception:
            fields = None
        if not fields or not (fields[0] is None or isinstance(fields[0], list)):
            self.sendBadResponse(tag, b"ID takes a parenthesised list of field-value pairs, or NIL")
            return
        self.sendUntaggedResponse(b'ID ("name" "coursenet" "vendor" "coursenet")')
        self.sendPositiveResponse(tag, b"ID completed")

    unauth_ID = _command(do_ID, imap4.IMAP4Server.arg_line)
    auth_ID = unauth_ID
    select_ID = unauth_ID

    def do_ENABLE(self, tag: bytes, line: bytes) -> None:
        # RFC 5161: CONDSTORE is the one extension here that can be enabled.
        names = line.upper().split()
        enabled = b""
        if b"CONDSTORE" in names and not self._condstore:
            self._condstore = True
            enabled = b" CONDSTORE"
        self.sendUntaggedResponse(b"ENABLED" + enabled)
        self.sendPositiveResponse(tag, b"ENABLE completed")

    def _enableCondstore(self) -> None:
        """
        A CONDSTORE-enabling command (RFC 7162 3.1): the mailbox's
        HIGHESTMODSEQ is told at once.
        """
        if not self._condstore:
            self._condstore = True
            if isinstance(self.mbox, MaildirMailbox):
                self.sendUntaggedResponse(b"OK [HIGHESTMODSEQ %d] Highest" % (self.mbox.folder.highestModseq,))

    auth_ENABLE = _command(do_ENABLE, imap4.IMAP4Server.arg_line)

    def do_UNSELECT(self, tag: bytes) -> None:
        # RFC 3691: CLOSE without the EXPUNGE.
        mbox = self._selected()
        mbox.removeListener(self)
        mbox.close()
        self.mbox = None
        self.state = "auth"
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    select_UNSELECT = _command(do_UNSELECT)

    def do_LOGOUT(self, tag: bytes) -> None:
        if self.mbox is not None:
            mbox = self._selected()
            mbox.removeListener(self)
            mbox.close()
            self.mbox = None
        self.state = "logout"
        self._news = []
        self._existsPending = False
        self._flagsPending = set()
        imap4.IMAP4Server.do_LOGOUT(self, tag)

    unauth_LOGOUT = _command(do_LOGOUT)
    auth_LOGOUT = unauth_LOGOUT
    select_LOGOUT = unauth_LOGOUT
    logout_LOGOUT = unauth_LOGOUT

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

    def keywordsChanged(self, flags: list[str]) -> None:
        """
        The selected folder has a new keyword: FLAGS says so at once, before
        any FETCH shows it (RFC 3501 7.2.6).
        """
        text = " ".join(flags).encode("utf-8", "replace")
        self.sendUntaggedResponse(b"FLAGS (" + text + b")")
        if self._selected().isWriteable():
            self.sendUntaggedResponse(b"OK [PERMANENTFLAGS (" + text + b" \\*)] Flags permitted")

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

    # -- LIST and LSUB ---------------------------------------------------------

    def do_LIST(self, tag: bytes, ref: bytes, pattern: bytes, sub: int, cmdName: bytes) -> None:
        try:
            names = _mailboxName(ref), _mailboxName(pattern)
        except imap4.IllegalMailboxEncoding:
            # No mailbox has a name that is not modified UTF-7: none matches.
            self.sendPositiveResponse(tag, cmdName + b" completed")
            return
        account = self._account()
        if sub:
            found: Deferred[Any] = account.listSubscribed(*names)
        else:
            found = account.listMailboxes(*names).addCallback(
                lambda entries: [(name, entry.getFlags()) for name, entry in entries]
            )

        def send(entries: list[tuple[str, list[str]]]) -> None:
            for name, attributes in entries:
                self.sendUntaggedResponse(
                    b"%s (%s) \".\" %s"
                    % (cmdName, " ".join(attributes).encode(), quote(name.encode("imap4-utf-7")))
                )
            self.sendPositiveResponse(tag, cmdName + b" completed")

        found.addCallbacks(send, self._failed, errbackArgs=(tag, cmdName))

    def arg_listArguments(self, line: bytes) -> Deferred[tuple[ListCommand, bytes]]:
        """
        LIST's arguments with LIST-EXTENDED's (RFC 5258): selection
        options, the reference, one pattern or a list of them, RETURN
        options.
        """
        return Deferred.fromCoroutine(self._listArguments(line))

    async def _listArguments(self, line: bytes) -> tuple[ListCommand, bytes]:
        command = ListCommand()
        line = line.lstrip()
        if line.startswith(b"("):
            options, line = _parenthesised(line)
            command.select = {o.upper() for o in options}
            unknown = command.select - {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH"}
            if unknown:
                raise imap4.IllegalClientResponse(f"unknown LIST selection option {b' '.join(sorted(unknown)).decode('ascii', 'replace')}")
            if b"RECURSIVEMATCH" in command.select and not command.select & {b"SUBSCRIBED"}:
                raise imap4.IllegalClientResponse("RECURSIVEMATCH goes with SUBSCRIBED")
        ref, line = await _maybe(self.arg_astring(line))
        command.reference = ref
        line = line.lstrip()
        if line.startswith(b"("):
            patterns, line = _parenthesised(line)
            if not patterns:
                raise imap4.IllegalClientResponse("LIST needs at least one pattern")
            command.patterns = [p.strip(b'"') for p in patterns]
        else:
            pattern, line = await _maybe(self.arg_astring(line))
            command.patterns = [pattern]
        line = line.strip()
        if line:
            if not line.upper().startswith(b"RETURN"):
                raise imap4.IllegalClientResponse("after the patterns LIST takes only RETURN (...)")
            options, rest = _parenthesised(line[6:].lstrip())
            if rest.strip():
                raise imap4.IllegalClientResponse("nothing may follow LIST's RETURN options")
            command.returns = {o.upper() for o in options}
            unknown = command.returns - {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE"}
            if unknown:
                raise imap4.IllegalClientResponse(f"unknown LIST return option {b' '.join(sorted(unknown)).decode('ascii', 'replace')}")
        return command, b""

    def do_LISTX(self, tag: bytes, command: ListCommand) -> None:
        plain = not command.select and not command.returns and len(command.patterns) == 1
        if plain:
            self.do_LIST(tag, command.reference, command.patterns[0], 0, b"LIST")
            return
        try:
            ref = _mailboxName(command.reference)
            patterns = [_mailboxName(p) for p in command.patterns]
        except imap4.IllegalMailboxEncoding:
            self.sendPositiveResponse(tag, b"LIST completed")
            return

        def send(entries: list[tuple[str, list[str], bytes]]) -> None:
            for name, attributes, extra in entries:
                self.sendUntaggedResponse(
                    b'LIST (%s) "." %s%s' % (" ".join(attributes).encode(), quote(name.encode("imap4-utf-7")), extra)
                )
            self.sendPositiveResponse(tag, b"LIST completed")

        Deferred.fromCoroutine(
            self._account().listExtended(ref, patterns, command.select, command.returns)
        ).addCallbacks(send, self._failed, errbackArgs=(tag, b"LIST"))

    auth_LIST = _command(do_LISTX, arg_listArguments)
    select_LIST = auth_LIST
    auth_LSUB = _command(do_LIST, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_astring, 1, b"LSUB")
    select_LSUB = auth_LSUB

    # -- SELECT and EXAMINE ----------------------------------------------------

    def arg_selectParameters(self, line: bytes) -> tuple[list[bytes], bytes]:
        """
        SELECT's optional parameters (RFC 4466): only CONDSTORE is known.
        """
        line = line.strip()
        if not line:
            return [], b""
        if not (line.startswith(b"(") and line.endswith(b")")):
            raise imap4.IllegalClientResponse("SELECT takes a mailbox and optionally (CONDSTORE)")
        params = line[1:-1].upper().split()
        if any(p != b"CONDSTORE" for p in params):
            raise imap4.IllegalClientResponse("the only SELECT parameter is CONDSTORE")
        return params, b""

    def do_SELECT(self, tag: bytes, name: bytes, params: list[bytes], rw: int, cmdName: bytes) -> None:
        if params:
            self._condstore = True
        if self.mbox is not None:
            # RFC 3501 6.3.1: a SELECT, even a failing one, leaves the
            # mailbox selected before.
            old = self._selected()
            old.removeListener(self)
            old.close()
            self.mbox = None
            self.state = "auth"
        maybeDeferred(self._account().select, _mailboxName(name), bool(rw)).addCallbacks(
            self._opened, self._failed, callbackArgs=(tag, cmdName), errbackArgs=(tag, cmdName)
        )

    def _opened(self, mbox: "MaildirMailbox | None", tag: bytes, cmdName: bytes) -> None:
        if mbox is None:
            self.sendNegativeResponse(tag, b"No such mailbox")
            return
        flags = " ".join(mbox.getFlags()).encode("utf-8", "replace")
        self.sendUntaggedResponse(b"FLAGS (" + flags + b")")
        self.sendUntaggedResponse(b"%d EXISTS" % (mbox.getMessageCount(),))
        self.sendUntaggedResponse(b"%d RECENT" % (mbox.getRecentCount(),))
        unseen = mbox.firstUnseen()
        if unseen is not None:
            self.sendUntaggedResponse(b"OK [UNSEEN %d] First unseen" % (unseen,))
        permanent = (flags + b" \\*") if mbox.isWriteable() else b""
        self.sendUntaggedResponse(b"OK [PERMANENTFLAGS (" + permanent + b")] Flags permitted")
        self.sendUntaggedResponse(b"OK [UIDVALIDITY %d] UIDs valid" % (mbox.getUIDValidity(),))
        self.sendUntaggedResponse(b"OK [UIDNEXT %d] Predicted next UID" % (mbox.getUIDNext(),))
        self.sendUntaggedResponse(b"OK [HIGHESTMODSEQ %d] Highest" % (mbox.folder.highestModseq,))
        mbox.addListener(self)
        self.mbox = mbox
        self.state = "select"
        mode = b"READ-WRITE" if mbox.isWriteable() else b"READ-ONLY"
        self.sendPositiveResponse(tag, b"[" + mode + b"] " + cmdName + b" successful")

    auth_SELECT = _command(do_SELECT, imap4.IMAP4Server.arg_astring, arg_selectParameters, 1, b"SELECT")
    select_SELECT = auth_SELECT
    auth_EXAMINE = _command(do_SELECT, imap4.IMAP4Server.arg_astring, arg_selectParameters, 0, b"EXAMINE")
    select_EXAMINE = auth_EXAMINE

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

    def do_APPENDS(self, tag: bytes, mailbox: bytes, messages: list[tuple[list[bytes], bytes | None, Any]]) -> None:
        # Twisted's opens the mailbox as if to SELECT it (taking \\Recent
        # from the session that has it selected), reports EXISTS for it
        # whichever mailbox is selected, needs a flag list, and takes one
        # message (MULTIAPPEND, RFC 3502, takes several).
        prepared = []
        for flags, date, message in messages:
            mtime = None
            if date is not None:
                mtime = _parseInternalDate(date)
                if mtime is None:
                    self.sendBadResponse(tag, b'APPEND date-time must look like "01-Jan-2020 12:00:00 +0000"')
                    return
            prepared.append(([f.decode("utf-8", "replace") for f in flags], mtime, message))
        Deferred.fromCoroutine(self._append(_mailboxName(mailbox), prepared)).addCallbacks(
            lambda code: self.sendPositiveResponse(tag, code + b" APPEND completed"),
            self._failed,
            errbackArgs=(tag, b"APPEND"),
        )

    def arg_messages(self, line: bytes) -> Deferred[tuple[list[tuple[list[bytes], bytes | None, Any]], bytes]]:
        """
        The messages of an APPEND: C{[(flags)] ["date-time"] literal},
        once or more, each literal read as a file.
        """
        return Deferred.fromCoroutine(self._readMessages(line))

    async def _readMessages(self, line: bytes) -> tuple[list[tuple[list[bytes], bytes | None, Any]], bytes]:
        messages: list[tuple[list[bytes], bytes | None, Any]] = []
        total = 0
        while True:
            if messages and not line.strip():
                return messages, b""
            m = _APPEND_ONE.fullmatch(line)
            if m is None:
                raise imap4.IllegalClientResponse(
                    'APPEND takes [(flags)] ["date-time"] {size} after the mailbox, once or more'
                )
            size = int(m.group("size"))
            total += size
            if len(messages) >= MULTIAPPEND_MAX or (
                self.maxMessageSize is not None and total > MULTIAPPEND_FACTOR * self.maxMessageSize
            ):
                raise imap4.IllegalClientResponse(
                    f"[TOOBIG] One APPEND takes at most {MULTIAPPEND_MAX} messages"
                    + (f" and {MULTIAPPEND_FACTOR * self.maxMessageSize} octets" if self.maxMessageSize else "")
                )
            flags = m.group("flags").split() if m.group("flags") is not None else []
            data, line = await self._fileLiteral(size)
            if m.group("binary"):
                # A literal8 (RFC 3516 4.4): binary parts are stored base64.
                data = io.BytesIO(encodeBinaryParts(data.read()))
            messages.append((flags, m.group("date"), data))

    async def _append(self, name: str, messages: list[tuple[list[str], float | None, Any]]) -> bytes:
        """
        Store the messages of one APPEND, all or none; the APPENDUID code.
        """
        account = self._account()
        folder = await self._openTarget(name)
        uids: list[int] = []
        try:
            for flags, mtime, message in messages:
                letters = await folderLetters(folder, flags)
                uids.append(await account.store.append(folder, message, letters, mtime))
        except BaseException as e:
            if uids:
                await folder.remove(uids)
            if isinstance(e, MessageTooLarge):
                raise imap4.MailboxException(str(e))
            raise
        await self._settle(folder)
        return b"[APPENDUID %d %s]" % (folder.uidValidity, _uidSet(uids))

    async def _openTarget(self, name: str) -> IFolder:
        """
        The folder an APPEND, COPY or MOVE puts messages in.
        """
        account = self._account()
        account._path(name)
        try:
            return await account.store.openFolder(account.user, name)
        except NoSuchFolder:
            raise imap4.MailboxException(f"[TRYCREATE] No mailbox named {name}")

    async def _settle(self, folder: IFolder) -> None:
        """
        If C{folder} is the one selected, wait until its new messages are
        numbered, so that EXISTS comes before the tagged reply.
        """
        if isinstance(self.mbox, MaildirMailbox) and self.mbox.folder is folder:
            await self.mbox.settled()

    auth_APPEND = _command(do_APPENDS, imap4.IMAP4Server.arg_astring, arg_messages)
    select_APPEND = auth_APPEND

    def do_COPY(self, tag: bytes, messages: imap4.MessageSet, mailbox: bytes, uid: int = 0) -> None:
        self._copyOrMove(tag, messages, mailbox, uid, False)

    select_COPY = _command(do_COPY, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_finalastring)

    def do_MOVE(self, tag: bytes, messages: imap4.MessageSet, mailbox: bytes, uid: int = 0) -> None:
        self._copyOrMove(tag, messages, mailbox, uid, True)

    select_MOVE = _command(do_MOVE, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_finalastring)

    def _copyOrMove(self, tag: bytes, messages: imap4.MessageSet, mailbox: bytes, uid: int, move: bool) -> None:
        command = b"MOVE" if move else b"COPY"
        if move and not self._selected().isWriteable():
            self.sendNegativeResponse(tag, b"MOVE needs the mailbox selected read-write (SELECT, not EXAMINE)")
            return
        Deferred.fromCoroutine(self._copy(_mailboxName(mailbox), messages, uid, move)).addCallbacks(
            lambda done: self._copied(tag, command, *done),
            self._failed,
            errbackArgs=(tag, command),
        )

    async def _copy(
        self, name: str, messages: imap4.MessageSet, uid: int, move: bool
    ) -> tuple[bytes, bool]:
        """
        Copy (or move) the messages named; the COPYUID code and whether
        some were gone.
        """
        mbox = self._selected()
        target = await self._openTarget(name)
        store = self._account().store
        pairs: list[tuple[int, int]] = []
        vanished = False
        for _, msg in mbox.fetch(messages, uid):
            if msg.folder is None:
                vanished = True
                continue
            try:
                pairs.append((msg.uid, await copyMessage(store, target, msg)))
            except (KeyError, FileNotFoundError):
                vanished = True
        if move and pairs:
            # RFC 6851 4.3: the COPYUID comes untagged, before the EXPUNGEs.
            self.sendUntaggedResponse(b"OK " + _copyUid(target.uidValidity, pairs) + b" Moved")
            for seq in await mbox.expungeUids([old for old, _ in pairs]):
                self.sendUntaggedResponse(b"%d EXPUNGE" % (seq,))
        await self._settle(target)
        return (_copyUid(target.uidValidity, pairs) if pairs else b""), vanished

    def _copied(self, tag: bytes, command: bytes, code: bytes, vanished: bool) -> None:
        if vanished:
            self.sendNegativeResponse(tag, b"[EXPUNGEISSUED] Some of the requested messages no longer exist")
        elif command == b"MOVE":
            # RFC 6851 4.3: the COPYUID goes before the EXPUNGEs, untagged.
            self.sendPositiveResponse(tag, b"MOVE completed")
        else:
            self.sendPositiveResponse(tag, (code + b" " if code else b"") + b"COPY completed")

    def arg_storeModifiers(self, line: bytes) -> tuple[int | None, bytes]:
        """
        STORE's optional (UNCHANGEDSINCE n) (RFC 7162 3.1.3).
        """
        m = _UNCHANGEDSINCE.match(line)
        if m is None:
            if line.startswith(b"("):
                raise imap4.IllegalClientResponse("the only STORE modifier is (UNCHANGEDSINCE mod-sequence)")
            return None, line
        return int(m.group(1)), line[m.end() :]

    def do_STOREFLAGS(
        self,
        tag: bytes,
        messages: imap4.MessageSet,
        unchangedSince: int | None,
        mode: bytes,
        flags: list[bytes],
        uid: int = 0,
    ) -> None:
        # Twisted's answers a refused flag with BAD "Server error".
        item = mode.upper()
        silent = item.endswith(b".SILENT")
        kind = item[: -len(b".SILENT")] if silent else item
        modes = {b"FLAGS": 0, b"+FLAGS": 1, b"-FLAGS": -1}
        if kind not in modes:
            self.sendBadResponse(tag, b"STORE takes FLAGS, +FLAGS or -FLAGS, with .SILENT or not")
            return
        if unchangedSince is not None:
            self._enableCondstore()
        mbox = self._selected()
        names = [f.decode("utf-8", "replace") for f in flags]
        modified: list[int] = []
        if unchangedSince is not None:
            # Those changed since are left alone and named in [MODIFIED].
            chosen = imap4.MessageSet()
            for seq, u in mbox._select(messages, uid):
                if mbox.folder.has(u) and mbox.folder.modseq(u) > unchangedSince:
                    modified.append(u if uid else seq)
                else:
                    chosen.add(u if uid else seq)
            messages = chosen

        def stored(result: dict[int, list[str]]) -> None:
            for seq in sorted(result):
                items = []
                if uid:
                    items.append(b"UID %d" % (mbox.getUID(seq),))
                if not silent:
                    items.append(b"FLAGS (" + " ".join(result[seq]).encode("utf-8", "replace") + b")")
                if self._condstore:
                    items.append(b"MODSEQ (%d)" % (mbox.folder.modseq(mbox.getUID(seq)),))
                if not silent or self._condstore:
                    self.sendUntaggedResponse(b"%d FETCH (%s)" % (seq, b" ".join(items)))
            if modified:
                self.sendPositiveResponse(tag, b"[MODIFIED " + _uidSet(sorted(modified)) + b"] Conditional STORE failed")
            else:
                self.sendPositiveResponse(tag, b"STORE completed")

        if unchangedSince is not None and not messages.ranges:
            # Every message named was changed since (an empty MessageSet
            # cannot be asked what it holds).
            stored({})
            return
        maybeDeferred(mbox.store, messages, names, modes[kind], uid).addCallbacks(
            stored, self._failed, errbackArgs=(tag, b"STORE")
        )

    select_STORE = _command(
        do_STOREFLAGS,
        imap4.IMAP4Server.arg_seqset,
        arg_storeModifiers,
        imap4.IMAP4Server.arg_atom,
        imap4.IMAP4Server.arg_flaglist,
    )

    def do_UID(self, tag: bytes, command: bytes, line: bytes) -> None:
        command = command.upper()
        if command == b"EXPUNGE":
            messages, rest = self.arg_seqset(line)
            if rest.strip():
                raise imap4.IllegalClientResponse("UID EXPUNGE takes one set of UIDs")
            self._answerExpunge(tag, messages)
        elif command in (b"COPY", b"FETCH", b"STORE", b"SEARCH", b"MOVE", b"SORT", b"THREAD"):
            self.dispatchCommand(tag, command, line, uid=1)
        else:
            self.sendBadResponse(tag, b"UID goes with COPY, FETCH, STORE, SEARCH, SORT, THREAD, MOVE or EXPUNGE")

    select_UID = _command(do_UID, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_line)

    def do_EXPUNGE(self, tag: bytes) -> None:
        if not self._selected().isWriteable():
            self.sendNegativeResponse(tag, b"EXPUNGE needs the mailbox selected read-write (SELECT, not EXAMINE)")
            return
        self._answerExpunge(tag, None)

    select_EXPUNGE = _command(do_EXPUNGE)

    def _answerExpunge(self, tag: bytes, among: imap4.MessageSet | None) -> None:
        mbox = self._selected()
        # What others expunged first (EXPUNGE may report it), so that this
        # session's numbers are current when its own are counted.
        for seq in mbox.takeExpunged():
            self.sendUntaggedResponse(b"%d EXPUNGE" % (seq,))
        removed = maybeDeferred(mbox.expunge, among)

        def report(seqs: list[int]) -> None:
            for seq in seqs:
                self.sendUntaggedResponse(b"%d EXPUNGE" % (seq,))
            self.sendPositiveResponse(tag, b"EXPUNGE completed")

        removed.addCallbacks(report, self._failed, errbackArgs=(tag, b"EXPUNGE"))

    # -- FETCH and SEARCH --------------------------------------------------------

    def arg_fetchItems(self, line: bytes) -> tuple[tuple[list[Any], bool, int | None], bytes]:
        """
        FETCH's items, with CONDSTORE's MODSEQ item and (CHANGEDSINCE n)
        modifier (RFC 7162 3.1.4), which Twisted's parser does not know:
        taken off before it parses the rest.
        """
        changedSince = None
        m = _CHANGEDSINCE.search(line)
        if m is not None:
            changedSince = int(m.group(1))
            line = line[: m.start()]
        line, count = _MODSEQ_ITEM.subn(b"", line)
        # BINARY (RFC 3516) items, which Twisted's parser does not know.
        binary = [BinaryItem(m) for m in _BINARY_ITEM.finditer(line)]
        line = _BINARY_ITEM.sub(b"", line).strip()
        if line.startswith(b"(") and line.endswith(b")"):
            line = b"(" + b" ".join(line[1:-1].split()) + b")"
        if line in (b"", b"()"):
            if not count and changedSince is None and not binary:
                raise imap4.IllegalClientResponse("FETCH needs at least one item")
            return (list(binary), bool(count), changedSince), b""
        query, rest = imap4.IMAP4Server.arg_fetchatt(self, line)
        return (list(query) + binary, bool(count), changedSince), rest

    def do_FETCH(self, tag: bytes, messages: imap4.MessageSet, items: tuple[list[Any], bool, int | None], uid: int = 0) -> None:
        query, modseq, changedSince = items
        if modseq or changedSince is not None:
            self._enableCondstore()
        mbox = self._selected()
        seen: Deferred[Any] = succeed(None)
        if query and mbox.isWriteable() and _needsSeen(query):
            seen = mbox.markSeen(messages, uid)
            if not any(p.type == "flags" for p in query):
                query = list(query) + self.arg_fetchatt(b"FLAGS")[0]
        withModseq = self._condstore and (modseq or changedSince is not None or any(p.type == "flags" for p in query))
        seen.addCallback(
            lambda _: Deferred.fromCoroutine(self._fetch(mbox, messages, query, uid, withModseq, changedSince))
        )
        def answer(trouble: bytes | None) -> None:
            if trouble is None:
                self.sendPositiveResponse(tag, b"FETCH completed")
            else:
                self.sendNegativeResponse(tag, trouble)

        seen.addCallbacks(answer, self._failed, errbackArgs=(tag, b"FETCH"))

    select_FETCH = _command(do_FETCH, imap4.IMAP4Server.arg_seqset, arg_fetchItems)

    async def _fetch(
        self,
        mbox: "MaildirMailbox",
        messages: imap4.MessageSet,
        query: list[Any],
        uid: int,
        withModseq: bool = False,
        changedSince: int | None = None,
    ) -> bytes | None:
        """
        Send the FETCH data of each message, one at a time, each once the
        client has read the last (a FETCH of a whole mailbox is not queued
        in the transport); what the NO says if some could not be sent
        (expunged by others, or BINARY of an unknown encoding).
        """
        contents = _needsContents(query)
        trouble = None
        for seq, msg in mbox.fetch(messages, uid):
            if changedSince is not None and (msg.folder is None or msg.folder.modseq(msg.uid) <= changedSince):
                continue
            await self.whenOutputDrained()
            if contents and not msg.vanished:
                await msg.load()
            if msg.vanished:
                trouble = b"[EXPUNGEISSUED] Some of the requested messages no longer exist"
                continue
            self.resetTimeout()
            try:
                items = fetchItems(msg, query, uid)
            except UnknownEncoding:
                trouble = b"[UNKNOWN-CTE] A part has a Content-Transfer-Encoding BINARY cannot undo"
                continue
            finally:
                msg.unload()
            if withModseq and msg.folder is not None:
                items.append(b"MODSEQ (%d)" % (msg.folder.modseq(msg.uid),))
            self.transport.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items)))
        return trouble

    def do_SEARCH(self, tag: bytes, charset: Any, query: Any, uid: int = 0) -> None:
        returns: list[str] | None = None
        if query and isinstance(query[0], bytes) and query[0].upper() == b"RETURN":
            # ESEARCH (RFC 4731): SEARCH RETURN (MIN MAX COUNT ALL) ...
            if len(query) < 2 or not isinstance(query[1], list):
                self.sendBadResponse(tag, b"RETURN takes a parenthesised list of MIN, MAX, COUNT, ALL")
                return
            returns = [o.decode("ascii", "replace").upper() for o in query[1] if isinstance(o, bytes)]
            if len(returns) != len(query[1]) or not set(returns) <= {"MIN", "MAX", "COUNT", "ALL"}:
                self.sendBadResponse(tag, b"RETURN takes MIN, MAX, COUNT and ALL")
                return
            query = query[2:]
            if len(query) >= 2 and isinstance(query[0], bytes) and query[0].upper() == b"CHARSET":
                charset, query = query[1], query[2:]
        if charset is not None and (not isinstance(charset, bytes) or charset.upper() not in (b"UTF-8", b"US-ASCII")):
            self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Search in UTF-8 or US-ASCII")
            return
        mbox = self._selected()
        try:
            compiled = compileQuery(query, mbox.getMessageCount(), mbox.uids[-1] if mbox.uids else 0)
        except SearchError as e:
            self.sendBadResponse(tag, str(e).encode("utf-8", "replace"))
            return

        if compiled.modseq:
            self._enableCondstore()

        def found(rows: list[tuple[int, Any]]) -> None:
            matches = [n for n, _ in rows]
            highest = max((m for _, m in rows), default=0) if compiled.modseq else 0
            if returns is None:
                modseq = [b"(MODSEQ %d)" % highest] if highest else []
                self.sendUntaggedResponse(b" ".join([b"SEARCH"] + [b"%d" % n for n in matches] + modseq))
            else:
                line = _esearch(tag, uid, returns or ["ALL"], matches)
                if highest and matches:
                    # RFC 7162 3.1.5: with MIN or MAX alone, that message's.
                    modseqs = dict(rows)
                    if returns == ["MIN"]:
                        highest = modseqs[min(matches)]
                    elif returns == ["MAX"]:
                        highest = modseqs[max(matches)]
                    line += b" MODSEQ %d" % highest
                self.sendUntaggedResponse(line)
            self.sendPositiveResponse(tag, b"SEARCH completed")

        keep = (lambda c: c.modseq) if compiled.modseq else None
        Deferred.fromCoroutine(self._search(mbox, compiled, uid, keep)).addCallbacks(
            found, self._failed, errbackArgs=(tag, b"SEARCH")
        )

    async def _search(
        self, mbox: MaildirMailbox, query: Query, uid: int, keep: Any = None, contents: bool = False
    ) -> list[tuple[int, Any]]:
        """
        The sequence numbers (or UIDs) of the messages that match, each
        with what C{keep} takes of it (C{keep(candidate)}); contents read a
        window at a time if the keys (or C{contents}) need them.
        """
        matches = []
        contents = contents or query.contents
        for seq, msg in mbox.fetch(imap4.parseIdList(b"1:*"), 0):
            if msg.vanished:
                continue
            if contents:
                await msg.load()
                if msg.vanished:
                    continue
            candidate = Candidate(seq, msg.uid, msg.flags, msg.getSize(), msg.mtime)
            if msg.folder is not None:
                candidate.modseq = msg.folder.modseq(msg.uid)
            if contents:
                candidate.entity = msg.part
            try:
                if query.match(candidate):
                    matches.append((msg.uid if uid else seq, keep(candidate) if keep else None))
            finally:
                msg.unload()
        return matches

    def do_SORT(self, tag: bytes, line: bytes, uid: int = 0) -> None:
        self._sortOrThread(tag, line, uid, b"SORT")

    select_SORT = _command(do_SORT, imap4.IMAP4Server.arg_line)

    def do_THREAD(self, tag: bytes, line: bytes, uid: int = 0) -> None:
        self._sortOrThread(tag, line, uid, b"THREAD")

    select_THREAD = _command(do_THREAD, imap4.IMAP4Server.arg_line)

    def _sortOrThread(self, tag: bytes, line: bytes, uid: int, command: bytes) -> None:
        """
        SORT (criteria) charset keys, or THREAD algorithm charset keys
        (RFC 5256).
        """
        mbox = self._selected()
        try:
            words = imap4.parseNestedParens(line)
        except Exception:
            words = []
        returns: list[str] | None = None
        if command == b"SORT" and words and isinstance(words[0], bytes) and words[0].upper() == b"RETURN":
            # ESORT (RFC 5267): the answer as ESEARCH, in sort order.
            options = words[1] if len(words) > 1 and isinstance(words[1], list) else None
            returns = [o.decode("ascii", "replace").upper() for o in options or [] if isinstance(o, bytes)]
            if options is None or len(returns) != len(options) or not set(returns) <= {"MIN", "MAX", "COUNT", "ALL"}:
                self.sendBadResponse(tag, b"RETURN takes a parenthesised list of MIN, MAX, COUNT, ALL")
                return
            words = words[2:]
        try:
            if len(words) < 3:
                raise SearchError(f"{command.decode()} takes {'(criteria)' if command == b'SORT' else 'an algorithm'}, a charset and search keys")
            first, charset, keys = words[0], words[1], words[2:]
            if command == b"SORT":
                criteria = parseCriteria(first)
            else:
                algorithm = first.decode("ascii", "replace").upper() if isinstance(first, bytes) else ""
                if algorithm not in THREAD_ALGORITHMS:
                    raise SearchError("THREAD algorithms are ORDEREDSUBJECT and REFERENCES")
            compiled = compileQuery(keys, mbox.getMessageCount(), mbox.uids[-1] if mbox.uids else 0)
        except SearchError as e:
            self.sendBadResponse(tag, str(e).encode("utf-8", "replace"))
            return
        if not isinstance(charset, bytes) or charset.upper() not in (b"UTF-8", b"US-ASCII"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Use UTF-8 or US-ASCII")
            return

        if command == b"SORT":
            def keep(c: Candidate) -> dict[str, Any]:
                return {k: sortValue(k, c.entity, c.size, c.mtime) for k, _ in criteria}

            def answer(rows: list[tuple[int, Any]]) -> None:
                ids = sortIds(rows, criteria)
                if returns is None:
                    self.sendUntaggedResponse(b" ".join([b"SORT"] + [b"%d" % n for n in ids]))
                else:
                    self.sendUntaggedResponse(_esearch(tag, uid, returns or ["ALL"], ids, ordered=True))
                self.sendPositiveResponse(tag, b"SORT completed")

            d = self._search(mbox, compiled, uid, keep, needsContents(criteria))
        else:
            def keepThread(c: Candidate) -> Any:
                assert c.entity is not None
                return threadMessage(0, c.seq, c.entity, c.mtime)

            def answerThread(rows: list[tuple[int, Any]]) -> None:
                messages = []
                for ident, m in rows:
                    m.id = ident
                    messages.append(m)
                roots = orderedSubject(messages) if algorithm == "ORDEREDSUBJECT" else references(messages)
                self.sendUntaggedResponse(b"THREAD " + renderThreads(roots) if roots else b"THREAD")
                self.sendPositiveResponse(tag, b"THREAD completed")

            d = self._search(mbox, compiled, uid, keepThread, True)
            answer = answerThread
        Deferred.fromCoroutine(d).addCallbacks(answer, self._failed, errbackArgs=(tag, command))

    select_SEARCH = _command(do_SEARCH, imap4.IMAP4Server.opt_charset, imap4.IMAP4Server.arg_searchkeys)

def _guarded(parser: Any) -> Any:
    """
    An argument parser of Twisted's whose unexpected exceptions (on input
    it does not foresee) become a syntax error: the client gets BAD with
    the reason instead of "Server error" and a logged traceback.
    """
    expected = (imap4.IllegalClientResponse, imap4.IllegalOperation, imap4.IllegalMailboxEncoding)

    def refused(failure: Failure) -> None:
        if failure.check(*expected):
            failure.raiseException()
        raise imap4.IllegalClientResponse(f"cannot parse this argument ({failure.value})")

    def parse(self: Any, line: bytes) -> Any:
        try:
            result = parser(self, line)
        except expected:
            raise
        except Exception as e:
            raise imap4.IllegalClientResponse(f"cannot parse this argument ({e})")
        if isinstance(result, Deferred):
            result.addErrback(refused)
        return result

    return parse


def _guardParsers(cls: type) -> None:
    """
    Guard every argument parser of C{cls}'s command table (C{auth_FETCH}
    and the like: a handler, then parsers and constants).
    """
    names = {name for klass in cls.__mro__ for name in vars(klass)}
    for name in sorted(names):
        if name.split("_", 1)[0] not in ("unauth", "auth", "select", "logout"):
            continue
        entry = getattr(cls, name, None)
        if isinstance(entry, tuple) and entry:
            setattr(cls, name, (entry[0],) + tuple(_guarded(a) if callable(a) else a for a in entry[1:]))


_guardParsers(IMAPServer)


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
        p.portal = PeerPortal.forPeer(self.portal, addr, onLogin=p.loggedIn)
        p.factory = self
        p.POSTAUTH_TIMEOUT = self.timeout
        return p
