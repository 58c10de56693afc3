"""
The BFTP server: a line protocol for commands, BFTP chunks for file data.

Each command is a C{do_VERB} method.  One that finishes later returns a
L{Deferred}; until it fires the protocol reads nothing more, so a client
may pipeline commands and they are answered in order.
"""

from __future__ import annotations

import collections
import os
import posixpath
import re
import stat as statmod
from collections.abc import Callable, MutableSet
from dataclasses import dataclass
from typing import BinaryIO

from twisted.cred.credentials import Anonymous
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from bftp import digests
from bftp.fs import PARTIAL_PREFIX, Entry, Jail, formatTime, osReply
from bftp.interfaces import IAccount
from bftp.policy import READ, WRITE, Policy
from bftp.quota import PartialSweeper, Quotas
from bftp.transfer import (
    ChunkedFileSender,
    ChunkSink,
    DigestCache,
    PooledReader,
    bufferPool,
    hashInThread,
    largeTLSWrites,
    pooledReader,
    setReadSize,
    storeDigest,
)
from bftp.wire import (
    MAX_CHUNK,
    MAX_LINE,
    SUPPORTED_VERSIONS,
    VERSION,
    Code,
    Command,
    FramingError,
    ProtocolError,
    encodePath,
    decodeOffset,
    formatMultiline,
    formatReply,
    parseCommand,
)
from coursenet.accounts import PasswordFrom
from coursenet.admission import Admission, AdmittingFactory
from coursenet.logs import peerName
from coursenet.receiver import CommandReceiver
from coursenet.throttle import hostOf
from coursenet.transport import noDelay

#: Commands allowed before HELLO, and before login.
_BEFORE_HELLO = {"HELLO", "HELP", "QUIT", "NOOP"}
_BEFORE_LOGIN = _BEFORE_HELLO | {"USER", "PASS"}
_WRITES = {"PUT", "DELETE", "MKDIR", "RMDIR", "RENAME"}
_DIGEST_LINE = re.compile(rb"[0-9a-fA-F]{64}")
#: How much a connection reads at a time while file data streams in.
_TRANSFER_READ = 1 << 20
#: An upload is written back to disk in the background every this many
#: bytes (L{ChunkSink}), so the fsync before its 226 is short.
_WRITEBACK = 64 << 20

HELP = [
    "HELLO BFTP/1            announce the protocol version (first)",
    "USER name / PASS secret log in",
    "PWD                     print the current directory",
    "CD path                 change directory",
    "LIST [path]             list a directory: type size mtime name",
    "STAT path               exists, type, size, mtime, partial upload",
    "GET path [offset]       download, from offset to resume",
    "PUT path [offset]       upload, from offset to resume",
    "HASH path [algorithm]   a file's digest: sha256 (default) or blake3",
    "DELETE path             delete a file (and its unfinished upload)",
    "MKDIR path / RMDIR path make / remove a directory",
    "RENAME from to          rename a file or directory",
    "NOOP / HELP / QUIT",
    "Paths are UTF-8, percent-encoded: a space is %20.",
]


_BAD_DIGEST_LINE = "expected the digest of the file as 64 hex digits after the data; upload kept for resume"


@dataclass
class _Upload:
    vpath: str
    #: The path as located (L{Jail.located}): the key of the upload lock.
    key: str
    #: The student whose quota the data counts against, if any.
    owner: str | None
    real: str
    partial: str
    file: BinaryIO
    sink: ChunkSink | None = None
    #: Reads the data into pooled buffers on plain TCP (L{PooledReader}).
    reader: PooledReader | None = None
    awaitingDigest: bool = False
    #: The data is being made durable and renamed into place: the commit,
    #: not a lost connection, ends the upload.
    committing: bool = False


class BFTPServerProtocol(CommandReceiver, TimeoutMixin):
    """
    One client connection.
    """

    # Splitting at LF lets a bare LF get a diagnostic instead of leaving
    # the client waiting for a reply.
    maxLineLength = MAX_LINE
    requireCRLF = True
    _log = Logger()

    def __init__(self) -> None:
        self.account: IAccount | None = None
        self.cwd = "/"
        self._helloDone = False
        self._user: str | None = None
        self._failures = 0
        self._upload: _Upload | None = None
        self._openFiles: set[int] = set()
        self._lost = False
        self._loginDeadline: IDelayedCall | None = None
        #: A GET's chunks are going out: no reply may be written until then.
        self._sending = False
        #: The digest algorithm of this session's transfers (HELLO).
        self.digest = digests.SHA256

    @property
    def who(self) -> str:
        """
        The client as log lines name it: C{127.0.0.1:56480 [alice]}.
        """
        return peerName(self.peer, self.account.name if self.account is not None else None)

    @staticmethod
    def busyReply(text: str) -> bytes:
        return formatReply(Code.CLOSING, text)

    # -- connection ---------------------------------------------------------

    def makeConnection(self, transport) -> None:
        largeTLSWrites(transport)
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        # Replies are small and follow the client's command: do not let
        # Nagle hold one back until the previous segment is acknowledged.
        noDelay(self.transport)
        self.setTimeout(self.factory.idleTimeout)
        self._loginDeadline = self.callLater(self.factory.loginTimeout, self._loginTimedOut)
        self.reply(Code.READY, f"{VERSION} server ready; send HELLO {VERSION}")

    def callLater(self, period, func, *args):
        """
        TimeoutMixin's (and the login deadline's) scheduling: on the
        factory's clock, not the global reactor.
        """
        return self.factory.reactor.callLater(period, func, *args)

    def _loginTimedOut(self) -> None:
        self._loginDeadline = None
        self.reply(Code.CLOSING, f"not logged in after {self.factory.loginTimeout} seconds; closing")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._lost = True
        self.setTimeout(None)
        if self._loginDeadline is not None and self._loginDeadline.active():
            self._loginDeadline.cancel()
        if self._upload is not None and not self._upload.committing:
            self._log.info(
                "{peer} left during upload of {path}; {n} bytes kept for resume",
                peer=self.who, path=self._upload.vpath,
                n=self._upload.sink.size if self._upload.sink else "all",
            )
            self._endUpload(keepPartial=True)
        for fd in list(self._openFiles):
            self._close(fd)

    def timeoutConnection(self) -> None:
        if self._sending:
            # A reply here would land inside the file data: cut the stream.
            self._log.info(
                "{peer} read nothing of a download for {t} s; aborting",
                peer=self.who, t=self.factory.idleTimeout,
            )
            self._connectedOutbox().abortConnection()
            return
        self._log.info("{peer} idle for {t} s; closing", peer=self.who, t=self.factory.idleTimeout)
        self.reply(Code.CLOSING, f"idle for {self.factory.idleTimeout} seconds; closing")
        self.transport.loseConnection()

    def reply(self, code: int, text: str) -> None:
        self.transport.write(formatReply(code, text))

    # -- input --------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._upload is not None and self._upload.awaitingDigest:
            # It stood where the digest goes: a bad digest line, not a
            # command to drop while the upload waits on.
            self.resetTimeout()
            self._endUpload(keepPartial=True)
            self.reply(Code.BAD_ARGUMENT, _BAD_DIGEST_LINE)
            return
        self.reply(Code.SYNTAX, f"line too long: the limit is {MAX_LINE} bytes")

    def bareLineFeed(self, line: bytes) -> None:
        self.resetTimeout()
        self.reply(Code.SYNTAX, "lines must end with CRLF (\\r\\n); line ignored")

    def lineReceived(self, line: bytes) -> Deferred | None:
        self.resetTimeout()
        if self._upload is not None and self._upload.awaitingDigest:
            return self._run(self._finishUpload, line)
        try:
            command = parseCommand(line)
        except ProtocolError as e:
            self.reply(e.code, e.message)
            return None
        return self._run(self._dispatch, command)

    def _run(self, f, *args) -> Deferred:
        """
        Run a command; the receiver reads no further input while the
        L{Deferred} returned is pending.
        """
        return maybeDeferred(f, *args).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if self._lost:
            return
        if failure.check(ProtocolError):
            e = failure.value
            self.reply(e.code, e.message)
        else:
            self._log.failure("command failed", failure)
            self.reply(Code.LOCAL_ERROR, "internal server error; the command was not completed")

    def _dispatch(self, command: Command):
        verb = command.verb
        handler = getattr(self, "do_" + verb, None)
        if handler is None:
            raise ProtocolError(Code.SYNTAX, f"unknown command {verb}; try HELP")
        if not self._helloDone and verb not in _BEFORE_HELLO:
            raise ProtocolError(Code.BAD_SEQUENCE, f"send HELLO {VERSION} first")
        if self.account is None and verb not in _BEFORE_LOGIN:
            raise ProtocolError(Code.NOT_LOGGED_IN, "log in first with USER and PASS")
        if verb in _WRITES:
            assert self.account is not None  # no write is allowed before login
            if self.account.readOnly:
                raise ProtocolError(Code.PERMISSION, f"{verb} refused: account {self.account.name} is read-only")
        if self.account is not None:
            # Not before login: a stranger's flood of commands must not
            # become a flood of log lines.
            self._log.debug("{peer}: {line}", peer=self.who, line=command.raw)
        return handler(command)

    # -- argument helpers --------------------------------------------------

    def _args(self, command: Command, least: int, most: int, usage: str) -> tuple[str, ...]:
        if not least <= len(command.args) <= most:
            raise ProtocolError(Code.BAD_ARGUMENT, f"usage: {usage}")
        return command.args

    def _path(self, arg: str, access: str = READ) -> str:
        """
        The virtual path C{arg} names, once the policy lets this account
        C{access} it both as typed and with its symbolic links followed.
        """
        jail = self.factory.jail
        vpath = jail.resolve(self.cwd, arg)
        assert self.account is not None
        policy = self.factory.policy
        policy.check(self.account, access, vpath)
        canonical = jail.canonical(vpath)
        if canonical != vpath:
            policy.check(self.account, access, canonical)
        return vpath

    def _stat(self, vpath: str) -> os.stat_result:
        st = self.factory.jail.stat(vpath)
        if st is None:
            raise ProtocolError(Code.NOT_FOUND, f"{vpath}: no such file or directory")
        return st

    def _open(self, real: str, flags: int, mode: int = 0o644) -> int:
        fd = os.open(real, flags | os.O_CLOEXEC, mode)
        self._openFiles.add(fd)
        return fd

    def _close(self, fd: int) -> None:
        if fd in self._openFiles:
            self._openFiles.discard(fd)
            os.close(fd)

    # -- session commands ---------------------------------------------------

    def do_HELLO(self, command: Command) -> None:
        if not command.args:
            raise ProtocolError(Code.BAD_ARGUMENT, f"usage: HELLO {VERSION}")
        # digest=NAME,NAME offers algorithms (section 8.4); a server that
        # predates it takes it for a version it does not know, and ignores it.
        offered = [
            name
            for arg in command.args if arg.lower().startswith("digest=")
            for name in arg[len("digest="):].split(",") if name
        ]
        versions = [arg for arg in command.args if not arg.lower().startswith("digest=")]
        for version in versions:
            if version.upper() in SUPPORTED_VERSIONS:
                self._helloDone = True
                negotiated = ""
                if offered and self.factory.digestAlgorithms:
                    self.digest = digests.choose(offered, self.factory.digestAlgorithms)
                    negotiated = f" digest={self.digest}"
                self.reply(
                    Code.OK,
                    f"{VERSION} max-line={MAX_LINE} max-chunk={MAX_CHUNK}"
                    f" max-file-size={self.factory.maxFileSize or 0}{negotiated}",
                )
                return
        if not versions:
            raise ProtocolError(Code.BAD_ARGUMENT, f"usage: HELLO {VERSION} [digest=blake3,sha256]")
        raise ProtocolError(
            Code.BAD_VERSION,
            f"version {' '.join(command.args)[:64]} not supported; this server speaks {' '.join(SUPPORTED_VERSIONS)}",
        )

    def do_USER(self, command: Command) -> None:
        if self.account is not None:
            raise ProtocolError(Code.BAD_SEQUENCE, f"already logged in as {self.account.name}")
        (name,) = self._args(command, 1, 1, "USER name")
        self._user = name
        self.reply(Code.NEED_PASSWORD, f"password required for {name}")

    def do_PASS(self, command: Command) -> Deferred:
        if self.account is not None:
            raise ProtocolError(Code.BAD_SEQUENCE, f"already logged in as {self.account.name}")
        if self._user is None:
            raise ProtocolError(Code.BAD_SEQUENCE, "send USER first")
        user, self._user = self._user, None
        credentials: Anonymous | PasswordFrom
        if user == "anonymous" and self.factory.anonymous:
            credentials = Anonymous()
        else:
            # The password check waits as long as the throttle says
            # (coursenet.throttle); it never refuses a right password.
            credentials = PasswordFrom(user, command.rest, hostOf(self.peer))
        # The login deadline stands still while the password is checked: the
        # throttle may hold a check for a while, but never to refuse it.
        deadline, remaining = self._loginDeadline, None
        if deadline is not None and deadline.active():
            remaining = deadline.getTime() - self.factory.reactor.seconds()
            deadline.reset(365 * 24 * 3600)

        def resume(result):
            if remaining is not None and deadline.active():
                deadline.reset(remaining)
            return result

        d = self.factory.portal.login(credentials, None, IAccount).addBoth(resume)

        def loggedIn(result):
            _, account, _ = result
            if self._loginDeadline is not None and self._loginDeadline.active():
                self._loginDeadline.cancel()
            policy = self.factory.policy
            unusable = None if account.readOnly or policy.isAdmin(account) else policy.folderRefusal(account.name)
            if unusable is not None:
                raise ProtocolError(Code.NOT_LOGGED_IN, unusable)
            try:
                self.cwd = self.factory.makeFolders(account)
            except OSError as e:
                self._log.error("cannot make the folders of {user}: {e}", user=account.name, e=e)
                raise ProtocolError(Code.LOCAL_ERROR, f"cannot make your folders on the server: {e.strerror}; try later")
            self.account = account
            self._log.info("{peer} logged in", peer=self.who)
            if account.readOnly:
                note = " (read-only)"
            elif policy.classMode:
                note = f" ({policy.role(account)}, home {encodePath(self.cwd)})"
            else:
                note = ""
            self.reply(Code.LOGGED_IN, f"logged in as {account.name}{note}")

        def refused(failure: Failure) -> Deferred[None]:
            failure.trap(UnauthorizedLogin)
            self._failures += 1
            # Answer late, and after a few, hang up.
            wait: Deferred = Deferred()
            self.factory.reactor.callLater(self.factory.loginDelay, wait.callback, None)

            def answer(_):
                if self._failures >= self.factory.maxLoginFailures:
                    self.reply(Code.CLOSING, "too many failed logins; closing")
                    self.transport.loseConnection()
                else:
                    self.reply(Code.NOT_LOGGED_IN, "login incorrect")

            return wait.addCallback(answer)

        return d.addCallbacks(loggedIn, refused)

    def do_NOOP(self, command: Command) -> None:
        self.reply(Code.OK, "ok")

    def do_HELP(self, command: Command) -> None:
        self.transport.write(formatMultiline(Code.HELP, HELP, "end of help"))

    def do_QUIT(self, command: Command) -> None:
        self.reply(Code.BYE, "goodbye")
        self.transport.loseConnection()

    # -- directory commands -------------------------------------------------

    def do_PWD(self, command: Command) -> None:
        self.reply(Code.PATH_CREATED, encodePath(self.cwd))

    def do_CD(self, command: Command) -> None:
        (arg,) = self._args(command, 1, 1, "CD path")
        vpath = self._path(arg)
        if not statmod.S_ISDIR(self._stat(vpath).st_mode):
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: not a directory")
        self.cwd = vpath
        self.reply(Code.FILE_OK, encodePath(vpath))

    def do_LIST(self, command: Command) -> None:
        (arg,) = self._args(command, 0, 1, "LIST [path]") or (".",)
        vpath = self._path(arg)
        st = self._stat(vpath)
        if statmod.S_ISDIR(st.st_mode):
            account, policy, jail = self.account, self.factory.policy, self.factory.jail
            assert account is not None
            entries = jail.listdir(vpath)
            if not policy.isAdmin(account):
                entries = [e for e in entries if self._visible(posixpath.join(vpath, e.name))]
        else:
            entries = [Entry.fromStat(posixpath.basename(vpath), st)]
        lines = [f"{e.kind} {e.size} {formatTime(e.mtime)} {encodePath(e.name)}" for e in entries]
        self.transport.write(
            formatMultiline(
                Code.LISTING, lines,
                f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'} in {encodePath(vpath)}",
            )
        )

    def _visible(self, vpath: str) -> bool:
        """
        Whether a listing shows this account the entry C{vpath}: it may
        read it as named and where its links lead.
        """
        assert self.account is not None
        policy = self.factory.policy
        if not policy.visible(self.account, vpath):
            return False
        try:
            canonical = self.factory.jail.canonical(vpath)
        except ProtocolError:
            return False  # a link out of the root (listdir leaves those out)
        return canonical == vpath or policy.visible(self.account, canonical)

    def do_STAT(self, command: Command) -> None:
        (arg,) = self._args(command, 1, 1, "STAT path")
        vpath = self._path(arg)
        st = self.factory.jail.stat(vpath)
        facts = [f"path={encodePath(vpath)}"]
        if st is None:
            facts.append("exists=no")
        else:
            e = Entry.fromStat(posixpath.basename(vpath), st)
            facts += ["exists=yes", f"type={e.kind}", f"size={e.size}", f"mtime={formatTime(e.mtime)}"]
        assert self.account is not None
        # An unfinished upload is shown only to those who could resume it.
        mayWrite = self.factory.policy.refusal(self.account, WRITE, vpath) is None
        if vpath != "/":
            try:
                partial = os.stat(self.factory.jail.partialPath(vpath)).st_size if mayWrite else 0
            except (OSError, ProtocolError):
                partial = 0
            facts.append(f"partial={partial}")
        self.reply(Code.STATUS, " ".join(facts))

    def do_MKDIR(self, command: Command) -> None:
        (arg,) = self._args(command, 1, 1, "MKDIR path")
        vpath = self._path(arg, WRITE)
        if self.factory.jail.located(vpath) in self.factory.uploads:
            # The upload's rename into place would then fail.
            raise ProtocolError(Code.BUSY, f"{vpath}: an upload is in progress")
        try:
            os.mkdir(self.factory.jail.real(vpath))
        except OSError as e:
            raise osReply(e, vpath)
        self.reply(Code.PATH_CREATED, f"{encodePath(vpath)} created")

    def do_RMDIR(self, command: Command) -> None:
        (arg,) = self._args(command, 1, 1, "RMDIR path")
        vpath = self._path(arg, WRITE)
        if vpath == "/":
            raise ProtocolError(Code.BAD_NAME, "the root cannot be removed")
        if os.path.islink(self.factory.jail.real(vpath)):
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: a symbolic link; use DELETE")
        if not statmod.S_ISDIR(self._stat(vpath).st_mode):
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: not a directory; use DELETE")
        if self._uploadsBelow(vpath):
            raise ProtocolError(Code.BUSY, f"{vpath}: an upload is in progress inside")
        real = self.factory.jail.real(vpath)
        names = os.listdir(real)
        if not all(n.startswith(PARTIAL_PREFIX) for n in names):
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: directory not empty")
        # Only unfinished uploads are left; they go with the directory.
        freed = 0
        try:
            for name in names:
                path = os.path.join(real, name)
                freed += os.lstat(path).st_size
                os.unlink(path)
            os.rmdir(real)
        except OSError as e:
            raise osReply(e, vpath)
        finally:
            self.factory.quotas.freed(self.factory.policy.ownerOf(self.factory.jail.located(vpath)), freed)
        self.reply(Code.FILE_OK, f"{encodePath(vpath)} removed")

    def _uploadsBelow(self, vpath: str) -> bool:
        """
        Whether an upload runs to C{vpath} or anywhere below it, however
        the path reaches there.
        """
        jail = self.factory.jail
        tops = {jail.located(vpath), jail.canonical(vpath)}
        prefixes = tuple(top.rstrip("/") + "/" for top in tops)
        return any(u in tops or u.startswith(prefixes) for u in self.factory.uploads)

    def do_DELETE(self, command: Command) -> None:
        (arg,) = self._args(command, 1, 1, "DELETE path")
        vpath = self._path(arg, WRITE)
        jail = self.factory.jail
        key = jail.located(vpath)
        if key in self.factory.uploads:
            raise ProtocolError(Code.BUSY, f"{vpath}: an upload is in progress")
        real = jail.real(vpath)
        link = os.path.islink(real)
        st = jail.stat(vpath)
        if st is not None and statmod.S_ISDIR(st.st_mode) and not link:
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: is a directory; use RMDIR")
        removed = []
        freed = 0
        try:
            if st is not None or link:
                freed += os.lstat(real).st_size
                os.unlink(real)
                removed.append("file")
            partial = jail.partialPath(vpath)
            size = os.lstat(partial).st_size
            os.unlink(partial)
            freed += size
            removed.append("unfinished upload")
        except FileNotFoundError:
            pass
        except OSError as e:
            raise osReply(e, vpath)
        finally:
            self.factory.quotas.freed(self.factory.policy.ownerOf(key), freed)
        if not removed:
            raise ProtocolError(Code.NOT_FOUND, f"{vpath}: no such file")
        self.reply(Code.FILE_OK, f"{encodePath(vpath)} deleted ({' and '.join(removed)})")

    def do_RENAME(self, command: Command) -> None:
        src, dst = self._args(command, 2, 2, "RENAME from to")
        vsrc, vdst = self._path(src, WRITE), self._path(dst, WRITE)
        if "/" in (vsrc, vdst):
            raise ProtocolError(Code.BAD_NAME, "the root cannot be renamed or replaced")
        if self._uploadsBelow(vsrc) or self._uploadsBelow(vdst):
            raise ProtocolError(Code.BUSY, "an upload to that path is in progress; try later")
        jail = self.factory.jail
        self._stat(vsrc)
        if jail.stat(vdst) is not None:
            raise ProtocolError(Code.EXISTS, f"{vdst}: already exists; DELETE it first")
        policy = self.factory.policy
        owners = {policy.ownerOf(jail.located(vsrc)), policy.ownerOf(jail.located(vdst))}
        try:
            os.rename(jail.real(vsrc), jail.real(vdst))
        except OSError as e:
            raise osReply(e, vdst)
        if len(owners) > 1:
            # Data moved from one account's space to another's.
            for owner in owners:
                self.factory.quotas.freed(owner, None)
        self.reply(Code.FILE_OK, f"renamed to {encodePath(vdst)}")

    # -- file data ------------------------------------------------------------

    def _openRegular(self, vpath: str) -> tuple[int, os.stat_result]:
        # Check the type before opening: opening a FIFO would block the
        # whole server.  O_NONBLOCK covers a swap between the two.
        if not statmod.S_ISREG(self._stat(vpath).st_mode):
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: not a regular file")
        try:
            fd = self._open(self.factory.jail.real(vpath), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise osReply(e, vpath)
        st = os.fstat(fd)
        if not statmod.S_ISREG(st.st_mode):
            self._close(fd)
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: not a regular file")
        return fd, st

    def do_HASH(self, command: Command) -> Deferred:
        args = self._args(command, 1, 2, "HASH path [sha256|blake3]")
        vpath = self._path(args[0])
        # SHA-256 unless asked: what sha256sum users compare with.
        algorithm = args[1].lower() if len(args) > 1 else digests.SHA256
        if algorithm not in self.factory.digestAlgorithms + (digests.SHA256,):
            known = " ".join(sorted(set(self.factory.digestAlgorithms + (digests.SHA256,))))
            raise ProtocolError(Code.BAD_ARGUMENT, f"unknown digest algorithm {args[1][:32]}; this server has {known}")
        fd, st = self._openRegular(vpath)
        d = self.factory.digests.digest(fd, st, algorithm)
        self._close(fd)  # the digest reads a duplicate
        return d.addCallback(lambda hexdigest: self.reply(Code.DIGEST, f"{hexdigest} {encodePath(vpath)}"))

    def do_GET(self, command: Command) -> Deferred:
        args = self._args(command, 1, 2, "GET path [offset]")
        vpath = self._path(args[0])
        offset = decodeOffset(args[1]) if len(args) > 1 else 0
        fd, st = self._openRegular(vpath)
        if offset > st.st_size:
            self._close(fd)
            raise ProtocolError(Code.BAD_ARGUMENT, f"offset {offset} is past the end of {vpath} ({st.st_size} bytes)")
        self.reply(Code.DATA_FOLLOWS, f"{st.st_size} {offset} sending {st.st_size - offset} bytes")
        sender = ChunkedFileSender(
            fd, offset, st.st_size,
            progress=lambda n: self.resetTimeout(),
            useSendfile=self.factory.sendfile,
        )
        digest = self.factory.digests.digest(fd, st, self.digest)
        self._sending = True
        sending = sender.beginSending(self.transport)

        def sent(result):
            self._sending = False
            return result

        sending.addBoth(sent)

        def digestFailed(failure):
            # While chunks are still going out no reply can be slipped in:
            # the stream must be cut.  After the end chunk, 451 says it.
            if not sending.called:
                self.transport.abortConnection()
            return failure

        digest.addErrback(digestFailed)

        def settled(results):
            self._close(fd)
            (sentOK, n), (digestOK, hexdigest) = results
            if self._lost:
                self._log.info("{peer} left during download of {path}", peer=self.who, path=vpath)
            elif sentOK and digestOK:
                self.reply(Code.TRANSFER_DONE, f"{hexdigest} sent {n} bytes")
            else:
                why = (n if not sentOK else hexdigest).getErrorMessage()
                self._log.warn("download of {path} failed: {why}", path=vpath, why=why)
                if sentOK:
                    self.reply(Code.LOCAL_ERROR, f"{vpath}: could not compute the digest: {why}")

        return DeferredList([sending, digest], consumeErrors=True).addCallback(settled)

    def do_PUT(self, command: Command) -> Deferred:
        args = self._args(command, 1, 2, "PUT path [offset]")
        vpath = self._path(args[0], WRITE)
        offset = decodeOffset(args[1]) if len(args) > 1 else 0
        jail = self.factory.jail
        if vpath == "/":
            raise ProtocolError(Code.WRONG_TYPE, "the root is a directory")
        # The lock is on where the data lands, whichever link led there.
        key = jail.located(vpath)
        if key in self.factory.uploads:
            raise ProtocolError(Code.BUSY, f"{vpath}: another upload to this path is in progress; try later")
        parent = jail.stat(posixpath.dirname(vpath))
        if parent is None or not statmod.S_ISDIR(parent.st_mode):
            raise ProtocolError(Code.NOT_FOUND, f"{posixpath.dirname(vpath)}: no such directory")
        target = jail.stat(vpath)
        if target is not None and not statmod.S_ISREG(target.st_mode):
            raise ProtocolError(Code.WRONG_TYPE, f"{vpath}: exists and is not a regular file")
        limit = self.factory.maxFileSize
        if limit is not None and offset > limit:
            raise ProtocolError(Code.TOO_LARGE, f"offset {offset} is past the file size limit of {limit} bytes")
        owner = self.factory.policy.ownerOf(key)
        self.factory.uploads.add(key)
        return Deferred.fromCoroutine(self._startUpload(vpath, key, owner, offset, limit))

    async def _startUpload(self, vpath: str, key: str, owner: str | None, offset: int, limit: int | None) -> None:
        """
        Open the partial file of an upload whose path is locked, count it
        against its owner's quota and ask for the data.
        """
        jail, quotas = self.factory.jail, self.factory.quotas
        try:
            await quotas.begin(owner)
        except BaseException:
            self.factory.uploads.discard(key)
            raise
        fd = None
        try:
            if self._lost:
                raise ProtocolError(Code.LOCAL_ERROR, "connection lost")
            partial = jail.partialPath(vpath)
            flags = os.O_RDWR | os.O_NOFOLLOW
            try:
                if offset == 0:
                    fd = self._open(partial, flags | os.O_CREAT)
                else:
                    fd = self._open(partial, flags)
            except FileNotFoundError:
                raise ProtocolError(Code.NOT_FOUND, f"{vpath}: no unfinished upload to resume; PUT it from offset 0")
            except OSError as e:
                raise osReply(e, vpath)
            have = os.fstat(fd).st_size
            if offset > have:
                raise ProtocolError(
                    Code.BAD_ARGUMENT,
                    f"offset {offset} is past the {have} bytes received so far; resume from {have}",
                )
            if have > offset:
                # Not for nothing: ext4 flushes a file truncated to 0 when
                # it is closed.
                os.ftruncate(fd, offset)
            quotas.freed(owner, have - offset)
            full = quotas.refusal(owner, 1)
            if full is not None:
                raise ProtocolError(Code.TOO_LARGE, f"{vpath}: {full}; DELETE something first")
        except BaseException:
            if fd is not None:
                self._close(fd)
            if offset == 0 and fd is not None:
                _unlinkQuietly(jail.partialPath(vpath))
            quotas.end(owner)
            self.factory.uploads.discard(key)
            raise
        f = os.fdopen(fd, "r+b", buffering=0, closefd=False)
        f.seek(offset)
        upload = self._upload = _Upload(vpath, key, owner, jail.real(key), partial, f)
        self.factory.partialsInUse.add(partial)
        if offset == 0:
            hasher = digests.new(self.digest)
        else:
            # The data before the offset is already here: hash it first.
            try:
                hasher = await hashInThread(self.factory.reactor, fd, offset, self.digest)
            except BaseException:
                self._endUpload(keepPartial=True)
                raise
            if self._upload is not upload:
                return  # the connection went meanwhile
        upload.sink = ChunkSink(
            self.factory.reactor, f, hasher, limit=limit,
            progress=lambda n: self.resetTimeout(),
            charge=None if owner is None else lambda n: quotas.charge(owner, n),
            onBacklog=lambda held: (self.pauseReading if held else self.resumeReading)("hashing"),
            writeback=_WRITEBACK,
            buffers=self.factory.buffers,
            reserveAhead=_WRITEBACK,
        )
        self.reply(
            Code.SEND_DATA,
            f"{offset} send data from byte {offset}, then the {digests.title(self.digest)} of the whole file",
        )
        setReadSize(self.transport, _TRANSFER_READ)
        self.setRawMode()
        upload.reader = pooledReader(
            self.transport, self.factory.buffers, self._received,
            lambda: self.pauseReading("buffers"), lambda: self.resumeReading("buffers"),
            sink=upload.sink, reactor=self.factory.reactor,
        )

    def rawDataReceived(self, data: bytes) -> None:
        self._received(data)

    def _received(self, data, release=None) -> None:
        self.resetTimeout()
        upload = self._upload
        # Raw mode is set once the upload's sink is there, and left with it.
        assert upload is not None and upload.sink is not None
        try:
            upload.sink.feed(data, release)
        except FramingError as e:
            self.reply(e.code, e.message)
            self._log.info("{peer}: {error}", peer=self.who, error=e.message)
            self._endUpload(keepPartial=True)
            self.transport.loseConnection()
            return
        if upload.sink.done:
            upload.awaitingDigest = True
            self._stopReader(upload)
            setReadSize(self.transport, None)
            self.setLineMode(upload.sink.rest)

    def _stopReader(self, upload: _Upload) -> None:
        reader, upload.reader = upload.reader, None
        if reader is not None:
            reader.stop()

    async def _finishUpload(self, line: bytes) -> None:
        upload = self._upload
        assert upload is not None and upload.sink is not None, "the digest follows the data"
        sink = upload.sink
        if not _DIGEST_LINE.fullmatch(line):
            self._endUpload(keepPartial=True)
            raise ProtocolError(Code.BAD_ARGUMENT, _BAD_DIGEST_LINE)
        if sink.error is not None:
            self._endUpload(keepPartial=False)
            if isinstance(sink.error, OSError):
                raise osReply(sink.error, upload.vpath)
            raise ProtocolError(Code.TOO_LARGE, f"{upload.vpath}: {sink.error}; not stored")
        try:
            computed = await sink.digest()
        except Exception as e:
            self._endUpload(keepPartial=True)
            raise ProtocolError(Code.LOCAL_ERROR, f"{upload.vpath}: could not read back the data: {e}")
        if computed != line.decode("ascii").lower():
            self._endUpload(keepPartial=False)
            raise ProtocolError(
                Code.DIGEST_MISMATCH,
                f"{upload.vpath}: {digests.title(self.digest)} mismatch,"
                f" the server received data hashing to {computed}; not stored",
            )
        upload.committing = True
        # The thread has its own descriptor, whatever happens to the
        # connection meanwhile.
        fd = os.dup(upload.file.fileno())

        fsync = self.factory.fsync
        algorithm = self.digest

        def commit():
            try:
                fsync(fd)
                storeDigest(fd, computed, algorithm)
                try:
                    replaced = os.lstat(upload.real).st_size
                except FileNotFoundError:
                    replaced = 0
                os.replace(upload.partial, upload.real)
                dirfd = os.open(os.path.dirname(upload.real), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fsync(dirfd)
                finally:
                    os.close(dirfd)
                return os.fstat(fd), replaced
            finally:
                os.close(fd)

        reactor = self.factory.reactor
        try:
            st, replaced = await deferToThreadPool(reactor, reactor.getThreadPool(), commit)
        except OSError as e:
            self._endUpload(keepPartial=True)
            raise osReply(e, upload.vpath)
        self.factory.quotas.freed(upload.owner, replaced)
        self.factory.digests.remember(st, computed, algorithm)
        self._endUpload(keepPartial=True)
        self._log.info("{peer} stored {path} ({n} bytes)", peer=self.who, path=upload.vpath, n=sink.size)
        self.reply(Code.TRANSFER_DONE, f"{computed} stored {sink.size} bytes")

    def _endUpload(self, keepPartial: bool) -> None:
        """
        Close the current upload's file and release its path; keep what was
        received for a resume (unless it is nothing), or remove it.
        """
        upload, self._upload = self._upload, None
        if upload is None:
            return
        self._stopReader(upload)
        if upload.sink is not None:
            upload.sink.close()
        fd = upload.file.fileno()
        size = os.fstat(fd).st_size
        upload.file.close()
        self._close(fd)
        if (not keepPartial or size == 0) and not upload.committing:
            if _unlinkQuietly(upload.partial):
                self.factory.quotas.freed(upload.owner, size)
        self.factory.quotas.end(upload.owner)
        self.factory.partialsInUse.discard(upload.partial)
        self.factory.uploads.discard(upload.key)
        if not self.line_mode:
            setReadSize(self.transport, None)
            self.setLineMode()


def _unlinkQuietly(path: str) -> bool:
    """
    Remove a file if it is there; whether it was.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class BFTPFactory(AdmittingFactory, Factory):
    """
    The BFTP server: its files, accounts and limits.
    """

    protocol = BFTPServerProtocol
    _log = Logger()

    def __init__(
        self,
        root: str,
        portal,
        anonymous: bool = False,
        reactor=None,
        idleTimeout: int = 300,
        maxPerAddress: int | None = None,
        maxConnections: int | None = None,
        maxFileSize: int | None = None,
        loginDelay: float = 1.0,
        maxLoginFailures: int = 3,
        loginTimeout: int = 60,
        sendfile: bool = True,
        uploads: MutableSet[str] | None = None,
        fsync: Callable[[int], None] = os.fsync,
        policy: Policy | None = None,
        digestAlgorithms: tuple[str, ...] = digests.AVAILABLE,
    ) -> None:
        """
        @param loginDelay: seconds before a failed login is answered.
        @param maxLoginFailures: failed logins after which a connection is
            closed.
        @param loginTimeout: seconds a connection may stay without logging in.
        @param uploads: the paths being uploaded, refused to other writers;
            a fresh set by default, one shared across processes for the
            forking twin (L{bftp.threaded.SharedNameSet}).
        @param fsync: how a finished upload and its directory are made
            durable (a seam for tests that check the order of the steps).
        @param policy: who may do what where, quotas and the age at which
            unfinished uploads expire; shared mode by default.
        @param digestAlgorithms: what HELLO may negotiate, preferred first;
            empty for a server that negotiates nothing (as before it
            existed: SHA-256, and no C{digest=} in the reply).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.jail = Jail(root)
        self.portal = portal
        self.anonymous = anonymous
        self.idleTimeout = idleTimeout
        self.maxFileSize = maxFileSize
        self.loginDelay = loginDelay
        self.maxLoginFailures = maxLoginFailures
        self.loginTimeout = loginTimeout
        self.sendfile = sendfile
        self.digests = DigestCache(reactor)
        #: Receive buffers every upload shares (L{bftp.transfer.BufferPool}).
        self.buffers = bufferPool(reactor)
        self.uploads: MutableSet[str] = set() if uploads is None else uploads
        self.fsync = fsync
        self.policy = Policy() if policy is None else policy
        self.digestAlgorithms = digestAlgorithms
        self.quotas = Quotas(self.jail, self.policy, reactor)
        #: The real paths of the partial files this process writes now.
        self.partialsInUse: set[str] = set()
        self.sweeper = PartialSweeper(self.jail, self.policy, self.quotas, reactor, lambda: self.partialsInUse)
        if self.policy.classMode:
            for area in (self.policy.homes, self.policy.course, self.policy.handin):
                if area is not None:
                    os.makedirs(self.jail.real(area), exist_ok=True)
        # A connection holds its socket, and a file while it transfers one.
        self.admission = Admission(maxConnections, maxPerAddress, fdsPerConnection=2)

    def startFactory(self) -> None:
        self.sweeper.start()

    def stopFactory(self) -> None:
        self.sweeper.stop()

    def makeFolders(self, account: IAccount) -> str:
        """
        Make the home and hand-in folder of C{account} if the policy gives
        it any, and return where its session starts.

        @raise OSError: if they cannot be made.
        """
        for vpath in self.policy.ownedBy(account.name):
            os.makedirs(self.jail.real(vpath), exist_ok=True)
        home = self.policy.home(account)
        if home != "/":
            os.makedirs(self.jail.real(home), exist_ok=True)
        return home
