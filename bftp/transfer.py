"""
Moving file data in BFTP chunks, used by the server and the client alike.

L{ChunkedFileSender} streams part of an open file as chunks, with the
transport's backpressure; on a plain TCP transport the chunk payloads go
from the page cache to the socket with C{os.sendfile}, never through Python.
L{ChunkSink} is the other end: it writes payloads to a file and hashes them.
L{DigestCache} computes whole-file SHA-256 digests in a thread.
"""

from __future__ import annotations

import collections
import hashlib
import os
from typing import Callable

from twisted.internet import abstract, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from bftp.wire import CHUNK_SIZE, END_OF_DATA, ChunkDecoder, chunkHeader

Progress = Callable[[int], None]

_READ = 1 << 20


def _sendfileSocket(transport) -> int | None:
    """
    The socket descriptor to C{sendfile} to, if C{transport} is a plain TCP
    connection whose write buffer this module may bypass; else L{None}.
    """
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        if isinstance(transport, abstract.FileDescriptor):
            return transport.fileno()
    return None


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
        self._transport = None
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
            self._sock = _sendfileSocket(transport)
        if self._sock is not None:
            transport.registerProducer(self, False)
        else:
            transport.registerProducer(self, True)
            self._writeChunks()
        return self.deferred

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
            self._transport.write(chunkHeader(self._chunkLeft))

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
                self._transport.write(chunkHeader(n) + data)
                self._advance(n)
        finally:
            self._writing = False

    def _sendfile(self) -> None:
        while self._chunkLeft:
            try:
                sent = os.sendfile(self._sock, self._fd, self._pos, self._chunkLeft)
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
        self._transport.startWriting()

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._progress is not None:
            self._progress(n)

    def _finish(self) -> None:
        self._transport.write(END_OF_DATA)
        self._transport.unregisterProducer()
        self.deferred.callback(self._pos - self._start)

    def _abort(self, reason: BaseException) -> None:
        # Mid-chunk the stream cannot be repaired: the peer would read file
        # bytes as a header.  Drop the connection instead.
        self._transport.unregisterProducer()
        self._transport.abortConnection()
        if not self.deferred.called:
            self.deferred.errback(Failure(reason))

    def stopProducing(self) -> None:
        if not self.deferred.called:
            self.deferred.errback(Failure(ConnectionError("connection lost during transfer")))


class ChunkSink:
    """
    Receive chunk payloads into a file, hashing them on the way.

    A write error (a full disk, say) does not stop the stream: the rest of
    the data is read and discarded so the connection stays in step, and
    L{error} tells what went wrong.
    """

    def __init__(
        self,
        f,
        hasher,
        limit: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """
        @param f: a binary file open for writing at the right offset.
        @param hasher: a C{hashlib} object already fed with the bytes before
            that offset.
        @param limit: refuse to write past this many bytes in the file.
        """
        self._f = f
        self.hasher = hasher
        self._limit = limit
        self._progress = progress
        self._decoder = ChunkDecoder()
        self.error: OSError | str | None = None
        self.size = f.tell()

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
            read.
        """
        for piece in self._decoder.feed(data):
            n = len(piece)
            if self.error is None:
                if self._limit is not None and self.size + n > self._limit:
                    self.error = f"file exceeds the limit of {self._limit} bytes"
                else:
                    try:
                        self._f.write(piece)
                    except OSError as e:
                        self.error = e
            if self.error is None:
                self.hasher.update(piece)
                self.size += n
            if self._progress is not None:
                self._progress(n)


def hashRange(fd: int, end: int, hasher=None):
    """
    Feed bytes C{[0, end)} of C{fd} to C{hasher} (a new SHA-256 by default)
    and return it.  Blocking: call it in a thread.
    """
    if hasher is None:
        hasher = hashlib.sha256()
    pos = 0
    while pos < end:
        data = os.pread(fd, min(_READ, end - pos), pos)
        if not data:
            raise EOFError(f"file ends at byte {pos}, expected {end}")
        hasher.update(data)
        pos += len(data)
    return hasher


def hashInThread(reactor, fd: int, end: int) -> Deferred:
    """
    L{hashRange} in the reactor's thread pool.

    @return: fires with the C{hashlib} object.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), hashRange, fd, end)


class DigestCache:
    """
    Whole-file SHA-256 digests, computed in a thread and remembered by
    device, inode, size and modification time; a digest being computed is
    shared by everyone who asks for it meanwhile.
    """

    def __init__(self, reactor, size: int = 1024) -> None:
        self._reactor = reactor
        self._size = size
        self._done: collections.OrderedDict[tuple, str] = collections.OrderedDict()
        self._pending: dict[tuple, list[Deferred]] = {}

    def digest(self, fd: int, st: os.stat_result) -> Deferred[str]:
        """
        @return: fires with the hex digest of the file open as C{fd}, whose
            C{fstat} is C{st}.
        """
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in self._done:
            self._done.move_to_end(key)
            return succeed(self._done[key])
        waiters = self._pending.get(key)
        d: Deferred[str] = Deferred()
        if waiters is not None:
            waiters.append(d)
            return d
        self._pending[key] = [d]
        # The thread reads its own descriptor: the caller may close fd
        # before the digest is done.
        own = os.dup(fd)

        def done(result):
            os.close(own)
            if not isinstance(result, Failure):
                result = result.hexdigest()
                self._done[key] = result
                while len(self._done) > self._size:
                    self._done.popitem(last=False)
            for w in self._pending.pop(key):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        hashInThread(self._reactor, own, st.st_size).addBoth(done)
        return d

