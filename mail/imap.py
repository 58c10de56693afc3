"""
The IMAP4rev1 server: L{twisted.mail.imap4.IMAP4Server} over a Maildir
account, which Twisted does not have.

What is added here: the account and mailboxes (Maildir++ folders, flags in
file names, UIDs and UIDVALIDITY from the store), per-session sequence
numbers with EXPUNGE reported only where RFC 3501 allows (NOOP, CHECK,
IDLE), \\Recent, \\Seen set by non-PEEK fetches, partial fetches
(C{BODY[]<0.100>}), byte-exact sections, literal and line size limits, and
new mail pushed to selected (and idling) sessions as it is delivered.
"""

from __future__ import annotations

import email.utils
import io
import os
from email.parser import BytesHeaderParser
from email.policy import compat32

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import imap4
from zope.interface import implementer

from coursenet.transport import noDelay
from mail.maildir import (
    DELIMITER,
    INBOX,
    BadFolderName,
    NoSuchFolder,
    flagsToLetters,
    lettersToFlags,
)

#: Longest command line (RFC 7162 recommends accepting at least 8192).
LINE_MAX = 65536
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

    def headerLines(self, names, negate: bool) -> bytes:
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

    def getHeaders(self, negate, *names):
        wanted = {(n.decode() if isinstance(n, bytes) else n).lower() for n in names}
        headers = {
            k.lower(): v for k, v in self.headerItems() if (k.lower() in wanted) != negate
        }
        if not negate and "content-type" in wanted and "content-type" not in headers:
            # RFC 2045 5.2: the default, so BODYSTRUCTURE says text/plain.
            headers["content-type"] = "text/plain; charset=us-ascii"
        return headers

    def getBodyFile(self):
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
            if boundary:
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


@implementer(imap4.IMessage, imap4.IMessageFile)
class MaildirMessage:
    """
    A message file in a Maildir, read on first use.
    """

    def __init__(self, uid: int, flags: list[str], path: str, size: int) -> None:
        self.uid = uid
        self.flags = flags
        self.path = path
        self.size = size
        self._part: _Part | None = None

    @property
    def part(self) -> _Part:
        if self._part is None:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = b""
            self._part = _Part(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        return self._part

    def open(self):
        return io.BytesIO(self.part.data)

    def getUID(self) -> int:
        return self.uid

    def getFlags(self) -> list[str]:
        return self.flags

    def getInternalDate(self) -> str:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            mtime = 0
        return email.utils.formatdate(mtime)

    def getHeaders(self, negate, *names):
        return self.part.getHeaders(negate, *names)

    def getBodyFile(self):
        return self.part.getBodyFile()

    def getSize(self) -> int:
        return self.size if self._part is None else len(self._part.data)

    def isMultipart(self) -> bool:
        return self.part.isMultipart()

    def getSubPart(self, part: int):
        return self.part.getSubPart(part)


@implementer(imap4.IMailbox, imap4.IMessageCopier, imap4.ICloseableMailbox)
class MaildirMailbox:
    """
    One session's view of a folder: its own sequence numbers, which change
    only when this session is told (EXISTS as mail arrives, EXPUNGE at
    NOOP, CHECK and IDLE or after its own EXPUNGE).
    """

    def __init__(self, store, folder, readWrite: bool) -> None:
        self._store = store
        self.folder = folder
        self.readWrite = readWrite
        folder.scan()
        if readWrite:
            self.recent = folder.claimNew()
        else:
            self.recent = {uid for uid in folder.uids() if folder.isNew(uid)}
        self.uids = folder.uids()
        self._gone: set[int] = set()
        self.listeners: list = []

    # -- keeping up with the folder ---------------------------------------

    def folderChanged(self, folder) -> None:
        present = set(folder.uids())
        known = set(self.uids)
        added = sorted(present - known - self._gone)
        removed = (known - present) - self._gone
        if added:
            if self.readWrite:
                self.recent |= folder.claimNew()
            self.uids.extend(added)
            for listener in list(self.listeners):
                listener.newMessages(len(self.uids), len(self.recent & set(self.uids)))
        if removed:
            self._gone |= removed
            for listener in list(self.listeners):
                notify = getattr(listener, "expungesPending", None)
                if notify is not None:
                    notify()

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

    def addListener(self, listener) -> None:
        if not self.listeners:
            self.folder.addListener(self)
        self.listeners.append(listener)

    def removeListener(self, listener) -> None:
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

    def requestStatus(self, names):
        return imap4.statusRequestHelper(self, names)

    def _flags(self, uid: int) -> list[str]:
        flags = lettersToFlags(self.folder.letters(uid)) if self.folder.has(uid) else []
        if uid in self.recent:
            flags.append("\\Recent")
        return flags

    def _message(self, uid: int) -> MaildirMessage:
        if not self.folder.has(uid):
            return MaildirMessage(uid, [], os.devnull, 0)
        return MaildirMessage(
            uid, self._flags(uid), self.folder.filename(uid), self.folder.size(uid)
        )

    def _select(self, messages, uid: bool):
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

    def fetch(self, messages, uid):
        return [(seq, self._message(u)) for seq, u in self._select(messages, uid)]

    def store(self, messages, flags, mode, uid):
        if not self.readWrite:
            raise imap4.ReadOnlyMailbox("The mailbox is read-only (EXAMINE)")
        flags = [f for f in flags if f.lower() != "\\recent"]
        try:
            letters = set(flagsToLetters(flags))
        except ValueError as e:
            raise imap4.MailboxException(f"{e}: only {' '.join(_PERMANENT)} are kept")
        result = {}
        for seq, u in self._select(messages, uid):
            if not self.folder.has(u):
                continue
            current = set(self.folder.letters(u))
            if mode == 1:
                new = current | letters
            elif mode == -1:
                new = current - letters
            else:
                new = (current - set("DFPRST")) | letters
            try:
                self.folder.setLetters(u, "".join(new))
            except KeyError:
                continue
            result[seq] = self._flags(u)
        return result

    def markSeen(self, messages, uid) -> None:
        for _, u in self._select(messages, uid):
            if self.folder.has(u) and "S" not in self.folder.letters(u):
                try:
                    self.folder.setLetters(u, self.folder.letters(u) + "S")
                except KeyError:
                    pass

    def expunge(self):
        if not self.readWrite:
            raise imap4.ReadOnlyMailbox("The mailbox is read-only (EXAMINE)")
        doomed = [
            u for u in self.uids if self.folder.has(u) and "T" in self.folder.letters(u)
        ]
        seqs = [n + 1 for n, u in enumerate(self.uids) if u in set(doomed)]
        self.uids = [u for u in self.uids if u not in set(doomed)]
        self.folder.remove(doomed)
        return sorted(seqs, reverse=True)

    def addMessage(self, message, flags=(), date=None):
        data = message.read()
        maxSize = self._store.maxMessageSize
        if maxSize is not None and len(data) > maxSize:
            raise imap4.MailboxException(f"[TOOBIG] Messages are limited to {maxSize} octets")
        flags = [f for f in flags if f.lower() != "\\recent"]
        letters = flagsToLetters(flags)
        mtime = None
        if date:
            parsed = email.utils.parsedate_tz(date if isinstance(date, str) else date.decode())
            if parsed is not None:
                mtime = email.utils.mktime_tz(parsed)
        return self._store.append(self.folder, data, letters, mtime)

    def copy(self, message):
        letters = flagsToLetters(f for f in message.getFlags() if f != "\\Recent")
        return self._store.append(
            self.folder,
            message.open().read(),
            letters,
            os.stat(message.path).st_mtime if os.path.exists(message.path) else None,
        )


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

    def __init__(self, store, user: str) -> None:
        self.store = store
        self.user = user

    def _path(self, name: str) -> str:
        try:
            return self.store.folderPath(self.user, name)
        except BadFolderName as e:
            raise imap4.MailboxException(str(e))

    def addMailbox(self, name, mbox=None):
        return self.create(name)

    def create(self, pathspec):
        name = pathspec.rstrip(DELIMITER)
        self._path(name)
        if name.upper() == INBOX:
            return False
        levels = name.split(DELIMITER)
        for n in range(1, len(levels) + 1):
            try:
                self.store.createFolder(self.user, DELIMITER.join(levels[:n]))
            except FileExistsError:
                if n == len(levels):
                    raise imap4.MailboxCollision(name)
        return True

    def select(self, name, rw=True):
        self._path(name)
        try:
            folder = self.store.folder(self.user, name)
        except NoSuchFolder:
            return None
        return MaildirMailbox(self.store, folder, bool(rw))

    def delete(self, name):
        self._path(name)
        try:
            self.store.deleteFolder(self.user, name)
        except NoSuchFolder:
            raise imap4.MailboxException("No such mailbox")

    def rename(self, oldname, newname):
        self._path(oldname)
        self._path(newname)
        try:
            self.store.renameFolder(self.user, oldname, newname)
        except NoSuchFolder:
            raise imap4.NoSuchMailbox(oldname)
        except FileExistsError:
            raise imap4.MailboxCollision(newname)

    def _canonical(self, name: str) -> str:
        return INBOX if name.upper() == INBOX else name

    def isSubscribed(self, name):
        return self._canonical(name) in self.store.subscriptions(self.user)

    def subscribe(self, name):
        name = self._canonical(name)
        subs = self.store.subscriptions(self.user)
        if name not in subs:
            self.store.setSubscriptions(self.user, subs + [name])

    def unsubscribe(self, name):
        name = self._canonical(name)
        subs = self.store.subscriptions(self.user)
        if name not in subs:
            raise imap4.MailboxException(f"Not subscribed to {name}")
        self.store.setSubscriptions(self.user, [s for s in subs if s != name])

    def listMailboxes(self, ref, wildcard):
        if not wildcard:
            return [("", _ListEntry(["\\Noselect"]))]
        pattern = imap4.wildcardToRegexp(ref + wildcard, DELIMITER)
        names = self.store.listFolders(self.user)
        result = []
        for name in names:
            if pattern.fullmatch(name) or (name == INBOX and pattern.fullmatch("inbox")):
                children = any(n.startswith(name + DELIMITER) for n in names)
                attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
                result.append((name, _ListEntry(attributes)))
        return result

    def getPersonalNamespaces(self):
        return [[b"", DELIMITER.encode()]]

    def getSharedNamespaces(self):
        return None

    def getOtherNamespaces(self):
        return None

    def getUserNamespaces(self):
        return None


def _needsSeen(query) -> bool:
    for part in query:
        if part.type in ("rfc822", "rfc822text"):
            return True
        if part.type == "body" and not part.peek and (
            part.header or part.text or part.mime or part.empty
        ):
            return True
    return False


class IMAPServer(imap4.IMAP4Server):
    """
    One IMAP session.
    """

    IDENT = b"coursenet IMAP4rev1 server ready"
    MAX_LENGTH = LINE_MAX
    _log = Logger()

    def __init__(self, contextFactory=None, maxMessageSize: int | None = None) -> None:
        imap4.IMAP4Server.__init__(self, None, contextFactory)
        self.maxMessageSize = maxMessageSize

    def connectionMade(self):
        noDelay(self.transport)
        if ISSLTransport.providedBy(self.transport) or self.ctx is None:
            self.challengers = {b"PLAIN": imap4.PLAINCredentials, b"LOGIN": imap4.LOGINCredentials}
        imap4.IMAP4Server.connectionMade(self)

    def lineLengthExceeded(self, line):
        self.sendLine(b"* BYE Line too long: commands are limited to %d octets" % LINE_MAX)
        self.transport.loseConnection()

    def _fileLiteral(self, size):
        if self.maxMessageSize is not None and size > self.maxMessageSize:
            raise imap4.IllegalClientResponse(
                f"[TOOBIG] Literal of {size} octets exceeds the maximum message"
                f" size of {self.maxMessageSize} octets"
            )
        return imap4.IMAP4Server._fileLiteral(self, size)

    # -- changes made by others ----------------------------------------------

    def _refresh(self) -> None:
        if self.mbox is not None:
            self.mbox.folder.scan()
            for seq in self.mbox.takeExpunged():
                self.sendUntaggedResponse(b"%d EXPUNGE" % (seq,))

    def expungesPending(self) -> None:
        if self.parseState == "idle":
            self._refresh()

    def do_NOOP(self, tag):
        self._refresh()
        imap4.IMAP4Server.do_NOOP(self, tag)

    select_NOOP = (do_NOOP,)

    def do_CHECK(self, tag):
        self._refresh()
        imap4.IMAP4Server.do_CHECK(self, tag)

    select_CHECK = (do_CHECK,)

    def do_IDLE(self, tag):
        imap4.IMAP4Server.do_IDLE(self, tag)
        self._refresh()

    select_IDLE = (do_IDLE,)
    auth_IDLE = select_IDLE

    def parse_idle(self, *args):
        line = args[0] if args else b""
        if line.strip().upper() != b"DONE":
            self.parseState = self.lastState
            del self.lastState
            self.sendBadResponse(self.parseTag, b"Expected DONE to end IDLE")
            del self.parseTag
            return
        imap4.IMAP4Server.parse_idle(self, *args)

    # -- FETCH -----------------------------------------------------------------

    def do_FETCH(self, tag, messages, query, uid=0):
        if query and self.mbox.isWriteable() and _needsSeen(query):
            self.mbox.markSeen(messages, uid)
            if not any(p.type == "flags" for p in query):
                query = list(query) + [imap4._FetchParser.Flags()]
        imap4.IMAP4Server.do_FETCH(self, tag, messages, query, uid)

    select_FETCH = (do_FETCH, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_fetchatt)

    def spew_body(self, part, id, msg, _w=None, _f=None):
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


class IMAPFactory(ServerFactory):
    """
    Builds L{IMAPServer}s for one portal.
    """

    def __init__(self, portal, contextFactory=None, maxMessageSize=None, timeout=1800) -> None:
        self.portal = portal
        self.contextFactory = contextFactory
        self.maxMessageSize = maxMessageSize
        self.timeout = timeout

    def buildProtocol(self, addr):
        p = IMAPServer(self.contextFactory, self.maxMessageSize)
        p.portal = self.portal
        p.factory = self
        p.POSTAUTH_TIMEOUT = self.timeout
        return p

