"""
Moving file data in BFTP chunks, used by the server and the client alike.

L{ChunkedFileSender} streams part of an open file as chunks, with the
transport's backpressure; on a plain TCP transport the chunk payloads go
from the page cache to the socket with C{os.sendfile}, never through Python
(L{fastTransfer}: the transport's L{IFastTransfer}, if it has one).
L{ChunkSink} is the other end: it writes payloads to a file and hashes them.
L{DigestCache} computes whole-file digests (SHA-256 or BLAKE3,
L{bftp.digests}) in a thread.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Protocol

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from zope.interface import implementer

from bftp import digests
from bftp.wire import CHUNK_SIZE, END_OF_DATA, ChunkDecoder, FramingError, chunkHeader
from coursenet._compat import setTCPReadSize
from coursenet.coalesce import Coalescer
from coursenet.interfaces import IFastTransfer

Progress = Callable[[int], None]


class _Consumer(Protocol):
    """
    What L{ChunkedFileSender} sends on: a connection's transport, or the
    L{coursenet.receiver.Outbox} in front of it.
    """

    def write(self, data: bytes) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def abortConnection(self) -> None: ...

_READ = 1 << 20


@implementer(IFastTransfer)
class _TCPFastTransfer:
    """
    L{IFastTransfer} for Twisted's TCP transport.
    """

    def __init__(self, connection: tcp.Connection) -> None:
        self._connection = connection

    def sendfileSocket(self) -> int | None:
        # A connection that started TLS in place encrypts what it writes.
        if self._connection.TLS:
            return None
        return self._connection.fileno()

    def startWriting(self) -> None:
        self._connection.startWriting()

    def setReadSize(self, size: int | None) -> None:
        setTCPReadSize(self._connection, size)


@implementer(IFastTransfer)
class _TLSFastTransfer:
    """
    L{IFastTransfer} for a TLS layer: no C{sendfile}, since every byte is
    encrypted on its way, but large reads on the connection below.
    """

    def __init__(self, tls: TLSMemoryBIOProtocol) -> None:
        self._tls = tls

    def sendfileSocket(self) -> None:
        return None

    def startWriting(self) -> None:
        raise RuntimeError("no sendfile through TLS, so nothing to wait for")

    def setReadSize(self, size: int | None) -> None:
        setReadSize(self._tls.transport, size)


def _adaptConnection(transport) -> IFastTransfer | None:
    """
    The adapter found for Twisted's TCP transport, and also for a TLS layer
    over one: L{TLSMemoryBIOProtocol} declares what its transport provides,
    which outranks its own class.  So decide by what C{transport} is: only
    the connection itself may have its socket written behind its back.
    """
    if isinstance(transport, tcp.Connection):
        return _TCPFastTransfer(transport)
    if isinstance(transport, TLSMemoryBIOProtocol):
        return _TLSFastTransfer(transport)
    return None


registerAdapter(_adaptConnection, tcp.Connection, IFastTransfer)
registerAdapter(_TLSFastTransfer, TLSMemoryBIOProtocol, IFastTransfer)


def fastTransfer(transport) -> IFastTransfer | None:
    """
    The fast transfer path of C{transport}, under any wrappers that keep
    the real transport as C{wrappedTransport}; L{None} if it has none.
    """
    for _ in range(8):
        inner = getattr(transport, "wrappedTransport", None)
        if inner is None:
            break
        transport = inner
    return IFastTransfer(transport, None)


def setReadSize(transport, size: int | None) -> None:
    """
    Make the connection under C{transport} read up to C{size} bytes at a
    time, or go back to its default with L{None}, where it can
    (L{IFastTransfer.setReadSize}).
    """
    fast = fastTransfer(transport)
    if fast is not None:
        fast.setReadSize(size)


@implementer(IPushProducer, IPullProducer)
class ChunkedFileSender:
    """
    Send bytes C{[start, end)} of file descriptor C{fd} as BFTP chunks,
    then the end-of-data chunk.  Memory stays flat whatever the file size:
    the transport's backpressure decides when the next chunk is read.

    On a plain TCP transport it is a pull producer and the payload goes with
    C{os.sendfile}: the transport asks for more only once its buffer is
    empty, so the chunk header (written through the transport) is on the
    wire before the payload goes straight to the socket; when the socket is
    full the sender asks the transport to call again once it is writable.
    On any other transport (TLS, say) it is a push producer that writes
    chunks read with C{pread} until the transport pauses it.
    """

    def __init__(
        self,
        fd: int,
        start: int,
        end: int,
        chunkSize: int = CHUNK_SIZE,
        progress: Progress | None = None,
        useSendfile: bool = True,
    ) -> None:
        self._fd = fd
        self._start = self._pos = start
        self._end = end
        self._chunkSize = chunkSize
        self._chunkLeft = 0
        self._progress = progress
        self._useSendfile = useSendfile
        self._transport: _Consumer | None = None
        self._fast: IFastTransfer | None = None
        self._sock: int | None = None
        self._paused = False
        self._writing = False
        self.deferred: Deferred[int] = Deferred()

    def beginSending(self, transport) -> Deferred[int]:
        """
        Start sending on C{transport}.

        @return: fires with the number of payload bytes once everything,
            end chunk included, has been handed to the transport; fails if
            the connection is lost first.
        """
        self._transport = transport
        if self._useSendfile:
            self._fast = fastTransfer(transport)
            if self._fast is not None:
                self._sock = self._fast.sendfileSocket()
        if self._sock is not None:
            transport.registerProducer(self, False)
        else:
            transport.registerProducer(self, True)
            self._writeChunks()
        return self.deferred

    def _sendingOn(self) -> _Consumer:
        assert self._transport is not None, "not sending yet"
        return self._transport

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self.deferred.called:
            return
        if self._sock is None:
            self._paused = False
            self._writeChunks()
        elif self._chunkLeft:
            self._sendfile()
        elif self._pos >= self._end:
            self._finish()
        else:
            # The header goes through the transport, which calls again once
            # its buffer, header included, is on the wire.
            self._chunkLeft = min(self._chunkSize, self._end - self._pos)
            self._sendingOn().write(chunkHeader(self._chunkLeft))

    def _writeChunks(self) -> None:
        if self._writing:
            return
        self._writing = True
        try:
            while not self._paused and not self.deferred.called:
                if self._pos >= self._end:
                    self._finish()
                    break
                n = min(self._chunkSize, self._end - self._pos)
                data = os.pread(self._fd, n, self._pos)
                if len(data) != n:
                    self._abort(EOFError(f"file shrank while being sent at byte {self._pos + len(data)}"))
                    break
                self._sendingOn().write(chunkHeader(n) + data)
                self._advance(n)
        finally:
            self._writing = False

    def _sendfile(self) -> None:
        sock, fast = self._sock, self._fast
        assert sock is not None and fast is not None, "not on the sendfile path"
        while self._chunkLeft:
            try:
                sent = os.sendfile(sock, self._fd, self._pos, self._chunkLeft)
            except BlockingIOError:
                break
            except OSError as e:
                self._abort(e)
                return
            if sent == 0:
                self._abort(EOFError(f"file shrank while being sent at byte {self._pos}"))
                return
            self._chunkLeft -= sent
            self._advance(sent)
        # Either the socket is full or the chunk is done: in both cases the
        # transport calls resumeProducing again when it can write.
        fast.startWriting()

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._progress is not None:
            self._progress(n)

    def _finish(self) -> None:
        transport = self._sendingOn()
        transport.write(END_OF_DATA)
        transport.unregisterProducer()
        self.deferred.callback(self._pos - self._start)

    def _abort(self, reason: BaseException) -> None:
        # Mid-chunk the stream cannot be repaired: the peer would read file
        # bytes as a header.  Drop the connection instead.
        transport = self._sendingOn()
        transport.unregisterProducer()
        transport.abortConnection()
        if not self.deferred.called:
            self.deferred.errback(Failure(reason))

    def stopProducing(self) -> None:
        if not self.deferred.called:
            self.deferred.errback(Failure(ConnectionError("connection lost during transfer")))


class BackgroundHasher:
    """
    The SHA-256 of a file being written, computed in the reactor's thread
    pool a little behind the writer.

    The writer only says how far it got (L{wrote}); a job in a thread reads
    the new bytes back from the page cache and hashes them, with the GIL
    released, while the reactor goes on receiving.  At most one job runs
    per file, and no thread ever waits for data, so a stalled upload holds
    no thread.
    """

    STEP = 4 << 20

    def __init__(self, reactor, fd: int, hasher, position: int) -> None:
        """
        @param fd: the file being written; the hasher reads its own
            duplicate, so the caller may close C{fd} at any time.
        @param hasher: a C{hashlib} object already fed with the bytes
            before C{position}.
        """
        self._reactor = reactor
        self._fd: int | None = os.dup(fd)
        self._hasher = hasher
        self._hashed = self._written = position
        self._job: Deferred | None = None
        self._failure: Failure | None = None
        self._finished: Deferred | None = None
        self._closed = False

    def wrote(self, n: int) -> None:
        self._written += n
        if self._job is None and self._written - self._hashed >= self.STEP:
            self._startJob()

    def _startJob(self) -> None:
        fd = self._fd
        if fd is None:
            return  # released after close() or finish(): nothing is wanted
        start, end = self._hashed, self._written
        pool = self._reactor.getThreadPool()
        self._job = deferToThreadPool(self._reactor, pool, hashRange, fd, end, self._hasher, start)
        self._job.addCallbacks(self._jobDone, self._jobFailed, callbackArgs=(end,))

    def _jobDone(self, _, end: int) -> None:
        self._job = None
        self._hashed = end
        self._next()

    def _jobFailed(self, failure: Failure) -> None:
        self._job = None
        self._failure = failure
        self._next()

    def _next(self) -> None:
        if self._closed:
            self._release()
            if self._finished is not None:
                d, self._finished = self._finished, None
                d.errback(Failure(ConnectionError("hashing abandoned: the transfer was given up")))
        elif self._failure is None and self._written > self._hashed and (
            self._finished is not None or self._written - self._hashed >= self.STEP
        ):
            self._startJob()
        elif self._finished is not None:
            d, self._finished = self._finished, None
            self._release()
            if self._failure is not None:
                d.errback(self._failure)
            else:
                d.callback(self._hasher.hexdigest())

    def finish(self) -> Deferred[str]:
        """
        @return: fires with the hex digest once every byte written has been
            hashed.
        """
        self._finished = Deferred()
        d = self._finished
        if self._job is None:
            self._next()
        return d

    def close(self) -> None:
        """
        Give up (the transfer failed): release the descriptor once no job
        is using it.
        """
        self._closed = True
        if self._job is None:
            self._next()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ChunkSink:
    """
    Receive chunk payloads into a file, hashing them on the way in a
    thread (L{BackgroundHasher}).

    A write error (a full disk, say) does not stop the stream: the rest of
    the data is read and discarded so the connection stays in step, and
    L{error} tells what went wrong.
    """

    def __init__(
        self,
        reactor,
        f,
        hasher,
        limit: int | None = None,
        progress: Progress | None = None,
        charge: Callable[[int], str | None] | None = None,
    ) -> None:
        """
        @param f: a binary file open for reading and writing, positioned
            where the data goes.
        @param hasher: a C{hashlib} object already fed with the bytes before
            that position.
        @param limit: refuse to write past this many bytes in the file.
        @param charge: called with the size of each piece before it is
            written (and with minus that size if the write fails); a text
            it returns refuses the piece and becomes L{error} (a quota).
        """
        self._f = f
        self.size = f.tell()
        self._hashing = BackgroundHasher(reactor, f.fileno(), hasher, self.size)
        self._limit = limit
        self._charge = charge
        self._progress = progress
        self._decoder = ChunkDecoder()
        self.error: OSError | str | None = None

    @property
    def done(self) -> bool:
        return self._decoder.done

    @property
    def rest(self) -> bytes:
        """
        Bytes that came after the end chunk.
        """
        return self._decoder.rest

    def feed(self, data: bytes) -> None:
        """
        @raise bftp.wire.FramingError: for a chunk header that cannot be
            read, once the chunks before it are written.
        """
        try:
            pieces = self._decoder.feed(data)
        except FramingError as e:
            self._write(e.pieces)
            raise
        self._write(pieces)

    def _write(self, pieces) -> None:
        for piece in pieces:
            n = len(piece)
            if self.error is None:
                if self._limit is not None and self.size + n > self._limit:
                    self.error = f"file exceeds the limit of {self._limit} bytes"
                elif self._charge is not None and (refused := self._charge(n)) is not None:
                    self.error = refused
                else:
                    try:
                        self._f.write(piece)
                    except OSError as e:
                        if self._charge is not None:
                            self._charge(-n)
                        self.error = e
                    else:
                        self.size += n
                        self._hashing.wrote(n)
            if self._progress is not None:
                self._progress(n)

    def digest(self) -> Deferred[str]:
        """
        @return: fires with the hex SHA-256 of the whole file once the end
            chunk has come and every byte is hashed.
        """
        return self._hashing.finish()

    def close(self) -> None:
        """
        Stop hashing (the transfer failed or was refused).
        """
        self._hashing.close()


def hashRange(fd: int, end: int, hasher=None, start: int = 0):
    """
    Feed bytes C{[start, end)} of C{fd} to C{hasher} (a new SHA-256 by
    default) and return it.  Blocking: call it in a thread.
    """
    if hasher is None:
        hasher = digests.new(digests.SHA256)
    pos = start
    while pos < end:
        data = os.pread(fd, min(_READ, end - pos), pos)
        if not data:
            raise EOFError(f"file ends at byte {pos}, expected {end}")
        hasher.update(data)
        pos += len(data)
    return hasher


def hashInThread(reactor, fd: int, end: int, algorithm: str = digests.SHA256) -> Deferred:
    """
    L{hashRange} from the start of the file in the reactor's thread pool,
    on a duplicate of C{fd} so the caller may close it meanwhile.

    @param algorithm: a name from L{bftp.digests}.
    @return: fires with the hasher.
    """
    own = os.dup(fd)
    d = deferToThreadPool(reactor, reactor.getThreadPool(), hashRange, own, end, digests.new(algorithm))

    def release(result):
        os.close(own)
        return result

    return d.addBoth(release)


#: Extended attribute where a verified digest is kept with the file, one
#: per algorithm: C{size:mtime_ns:hex}, valid only while size and mtime
#: still match.
DIGEST_XATTR = "user.bftp.sha256"


def digestXattr(algorithm: str) -> str:
    """
    The extended attribute that keeps a file's digest by C{algorithm}.
    """
    return f"user.bftp.{algorithm}"


def storeDigest(fd: int, hexdigest: str, algorithm: str = digests.SHA256) -> None:
    """
    Keep C{hexdigest} in the file's extended attributes, where the file
    system allows it.  Blocking: call it in a thread.
    """
    st = os.fstat(fd)
    try:
        os.setxattr(fd, digestXattr(algorithm), f"{st.st_size}:{st.st_mtime_ns}:{hexdigest}".encode())
    except OSError:
        pass


def _storedDigest(fd: int, st: os.stat_result, algorithm: str = digests.SHA256) -> str | None:
    try:
        size, mtime, hexdigest = os.getxattr(fd, digestXattr(algorithm)).decode().split(":")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if (int(size), int(mtime)) == (st.st_size, st.st_mtime_ns) and len(hexdigest) == 64:
        return hexdigest
    return None


def _digestOf(fd: int, st: os.stat_result, algorithm: str = digests.SHA256) -> str:
    # Reading does not write the attribute: only a verified upload does.
    stored = _storedDigest(fd, st, algorithm)
    if stored is not None:
        return stored
    return hashRange(fd, st.st_size, digests.new(algorithm)).hexdigest()


class DigestCache:
    """
    Whole-file digests by any algorithm of L{bftp.digests}, computed in a
    thread and remembered by algorithm and
    device, inode, size and modification time (in memory, and in an
    extended attribute of the file where the file system allows); a digest
    being computed is shared by everyone who asks for it meanwhile.
    """

    def __init__(self, reactor, size: int = 1024) -> None:
        self._reactor = reactor
        self._size = size
        self._done: collections.OrderedDict[tuple, str] = collections.OrderedDict()
        self._running = Coalescer()

    @staticmethod
    def _key(st: os.stat_result, algorithm: str) -> tuple:
        return (algorithm, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def remember(self, st: os.stat_result, hexdigest: str, algorithm: str = digests.SHA256) -> None:
        """
        Record a digest already known, for the file whose C{stat} is C{st}.
        """
        key = self._key(st, algorithm)
        self._done[key] = hexdigest
        self._done.move_to_end(key)
        while len(self._done) > self._size:
            self._done.popitem(last=False)

    def digest(self, fd: int, st: os.stat_result, algorithm: str = digests.SHA256) -> Deferred[str]:
        """
        @return: fires with the hex digest by C{algorithm} of the file open
            as C{fd}, whose C{fstat} is C{st}.
        """
        key = self._key(st, algorithm)
        if key in self._done:
            self._done.move_to_end(key)
            return succeed(self._done[key])
        def compute() -> Deferred[str]:
            # The thread reads its own descriptor: the caller may close fd
            # before the digest is done.
            own = os.dup(fd)

            def done(result):
                os.close(own)
                if not isinstance(result, Failure):
                    self.remember(st, result, algorithm)
                return result

            pool = self._reactor.getThreadPool()
            return deferToThreadPool(self._reactor, pool, _digestOf, own, st, algorithm).addBoth(done)

        return self._running.run(key, compute)
