"""
A BFTP client for scripts: every method returns a L{Deferred}, which an
C{async def} can C{await}.

    from twisted.internet.task import react
    from twisted.internet.defer import Deferred
    from bftp.client import connect

    async def main(reactor):
        client = await connect(reactor, "localhost", 9021)
        await client.login("demo", "secret")
        for entry in await client.list("/"):
            print(entry.kind, entry.size, entry.name)
        await client.get("/notes.txt", "notes.txt")
        await client.quit()

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""

from __future__ import annotations

import calendar
import collections
import os
import stat
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, cast

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from bftp.fs import Entry
from bftp import digests
from bftp.transfer import (
    ChunkedFileSender,
    ChunkSink,
    PooledReader,
    bufferPool,
    hashInThread,
    largeTLSWrites,
    pooledReader,
    releaseReserved,
    reserveSpace,
    setReadSize,
)
from bftp.wire import (
    MAX_LINE,
    VERSION,
    FramingError,
    ProtocolError,
    encodePath,
    parseReply,
)
from coursenet.errors import ReplyError

DEFAULT_PORT = 9021
DEFAULT_TLS_PORT = 9022
PART_SUFFIX = ".bftp-part"
_TRANSFER_READ = 1 << 20

#: Called with the number of bytes moved since the last call.
Progress = Callable[[int], None]


class BFTPError(ReplyError):
    """
    The server refused a command: C{code} and C{message} are its reply.
    """


@dataclass(frozen=True)
class Reply:
    code: int
    text: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stat:
    """
    What STAT says of a path.
    """

    path: str
    exists: bool
    kind: str | None = None
    size: int | None = None
    mtime: float | None = None
    partial: int = 0


def _parseTime(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def _facts(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


class BFTPClient(LineReceiver):
    """
    One connection to a BFTP server.  Commands are sent one at a time in
    the order they are called; each method's L{Deferred} fires with the
    result or fails with L{BFTPError}.
    """

    delimiter = b"\r\n"
    # Replies are at most MAX_LINE; leave room for a generous server.
    MAX_LENGTH = 4 * MAX_LINE
    # connect() makes TCP connections, with TLS over them or not (INegotiated).
    transport: ITCPTransport | None

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._waiting: collections.deque[Deferred] = collections.deque()
        self._lines: list[str] = []
        self._sink: ChunkSink | None = None
        self._reader: PooledReader | None = None
        self._pausedFor: set[str] = set()
        self._onData: Callable[[int, int], ChunkSink] | None = None
        self._turn: Deferred = Deferred()
        self._turn.callback(None)
        self.greeting: Deferred[Reply] = Deferred()
        self._waiting.append(self.greeting)
        self.closed: Deferred[None] = Deferred()
        #: Why the connection was lost, once it is.
        self._lostWhy: str | None = None
        self.serverInfo = ""
        #: What to offer in HELLO, preferred first (L{bftp.digests}).
        self.digestOffer: tuple[str, ...] = digests.AVAILABLE
        #: The algorithm the server chose: SHA-256 if it negotiates none.
        self.digest = digests.SHA256

    # -- wire ---------------------------------------------------------------

    def makeConnection(self, transport) -> None:
        largeTLSWrites(transport)
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stopReader()
        why = reason.getErrorMessage() if reason is not None else "closed"
        self._lostWhy = f"connection to the BFTP server lost: {why}"
        while self._waiting:
            self._waiting.popleft().errback(Failure(ConnectionError(self._lostWhy)))
        self.closed.callback(None)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._abort(ProtocolError(500, "server sent an overlong line"))

    def lineReceived(self, line: bytes) -> None:
        try:
            code, last, text = parseReply(line)
        except ProtocolError as e:
            self._abort(e)
            return
        if not last:
            self._lines.append(text)
            return
        lines, self._lines = tuple(self._lines), []
        if code == 150 and self._onData is not None:
            size, offset = (int(x) for x in text.split()[:2])
            self._sink, self._onData = self._onData(size, offset), None
            self.setRawMode()
            # What came with this line is fed by the receiver in a moment;
            # the next reads go into pooled buffers on plain TCP.
            self._reader = pooledReader(
                self.transport, bufferPool(self._reactor), self._received,
                lambda: self._pauseReading("buffers"), lambda: self._resumeReading("buffers"),
                sink=self._sink, reactor=self._reactor,
            )
            return
        if self._waiting:
            self._waiting.popleft().callback(Reply(code, text, lines))

    def rawDataReceived(self, data: bytes) -> None:
        self._received(data)

    def _received(self, data, release: Callable[[], None] | None = None) -> None:
        sink = self._sink
        assert sink is not None, "raw mode is set once the sink is"
        try:
            sink.feed(data, release)
        except FramingError as e:
            self._stopReader()
            self._abort(e)
            return
        if sink.done:
            self._stopReader()
            self.setLineMode(sink.rest)

    def _stopReader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()

    def _pauseReading(self, reason: str) -> None:
        """
        Read nothing more until L{_resumeReading} with every reason given.
        """
        if not self._pausedFor and self.transport is not None:
            cast(IPushProducer, self.transport).pauseProducing()
        self._pausedFor.add(reason)

    def _resumeReading(self, reason: str) -> None:
        if reason not in self._pausedFor:
            return
        self._pausedFor.discard(reason)
        if not self._pausedFor and self.transport is not None and self.connected:
            cast(IPushProducer, self.transport).resumeProducing()

    def _abort(self, error: Exception) -> None:
        if self._waiting:
            self._waiting.popleft().errback(Failure(error))
        assert self.transport is not None
        self.transport.abortConnection()

    def _reply(self) -> Deferred[Reply]:
        d: Deferred[Reply] = Deferred()
        if self._lostWhy is not None:
            # Asked for after the connection was lost (a command sent once
            # an upload's data had gone, say): no reply will come.
            d.errback(Failure(ConnectionError(self._lostWhy)))
        else:
            self._waiting.append(d)
        return d

    async def _serially(self, coroutine):
        """
        Run C{coroutine} once every command before it has finished.
        """
        turn, self._turn = self._turn, Deferred()
        try:
            await turn
            return await coroutine
        finally:
            self._turn.callback(None)

    def _do(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(self._serially(coroutine))

    async def _send(self, line: str, ok: tuple[int, int] = (200, 299)) -> Reply:
        self.sendLine(line.encode("utf-8"))
        return _check(await self._reply(), ok)

    # -- session ------------------------------------------------------------

    def hello(self) -> Deferred[Reply]:
        """
        Check the greeting and announce the protocol version.
        """

        async def hello():
            _check(await self.greeting, (220, 220))
            offer = f" digest={','.join(self.digestOffer)}" if self.digestOffer else ""
            reply = await self._send(f"HELLO {VERSION}{offer}")
            self.serverInfo = reply.text
            chosen = _facts(reply.text).get("digest", digests.SHA256)
            if chosen not in digests.AVAILABLE:
                self.transport.loseConnection()
                raise BFTPError(505, f"the server chose digest {chosen[:32]}, which this client cannot compute")
            self.digest = chosen
            return reply

        return self._do(hello())

    def login(self, user: str, password: str) -> Deferred[Reply]:
        async def login():
            await self._send(f"USER {user}", (331, 331))
            return await self._send(f"PASS {password}")

        return self._do(login())

    def quit(self) -> Deferred[None]:
        async def quit():
            await self._send("QUIT")
            self.transport.loseConnection()
            await self.closed

        return self._do(quit())

    def noop(self) -> Deferred[Reply]:
        return self._do(self._send("NOOP"))

    def help(self) -> Deferred[list[str]]:
        async def help():
            return list((await self._send("HELP")).lines)

        return self._do(help())

    # -- directories --------------------------------------------------------

    def pwd(self) -> Deferred[str]:
        async def pwd():
            return urllib.parse.unquote((await self._send("PWD")).text.split(" ")[0])

        return self._do(pwd())

    def cd(self, path: str) -> Deferred[str]:
        async def cd():
            reply = await self._send(f"CD {encodePath(path)}")
            return urllib.parse.unquote(reply.text.split(" ")[0])

        return self._do(cd())

    def list(self, path: str = ".") -> Deferred[list[Entry]]:
        """
        @return: fires with the L{Entry}s of a directory (or of one file).
        """

        async def list_():
            reply = await self._send(f"LIST {encodePath(path)}")
            entries = []
            for line in reply.lines:
                kind, size, mtime, name = line.split(" ", 3)
                entries.append(Entry(urllib.parse.unquote(name), kind, int(size), _parseTime(mtime)))
            return entries

        return self._do(list_())

    def stat(self, path: str) -> Deferred[Stat]:
        async def stat():
            facts = _facts((await self._send(f"STAT {encodePath(path)}")).text)
            exists = facts.get("exists") == "yes"
            return Stat(
                path=urllib.parse.unquote(facts.get("path", path)),
                exists=exists,
                kind=facts.get("type"),
                size=int(facts["size"]) if exists else None,
                mtime=_parseTime(facts["mtime"]) if exists else None,
                partial=int(facts.get("partial", 0)),
            )

        return self._do(stat())

    def hash(self, path: str, algorithm: str | None = None) -> Deferred[str]:
        """
        @param algorithm: C{sha256} (the server's default) or C{blake3}.
        @return: fires with the digest of a remote file, in hex.
        """

        async def hash_():
            extra = f" {algorithm}" if algorithm else ""
            return (await self._send(f"HASH {encodePath(path)}{extra}")).text.split(" ")[0]

        return self._do(hash_())

    def delete(self, path: str) -> Deferred[Reply]:
        return self._do(self._send(f"DELETE {encodePath(path)}"))

    def mkdir(self, path: str) -> Deferred[Reply]:
        return self._do(self._send(f"MKDIR {encodePath(path)}"))

    def rmdir(self, path: str) -> Deferred[Reply]:
        return self._do(self._send(f"RMDIR {encodePath(path)}"))

    def rename(self, source: str, target: str) -> Deferred[Reply]:
        return self._do(self._send(f"RENAME {encodePath(source)} {encodePath(target)}"))

    # -- files --------------------------------------------------------------

    def get(
        self,
        remote: str,
        local: str,
        resume: bool = True,
        progress: Progress | None = None,
        onStart: Callable[[int, int], None] | None = None,
    ) -> Deferred[str]:
        """
        Download C{remote} into the file C{local}.

        Data goes to C{local + ".bftp-part"} and is renamed to C{local} once
        the digest the server sends matches; after a cut connection that
        file stays, and the next C{get} with C{resume} continues from its
        end.

        @param progress: called with each number of bytes received.
        @param onStart: called with the file's size and the offset the
            transfer starts at.
        @return: fires with the hex digest of the file (by the negotiated algorithm).
        """

        async def get():
            part = local + PART_SUFFIX
            offset = os.path.getsize(part) if resume and os.path.exists(part) else 0
            try:
                return await self._get(remote, local, part, offset, progress, onStart)
            except BFTPError as e:
                if e.code != 501 or not offset:
                    raise
            # The remote file is now shorter than what we kept: it changed,
            # so start over.
            os.unlink(part)
            return await self._get(remote, local, part, 0, progress, onStart)

        return self._do(get())

    async def _get(self, remote, local, part, offset, progress, onStart) -> str:
        algorithm = self.digest
        hasher = digests.new(algorithm)
        if offset:
            fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
            try:
                hasher = await hashInThread(self._reactor, fd, offset, algorithm)
            finally:
                os.close(fd)
        files = []
        #: Part files with space reserved, and up to where.
        reserved: dict = {}

        def start(size: int, at: int) -> ChunkSink:
            # The part file is made only once the server agrees to send.
            # From byte 0 it is a new file, never one truncated to 0: ext4
            # flushes a file truncated to 0 when it is closed (its
            # auto_da_alloc), which would start writing back the whole
            # download in close().
            if at:
                f = os.fdopen(os.open(part, os.O_RDWR | os.O_CLOEXEC), "r+b", buffering=0)
                f.truncate(at)
            else:
                try:
                    os.unlink(part)
                except FileNotFoundError:
                    pass
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                f = os.fdopen(os.open(part, flags, 0o644), "r+b", buffering=0)
            f.seek(at)
            files.append(f)
            if reserveSpace(f.fileno(), at, size):
                reserved[f] = size
            if onStart is not None:
                onStart(size, at)
            setReadSize(self.transport, _TRANSFER_READ)
            return ChunkSink(
                self._reactor, f, hasher if at else digests.new(algorithm), progress=progress,
                onBacklog=lambda held: (self._pauseReading if held else self._resumeReading)("hashing"),
                buffers=bufferPool(self._reactor),
            )

        self._onData = start
        ok = False
        try:
            reply = await self._send(f"GET {encodePath(remote)} {offset}")
            ok = True
        finally:
            self._onData = None
            self._stopReader()
            setReadSize(self.transport, None)
            sink, self._sink = self._sink, None
            if sink is not None and not ok:
                sink.close()
            elif sink is not None:
                # Everything gathered reaches the file before it closes.
                sink.flush()
            for f in files:
                if f in reserved and os.fstat(f.fileno()).st_size < reserved[f]:
                    # A cut download keeps its part file for a resume, but
                    # not the blocks reserved for what did not come.
                    releaseReserved(f.fileno())
                f.close()
        if sink is None:
            raise BFTPError(reply.code, f"no data came before: {reply.text}")
        if sink.error is not None:
            sink.close()
            raise BFTPError(451, f"{local}: could not write: {sink.error}")
        digest = await sink.digest()
        expected = reply.text.split(" ")[0]
        if digest != expected:
            os.unlink(part)
            raise BFTPError(554, f"{remote}: {digests.title(algorithm)} mismatch; the download was discarded")
        os.replace(part, local)
        return digest

    def put(
        self,
        local: str,
        remote: str,
        resume: bool = False,
        progress: Progress | None = None,
        onStart: Callable[[int, int], None] | None = None,
    ) -> Deferred[str]:
        """
        Upload the file C{local} as C{remote}.  The server replaces
        C{remote} only once the whole file has arrived and its digest
        matches.

        @param resume: continue an upload that was cut, from what the server
            kept (STAT's C{partial}).  If what it kept turns out not to be
            the start of this file (the server answers the digest with
            554), the upload starts over from byte 0, once.
        @return: fires with the hex digest of the file (by the negotiated algorithm).
        """

        async def put():
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise BFTPError(555, f"{local}: not a regular file")
                limit = int(_facts(self.serverInfo).get("max-file-size", 0))
                if limit and size > limit:
                    raise BFTPError(552, f"{local} has {size} bytes; the server takes at most {limit}")
                offset = 0
                if resume:
                    facts = _facts((await self._send(f"STAT {encodePath(remote)}")).text)
                    offset = min(int(facts.get("partial", 0)), size)
                hashing = hashInThread(self._reactor, fd, size, self.digest)
                memo: list[str] = []

                async def digest() -> str:
                    # Hashed once, in parallel with the first sending.
                    if not memo:
                        memo.append((await hashing).hexdigest())
                    return memo[0]

                try:
                    return await self._putFrom(fd, remote, size, offset, digest, progress, onStart)
                except BFTPError as e:
                    if e.code != 554 or not offset:
                        raise
                # The server's partial upload was not the start of this file
                # (it is gone now): send it all.
                return await self._putFrom(fd, remote, size, 0, digest, progress, onStart)
            finally:
                os.close(fd)

        return self._do(put())

    async def _putFrom(self, fd, remote, size, offset, digest, progress, onStart) -> str:
        if onStart is not None:
            onStart(size, offset)
        await self._send(f"PUT {encodePath(remote)} {offset}", (350, 350))
        sender = ChunkedFileSender(fd, offset, size, progress=progress)
        await sender.beginSending(self.transport)
        hexdigest = await digest()
        self.sendLine(hexdigest.encode("ascii"))
        _check(await self._reply(), (200, 299))
        return hexdigest


def _check(reply: Reply, ok: tuple[int, int]) -> Reply:
    if not ok[0] <= reply.code <= ok[1]:
        raise BFTPError(reply.code, reply.text)
    return reply


class _ClientFactory(Factory):
    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def buildProtocol(self, addr):
        p = BFTPClient(self.reactor)
        p.factory = self
        return p


async def _connect(reactor, host, port, tls, cafile, timeout, offer):
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls:
        from coursenet.tls import clientTLSOptions

        endpoint = endpoints.wrapClientTLS(clientTLSOptions(host, cafile), endpoint)
    client = await endpoint.connect(_ClientFactory(reactor))
    if offer is not None:
        client.digestOffer = tuple(offer)
    await client.hello()
    return client


def connect(
    reactor,
    host: str,
    port: int = DEFAULT_PORT,
    tls: bool = False,
    cafile: str | None = None,
    timeout: float = 30,
    digests: tuple[str, ...] | None = None,
) -> Deferred[BFTPClient]:
    """
    Connect to a BFTP server and agree on the protocol version and the
    digest algorithm.

    @param tls: use TLS and verify that the server's certificate is valid
        for C{host}.
    @param cafile: trust these PEM certificates instead of the system's.
    @param digests: the algorithms to offer, preferred first (default:
        every one this installation has, BLAKE3 first; C{()} offers none,
        as a client from before negotiation).
    """
    return Deferred.fromCoroutine(_connect(reactor, host, port, tls, cafile, timeout, digests))


@dataclass(frozen=True)
class URL:
    """
    A C{bftp://USER@HOST:PORT/PATH} or C{bftps://...} address.
    """

    tls: bool
    host: str
    port: int
    user: str | None
    path: str

    @classmethod
    def parse(cls, text: str) -> "URL":
        u = urllib.parse.urlsplit(text)
        if u.scheme not in ("bftp", "bftps") or not u.hostname:
            raise ValueError(f"not a bftp:// or bftps:// URL: {text}")
        tls = u.scheme == "bftps"
        try:
            port = u.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
        except ValueError:
            raise ValueError(f"bad port in {text}")
        user = urllib.parse.unquote(u.username) if u.username else None
        return cls(tls, u.hostname, port, user, urllib.parse.unquote(u.path) or "/")
