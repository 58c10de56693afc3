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
import errno
import fcntl
import os
import threading
from typing import Callable, Protocol

from twisted.internet import main, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from zope.interface import implementer

from bftp import digests
from bftp.wire import CHUNK_SIZE, END_OF_DATA, HEADER_LEN, ChunkDecoder, FramingError, chunkHeader
from coursenet._compat import TLSReader, setTCPReader, setTCPReadSize, tlsLargeWrites
from coursenet.coalesce import Coalescer
from coursenet.interfaces import IFastTransfer

Progress = Callable[[int], None]


class _Consumer(Protocol):
    """
    What L{ChunkedFileSender} sends on: a connection's transport, or the
    L{coursenet.receiver.Outbox} in front of it.
    """

    def write(self, data: bytes | memoryview) -> None: ...

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

    def largeWrites(self) -> bool:
        """
        Whether writes of many records go through OpenSSL at once
        (L{coursenet._compat.tlsLargeWrites}, see L{largeTLSWrites}): a
        write then consumes or copies its bytes before it returns.
        """
        return getattr(self._tls, "_largeWrites", False)

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


def largeTLSWrites(transport) -> None:
    """
    If C{transport} is a TLS layer, have its large writes encrypted at once
    (L{coursenet._compat.tlsLargeWrites}).  Call it from C{makeConnection},
    before anything keeps the transport's C{write}.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        tlsLargeWrites(transport)


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
        self._buffer: bytearray | None = None
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
            if isinstance(self._fast, _TLSFastTransfer) and self._fast.largeWrites():
                # Each chunk is read into one buffer, header and all, and
                # encrypted from there before write returns: no bytes
                # object of a MiB per chunk.
                self._buffer = bytearray(HEADER_LEN + self._chunkSize)
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
                data: bytes | memoryview
                if self._buffer is not None:
                    view = memoryview(self._buffer)[: HEADER_LEN + n]
                    got = os.preadv(self._fd, [view[HEADER_LEN:]], self._pos)
                    view[:HEADER_LEN] = chunkHeader(n)
                    data = view
                else:
                    piece = os.pread(self._fd, n, self._pos)
                    got = len(piece)
                    data = chunkHeader(n) + piece
                if got != n:
                    self._abort(EOFError(f"file shrank while being sent at byte {self._pos + got}"))
                    break
                self._sendingOn().write(data)
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


class BufferPool:
    """
    Receive buffers of C{size} bytes, reused across the transfers of a
    process: at most C{limit} are out at once, so memory stays bounded
    whatever the number of transfers.  A buffer is out from L{take} until
    L{give} (from any thread: the hashing threads give buffers back).
    """

    def __init__(self, reactor, size: int = 1 << 20, limit: int = 32) -> None:
        self._reactor = reactor
        self.size = size
        self.limit = limit
        self._free: collections.deque[bytearray] = collections.deque()
        self._made = 0
        self._waiters: collections.deque[Callable[[], None]] = collections.deque()

    def take(self) -> bytearray | None:
        """
        A free buffer, or L{None} if C{limit} are out (then L{whenFree}).
        Reactor thread only.
        """
        try:
            return self._free.pop()
        except IndexError:
            pass
        if self._made >= self.limit:
            return None
        self._made += 1
        return bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        """
        Put C{buf} back; any thread.
        """
        self._free.append(buf)
        if self._waiters:
            self._reactor.callFromThread(self._wake)

    def whenFree(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} (in the reactor thread) once a buffer is free; at
        once if one already is.
        """
        self._waiters.append(callback)
        if self._free:
            self._wake()

    def _wake(self) -> None:
        # As many waiters as there are free buffers try again, first come
        # first served (not all of them, to find none and wait again); one
        # that finds none free asks again.
        for _ in range(min(len(self._free), len(self._waiters))):
            self._waiters.popleft()()


_POOLS: dict[int, BufferPool] = {}


def bufferPool(reactor) -> BufferPool:
    """
    The L{BufferPool} every transfer on C{reactor} shares.
    """
    pool = _POOLS.get(id(reactor))
    if pool is None or pool._reactor is not reactor:
        pool = _POOLS[id(reactor)] = BufferPool(reactor)
    return pool


class _Range:
    """
    Bytes C{[start, end)} of file descriptor C{fd}, to be hashed.
    """

    __slots__ = ("fd", "start", "end")

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.start, self.end = fd, start, end


#: Ranges are read back 256 KiB at a time: the buffer stays in the
#: core's cache between the read and the hash.
_HASH_READ = 256 << 10


class HashFeed:
    """
    Hash data already in memory, in order, in the reactor's thread pool:
    the receiving side hands each piece over (L{update}) right after
    writing it, and a job in a pool thread hashes what is queued with the
    GIL released while the reactor goes on receiving.  Nothing is read
    back from the file.

    At most one job runs per feed, and a job ends when the queue is empty,
    so a stalled transfer holds no thread.  The queued pieces stay
    referenced until hashed: past C{backlog} bytes, C{onBacklog(True)}
    asks the caller to stop reading, and C{onBacklog(False)} once the job
    has caught up.
    """

    def __init__(self, reactor, hasher, onBacklog: Callable[[bool], None] | None = None, backlog: int = 16 << 20) -> None:
        self._reactor = reactor
        self._hasher = hasher
        self._onBacklog = onBacklog
        self._backlog = backlog
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._running = False
        self._pending = 0
        self._held = False
        self._finishing = False
        self._closed = False
        self._finished: Deferred[str] | None = None
        self._failure: Failure | None = None
        #: Where ranges of a file are read back to be hashed (pool thread).
        self._readBuffer: bytearray | None = None

    def update(self, data) -> None:
        """
        Hash C{data} (bytes or a memoryview that stays valid until hashed:
        see L{after}).  Reactor thread.
        """
        with self._lock:
            if self._closed:
                return
            self._queue.append(data)
            if not isinstance(data, _Range):
                # A range holds no memory: only pieces count.
                self._pending += len(data)
            start = not self._running
            self._running = True
            over = self._pending > self._backlog
        if over and not self._held and self._onBacklog is not None:
            self._held = True
            self._onBacklog(True)
        if start:
            self._start()

    def updateFrom(self, fd: int, start: int, end: int) -> None:
        """
        Hash bytes C{[start, end)} of C{fd}, read back from the page cache
        in the pool thread: for data that went to the file without passing
        through memory (L{ChunkSink.splice}).  C{fd} must stay open until
        hashed: close it through L{after}.  Reactor thread.
        """
        if end > start:
            self.update(_Range(fd, start, end))

    def after(self, release: Callable[[], None]) -> None:
        """
        Call C{release} (in a pool thread, or now) once everything handed
        over so far is hashed: the buffer under it may then be reused.
        """
        with self._lock:
            if self._running:
                self._queue.append(release)
                return
        release()

    def _start(self) -> None:
        self._reactor.getThreadPool().callInThreadWithCallback(self._ended, self._drain)

    def _drain(self) -> None:
        # In a pool thread.
        while True:
            with self._lock:
                if not self._queue:
                    return
                item = self._queue.popleft()
                if self._closed and not callable(item):
                    continue
            if callable(item):
                item()
            elif isinstance(item, _Range):
                if self._readBuffer is None:
                    self._readBuffer = bytearray(_HASH_READ)
                hashRange(item.fd, item.end, self._hasher, item.start, self._readBuffer)
            else:
                self._hasher.update(item)
                with self._lock:
                    self._pending -= len(item)

    def _ended(self, ok: bool, result) -> None:
        # In the pool thread, after _drain: tell the reactor if it waits.
        with self._lock:
            if not ok:
                self._failure = result
                self._closed = True
            if self._queue and ok:
                # Queued between the last look and now: go on.
                restart = True
            else:
                restart = False
                self._running = False
                released = list(self._queue)
                self._queue.clear()
            wanted = self._finishing or self._held or not ok
        if restart:
            self._start()
            return
        for item in released:
            if callable(item):
                item()
        if wanted:
            self._reactor.callFromThread(self._settle)

    def _settle(self) -> None:
        with self._lock:
            if self._running:
                return
        if self._held:
            self._held = False
            if self._onBacklog is not None:
                self._onBacklog(False)
        if self._finishing and self._finished is not None:
            d, self._finished = self._finished, None
            if self._failure is not None:
                d.errback(self._failure)
            elif self._closed:
                d.errback(Failure(ConnectionError("hashing abandoned: the transfer was given up")))
            else:
                d.callback(self._hasher.hexdigest())

    def finish(self) -> Deferred[str]:
        """
        @return: fires with the hex digest once everything handed over has
            been hashed.
        """
        d: Deferred[str] = Deferred()
        with self._lock:
            self._finishing = True
            self._finished = d
            running = self._running
        if not running:
            self._settle()
        return d

    def close(self) -> None:
        """
        Give up (the transfer failed): drop what is not hashed yet, giving
        its buffers back.
        """
        with self._lock:
            self._closed = True
            running = self._running
            released = [] if running else [item for item in self._queue if callable(item)]
            if not running:
                self._queue.clear()
        for release in released:
            release()
        if not running:
            self._settle()


class SplicePipe:
    """
    A pipe that payload crosses on its way from a socket to a file with
    C{splice}: the kernel moves the socket's pages into the pipe and copies
    them into the page cache, so the bytes are copied once instead of
    twice (into a buffer, then out of it) and never touch Python.  Empty
    between calls, so one pipe serves every connection of a reactor.
    """

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # above the system's pipe-max-size: keep the default
        self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)

    def fill(self, sock: int, n: int) -> int:
        """
        Move up to C{n} bytes from socket C{sock} into the pipe.

        @return: how many; 0 at the end of the stream.
        @raise BlockingIOError: nothing to read now.
        """
        return os.splice(sock, self.w, min(n, self.size), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)

    def drainTo(self, fd: int, n: int) -> None:
        """
        Write the C{n} bytes in the pipe to C{fd} at its position; on an
        error the pipe is emptied all the same.
        """
        try:
            while n:
                n -= os.splice(self.r, fd, n, flags=os.SPLICE_F_MOVE)
        except OSError:
            self.discard(n)
            raise

    def discard(self, n: int) -> None:
        while n:
            n -= len(os.read(self.r, n))

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


_PIPE_SIZE = 1 << 20
_PIPES: dict[int, SplicePipe] = {}
#: Cleared when the system refuses C{splice} from a socket (EINVAL): every
#: transfer then reads into pooled buffers.
_spliceWorks = hasattr(os, "splice")


def splicePipe(reactor) -> SplicePipe | None:
    """
    The L{SplicePipe} every transfer on C{reactor} shares; L{None} where
    C{splice} does not work.
    """
    if not _spliceWorks:
        return None
    pipe = _PIPES.get(id(reactor))
    if pipe is None:
        pipe = _PIPES[id(reactor)] = SplicePipe()
    return pipe


class PooledReader:
    """
    While a transfer streams in on a plain TCP connection, read it with
    C{recv_into} into buffers of a L{BufferPool} instead of Twisted's
    C{recv} into a fresh C{bytes} per read, and hand each filled buffer to
    C{deliver(view, release)}; C{release()} gives the buffer back once
    the receiver is done with it (written and hashed).

    Installed as the connection's C{doRead} (L{coursenet._compat.setTCPReader})
    until L{stop}; when the pool has no free buffer it calls C{pause()}
    and, once one is free, C{resume()}.
    """

    def __init__(
        self, connection: tcp.Connection, pool: BufferPool, deliver, pause, resume,
        sink: ChunkSink | None = None, pipe: SplicePipe | None = None,
    ) -> None:
        self._connection = connection
        self._pool = pool
        self._sink = sink
        self._pipe = pipe
        self._deliver = deliver
        self._pause = pause
        self._resume = resume
        self._starved = False
        self.active = False

    def start(self) -> None:
        self.active = True
        setTCPReader(self._connection, self.doRead)

    def stop(self) -> None:
        if self.active:
            self.active = False
            setTCPReader(self._connection, None)
        if self._starved:
            self._starved = False
            self._resume()

    def doRead(self):
        if not self.active:
            # Stopped while the reactor was about to call: Twisted's own.
            return type(self._connection).doRead(self._connection)
        if self._pipe is not None and self._sink is not None:
            why = self._splice(self._sink, self._pipe)
            if why is not _READ_POOLED:
                return why
        pool = self._pool
        buf = self._take()
        if buf is None:
            return None
        view = memoryview(buf)
        size, filled = len(buf), 0
        sock = self._connection.socket
        why = None
        # Read what is there, up to a full buffer: fewer, fuller handovers.
        while filled < size:
            try:
                n = sock.recv_into(view[filled:])
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                why = main.CONNECTION_LOST
                break
            if not n:
                why = main.CONNECTION_DONE
                break
            filled += n
        if filled:
            self._deliver(view[:filled], lambda: pool.give(buf))
        else:
            pool.give(buf)
        return why

    def _splice(self, sink: ChunkSink, pipe: SplicePipe):
        """
        Payload goes from the socket into the file with L{ChunkSink.splice};
        the 8 bytes of each chunk header are read as such and delivered.
        Returns what C{doRead} returns, or L{_READ_POOLED} when the sink
        takes no spliced data (an error to read past, the end) and a
        pooled buffer should be read instead.
        """
        global _spliceWorks
        sock = self._connection.socket
        budget = _SPLICE_TURN
        while self.active and budget > 0:
            if sink.spliceable():
                try:
                    n = sink.splice(sock.fileno(), pipe)
                except BlockingIOError:
                    return None
                except InterruptedError:
                    continue
                except OSError as e:
                    if e.errno == errno.EINVAL:
                        # Not a socket the kernel splices from (a failed
                        # fill moves nothing): read into buffers from now
                        # on.
                        _spliceWorks = False
                        self._pipe = None
                        return _READ_POOLED
                    return main.CONNECTION_LOST
                if not n:
                    return main.CONNECTION_DONE
                budget -= n
                continue
            need = sink.headerNeed
            if not need:
                return _READ_POOLED
            try:
                data = sock.recv(need)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError:
                return main.CONNECTION_LOST
            if not data:
                return main.CONNECTION_DONE
            self._deliver(data, None)
        return None

    def _take(self) -> bytearray | None:
        """
        A buffer from the pool; or, when none is free, L{None}, with the
        connection paused until one is.
        """
        buf = self._pool.take()
        if buf is None:
            self._starved = True
            self._pause()
            self._pool.whenFree(self._free)
        return buf

    def _free(self) -> None:
        if self._starved:
            self._starved = False
            if self.active:
                self._resume()


class TLSPooledReader(PooledReader):
    """
    L{PooledReader} for a TLS connection: each read from the socket goes
    into a pooled buffer, to OpenSSL, and is decrypted back into that same
    buffer (L{coursenet._compat.TLSReader}), which is then delivered like a
    plain TCP read: one handover per read instead of one C{bytes} object
    and one trip up Twisted's TLS layer per 16 KiB record, and no copy to
    gather records into a buffer.
    """

    def __init__(self, connection: tcp.Connection, tls, pool: BufferPool, deliver, pause, resume) -> None:
        super().__init__(connection, pool, deliver, pause, resume)
        self._tls = TLSReader(tls)

    def doRead(self):
        tls = self._tls
        if not self.active or not tls.ready():
            return type(self._connection).doRead(self._connection)
        pool = self._pool
        buf = self._take()
        if buf is None:
            return None
        view = memoryview(buf)
        try:
            n = self._connection.socket.recv_into(view)
        except (BlockingIOError, InterruptedError):
            pool.give(buf)
            return None
        except OSError:
            pool.give(buf)
            return main.CONNECTION_LOST
        if not n:
            pool.give(buf)
            return main.CONNECTION_DONE
        # OpenSSL copies what it is given: the buffer is free again, to
        # take the plaintext.
        tls.feed(view[:n])
        filled = 0
        while True:
            try:
                got = tls.readInto(view[filled:])
            except Exception:
                # The peer's close_notify or an error: what came before it
                # first, then Twisted's TLS layer deals with the rest.
                self._deliverFilled(buf, filled)
                tls.handBack()
                return None
            if not got:
                break
            filled += got
            if filled == len(buf):
                self._deliverFilled(buf, filled)
                nextBuf = pool.take()
                if nextBuf is None or not self.active:
                    # No buffer free, or the data ended: what OpenSSL
                    # still holds goes Twisted's way (as bytes).
                    if nextBuf is not None:
                        pool.give(nextBuf)
                    tls.handBack()
                    tls.flush()
                    return None
                buf, view, filled = nextBuf, memoryview(nextBuf), 0
        self._deliverFilled(buf, filled)
        if not self.active:
            # Stopped at the end of the data: what OpenSSL still holds
            # goes up Twisted's path, to the protocol in its line mode.
            tls.handBack()
        tls.flush()
        return None

    def _deliverFilled(self, buf: bytearray, filled: int) -> None:
        # Only while active: the loop stops decrypting once the receiver
        # has stopped the reader.
        pool = self._pool
        if filled:
            self._deliver(memoryview(buf)[:filled], lambda: pool.give(buf))
        else:
            pool.give(buf)


#: What L{PooledReader._splice} returns to have a pooled buffer read.
_READ_POOLED = object()
#: At most this much is spliced per call from the reactor, so that other
#: connections get their turn.
_SPLICE_TURN = 4 << 20


def pooledReader(
    transport, pool: BufferPool, deliver, pause, resume, sink: ChunkSink | None = None, reactor=None,
) -> PooledReader | None:
    """
    A started L{PooledReader} on the plain TCP connection under
    C{transport}, or a L{TLSPooledReader} on a TLS layer over one; L{None}
    where there is none (the twins' blocking transport; in-memory
    transports).

    @param sink: where the data goes; given with C{reactor}, payloads are
        spliced from the socket into the sink's file (L{SplicePipe}).
    """
    fast = fastTransfer(transport)
    reader: PooledReader
    if isinstance(fast, _TLSFastTransfer) and isinstance(fast._tls.transport, tcp.Connection):
        reader = TLSPooledReader(fast._tls.transport, fast._tls, pool, deliver, pause, resume)
        reader.start()
        return reader
    if not isinstance(fast, _TCPFastTransfer) or fast.sendfileSocket() is None:
        return None
    pipe = splicePipe(reactor) if sink is not None and reactor is not None else None
    reader = PooledReader(fast._connection, pool, deliver, pause, resume, sink, pipe)
    reader.start()
    return reader


#: Small pieces (a TLS record's worth) are gathered into buffers of this
#: size before they are written and hashed: one write and one handover
#: per buffer instead of per piece.
_GATHER = 1 << 20
#: Pieces at least this long are written and hashed as they come.
_DIRECT = 256 << 10


#: fallocate(2)'s flag for space reserved past the end of the file,
#: which keeps the file's size as it is.
_FALLOC_FL_KEEP_SIZE = 0x01


def _fallocateCall():
    # Python has os.posix_fallocate, which grows the file: a part file's
    # size is how much of it has come (see bftp.client), so that will not
    # do.  glibc and musl have fallocate(2) itself.
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError, ImportError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


_fallocate = _fallocateCall()


def reserveSpace(fd: int, start: int, end: int) -> bool:
    """
    Reserve disk blocks for bytes C{[start, end)} of C{fd} ahead of
    writing them, without changing the file's size (C{fallocate} with
    C{FALLOC_FL_KEEP_SIZE}).  The file system then maps each written page
    to a block it already has instead of allocating as it goes: measured on
    ext4, a 1 GiB download into a reserved file costs 0.36 s of CPU
    against 0.44 s (median of 12), and the file lies in fewer extents.
    What is not written stays reserved until L{releaseReserved}.

    @return: whether the space is reserved; L{False} where the system or
        the file system cannot (the writes then allocate as they go), or
        if the disk has not that much room (the writes then fail where it
        runs out, as they would have).
    """
    if _fallocate is None or end <= start:
        return False
    return _fallocate(fd, _FALLOC_FL_KEEP_SIZE, start, end - start) == 0


def releaseReserved(fd: int) -> None:
    """
    Give back the blocks L{reserveSpace} reserved past the end of C{fd}
    (truncating a file to its own size frees them).
    """
    os.ftruncate(fd, os.fstat(fd).st_size)


#: An upload reserves its next step only while the disk has this many
#: steps free.
_RESERVE_ROOM = 16


class ChunkSink:
    """
    Receive chunk payloads into a file, hashing them from memory in a
    thread (L{HashFeed}): never reading the file back.

    Payload comes either as C{bytes} from a transport (small pieces are
    gathered first, see L{_GATHER}, and written when the buffer is full
    or the reactor turn ends) or, with a C{release}, as a view of a
    pooled buffer (L{PooledReader}), written and hashed in place.

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
        onBacklog: Callable[[bool], None] | None = None,
        writeback: int | None = None,
        buffers: BufferPool | None = None,
        reserveAhead: int | None = None,
    ) -> None:
        """
        @param f: a binary file open for reading and writing, positioned
            where the data goes.
        @param hasher: a hasher (L{bftp.digests.new}) already fed with the
            bytes before that position.
        @param limit: refuse to write past this many bytes in the file.
        @param charge: called with the size of each piece before it is
            written (and with minus that size if the write fails); a text
            it returns refuses the piece and becomes L{error} (a quota).
        @param onBacklog: told C{True} when hashing lags too far behind
            (stop reading) and C{False} when it has caught up.
        @param writeback: every this many bytes written, C{fdatasync} the
            file in a pool thread (one at a time), so that the disk writes
            as the data comes and the C{fsync} that makes the finished
            file durable has little left to do.
        @param buffers: where the buffers that gather small pieces come
            from, when it has one free.
        @param reserveAhead: keep the file's disk blocks reserved this many
            bytes ahead of what is written (L{reserveSpace}), a step at a
            time, for a file whose size is not known in advance; what is
            reserved past the end is given back when the data ends
            (L{digest}) or the transfer fails (L{close}).  No step is
            reserved while the disk has less than L{_RESERVE_ROOM} steps
            free.
        """
        self._reactor = reactor
        self._buffers = buffers
        self._writeback = writeback
        self._unsynced = 0
        self._syncing = False
        self._f = f
        #: Bytes in the file, counting those gathered but not yet written.
        self.size = f.tell()
        self._hashing = HashFeed(reactor, hasher, onBacklog)
        self._limit = limit
        self._charge = charge
        self._progress = progress
        self._decoder = ChunkDecoder()
        self._gather: bytearray | None = None
        self._gathered = 0
        self._spare: collections.deque[bytearray] = collections.deque()
        self._flushCall: IDelayedCall | None = None
        self.error: OSError | str | None = None
        #: A descriptor of the file of its own, for hashing spliced ranges
        #: in the pool thread whatever happens to C{f} meanwhile.
        self._hashFd: int | None = None
        self._reserveAhead = reserveAhead
        #: The offset up to which space is reserved or, on a nearly full
        #: disk, no reservation is tried (0: nothing yet).
        self._reservedTo = 0

    @property
    def done(self) -> bool:
        return self._decoder.done

    @property
    def headerNeed(self) -> int:
        """
        Bytes of the next chunk header still to come (see
        L{bftp.wire.ChunkDecoder.headerNeed}); 0 after a write error,
        when the data is read and dropped.
        """
        return 0 if self.error is not None else self._decoder.headerNeed

    def spliceable(self) -> bool:
        """
        Whether the next bytes are payload that L{splice} may move: not
        after an error, nor where the payload would pass the limit.
        """
        left = self._decoder.payloadLeft
        return bool(left) and self.error is None and (self._limit is None or self.size + left <= self._limit)

    def splice(self, sock: int, pipe: SplicePipe) -> int:
        """
        Move the next bytes of the current payload from socket C{sock} into
        the file through C{pipe}, and have them hashed from the page cache
        (L{HashFeed.updateFrom}).  Only when L{spliceable}.

        @return: how many bytes; 0 at the end of the stream.
        @raise BlockingIOError: nothing to read now.
        @raise OSError: reading the socket failed.
        """
        if self._gather is not None:
            self.flush()
        n = pipe.fill(sock, self._decoder.payloadLeft)
        if not n:
            return 0
        self._decoder.took(n)
        if self._charge is not None and (refused := self._charge(n)) is not None:
            self.error = refused
            pipe.discard(n)
        else:
            fd = self._f.fileno()
            self._reserveFor(n)
            try:
                pipe.drainTo(fd, n)
            except OSError as e:
                if self._charge is not None:
                    self._charge(-n)
                self.error = e
            else:
                if self._hashFd is None:
                    self._hashFd = os.dup(fd)
                self._hashing.updateFrom(self._hashFd, self.size, self.size + n)
                self.size += n
                if self._writeback is not None:
                    self._unsynced += n
                    if self._unsynced >= self._writeback and not self._syncing:
                        self._startWriteback()
        if self._progress is not None:
            self._progress(n)
        return n

    def _releaseHashFd(self) -> None:
        fd, self._hashFd = self._hashFd, None
        if fd is not None:
            self._hashing.after(lambda: os.close(fd))

    @property
    def rest(self) -> bytes:
        """
        Bytes that came after the end chunk.
        """
        return self._decoder.rest

    def feed(self, data, release: Callable[[], None] | None = None) -> None:
        """
        @param release: with C{data} a view of a reused buffer: called
            once it is written and hashed.
        @raise bftp.wire.FramingError: for a chunk header that cannot be
            read, once the chunks before it are written.
        """
        try:
            try:
                pieces = self._decoder.feed(data)
            except FramingError as e:
                self._accept(e.pieces, release is not None)
                self.flush()
                raise
            self._accept(pieces, release is not None)
            if self._decoder.done:
                self.flush()
        finally:
            if release is not None:
                self._hashing.after(release)

    def _accept(self, pieces, inPlace: bool) -> None:
        for piece in pieces:
            n = len(piece)
            if self.error is None:
                if self._limit is not None and self.size + n > self._limit:
                    self.error = f"file exceeds the limit of {self._limit} bytes"
                elif self._charge is not None and (refused := self._charge(n)) is not None:
                    self.error = refused
                elif inPlace or n >= _DIRECT:
                    self.flush()
                    self._write(piece)
                else:
                    self._gatherPiece(piece)
            if self._progress is not None:
                self._progress(n)

    def _gatherPiece(self, piece) -> None:
        n = len(piece)
        if self._gather is not None and self._gathered + n > len(self._gather):
            self.flush()
        if self._gather is None:
            self._gather = self._takeGather()
        self._gather[self._gathered : self._gathered + n] = piece
        self._gathered += n
        self.size += n
        if self._flushCall is None:
            # Written at the end of this reactor turn at the latest: what
            # was received is in the file for STAT, a resume or a crash.
            self._flushCall = self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write (and hash) what is gathered: before the file is closed.
        """
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        buf, n = self._gather, self._gathered
        if buf is None or not n:
            return
        self._gather, self._gathered = None, 0
        self.size -= n
        if self._write(memoryview(buf)[:n]):
            self._hashing.after(lambda: self._giveGather(buf))

    def _takeGather(self) -> bytearray:
        # A pooled buffer when one is free: memory already touched, where
        # a new zeroed MiB per transfer costs its page faults (300
        # downloads in one process: 0.7 s of CPU).
        if self._spare:
            return self._spare.pop()
        if self._buffers is not None and self._buffers.size >= _GATHER:
            pooled = self._buffers.take()
            if pooled is not None:
                return pooled
        return bytearray(_GATHER)

    def _giveGather(self, buf: bytearray) -> None:
        # In a hashing thread, or at once.
        if self._buffers is not None and len(buf) == self._buffers.size:
            self._buffers.give(buf)
        else:
            self._spare.append(buf)

    def _write(self, piece) -> bool:
        n = len(piece)
        self._reserveFor(n)
        try:
            self._f.write(piece)
        except OSError as e:
            if self._charge is not None:
                self._charge(-n)
            self.error = e
            return False
        self.size += n
        self._hashing.update(piece)
        if self._writeback is not None:
            self._unsynced += n
            if self._unsynced >= self._writeback and not self._syncing:
                self._startWriteback()
        return True

    def _reserveFor(self, n: int) -> None:
        # The next n bytes go at self.size (what is gathered is written
        # first).
        end = self.size + n
        if self._reserveAhead is None or end <= self._reservedTo:
            return
        start = max(self.size, self._reservedTo)
        to = end + self._reserveAhead
        if self._limit is not None:
            to = max(end, min(to, self._limit))
        fd = self._f.fileno()
        disk = os.fstatvfs(fd)
        if disk.f_bavail * disk.f_frsize < _RESERVE_ROOM * self._reserveAhead:
            # Nearly full: space reserved for one upload and not used yet
            # could make another fail that would have fitted.  Write as
            # the data comes, and look again a step later.
            self._reservedTo = to
            return
        if reserveSpace(fd, start, to):
            self._reservedTo = to
        else:
            # The file system cannot, or the disk filled meanwhile: the
            # writes allocate as they go.
            self._reserveAhead = None

    def _releaseReserved(self) -> None:
        if self._reservedTo and not self._f.closed:
            releaseReserved(self._f.fileno())
        self._reserveAhead, self._reservedTo = None, 0

    def _startWriteback(self) -> None:
        self._unsynced = 0
        self._syncing = True
        # Its own descriptor: the file may be closed before the sync ends.
        fd = os.dup(self._f.fileno())

        def sync() -> None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

        def done(result) -> None:
            # A failed sync is found again by the fsync before the commit.
            self._syncing = False

        pool = self._reactor.getThreadPool()
        deferToThreadPool(self._reactor, pool, sync).addBoth(done)

    def digest(self) -> Deferred[str]:
        """
        @return: fires with the hex digest of the whole file once the end
            chunk has come and every byte is hashed.
        """
        self.flush()
        self._releaseReserved()
        self._releaseHashFd()
        return self._hashing.finish()

    def close(self) -> None:
        """
        Stop hashing (the transfer failed or was refused); what was
        received is written first, to be kept for a resume.
        """
        if self.error is None:
            self.flush()
        elif self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._releaseReserved()
        self._releaseHashFd()
        self._hashing.close()


def hashRange(fd: int, end: int, hasher=None, start: int = 0, buf: bytearray | None = None):
    """
    Feed bytes C{[start, end)} of C{fd} to C{hasher} (a new SHA-256 by
    default) and return it.  Blocking: call it in a thread.

    @param buf: the buffer to read into, reused by the caller; a new one
        by default.
    """
    if hasher is None:
        hasher = digests.new(digests.SHA256)
    # One buffer read into again and again: no allocation per read.  Not
    # mmap: a file truncated meanwhile would kill the process with SIGBUS.
    if buf is None:
        buf = bytearray(min(_READ, max(end - start, 0)))
    view = memoryview(buf)
    pos = start
    while pos < end:
        n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
        if not n:
            raise EOFError(f"file ends at byte {pos}, expected {end}")
        hasher.update(view[:n])
        pos += n
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


def storeDigest(fd: int, hexdigest: str, algorithm: str = digests.SHA256, st: os.stat_result | None = None) -> None:
    """
    Keep C{hexdigest} in the file's extended attributes, where the file
    system and the file's permissions allow it, for the size and
    modification time in C{st} (by default the file's now).  Blocking:
    call it in a thread.
    """
    if st is None:
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
    stored = _storedDigest(fd, st, algorithm)
    if stored is not None:
        return stored
    hexdigest = hashRange(fd, st.st_size, digests.new(algorithm)).hexdigest()
    # Kept with the file for the next GET, even by another server process,
    # if the file did not change while it was read (see storeDigest).  A
    # digest kept wrongly would only make downloads fail their check.
    now = os.fstat(fd)
    if (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
        storeDigest(fd, hexdigest, algorithm, st)
    return hexdigest


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
