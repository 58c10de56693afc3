"""
One connection over a blocking socket, in the thread (or process) that
owns it: L{BlockingTransport} is its transport, L{serveConnection} its
loop.

C{write} never blocks (bytes the kernel does not take wait in a buffer the
connection's own thread flushes), producers are honoured as a reactor
would, and the fast transfer path (L{IFastTransfer}: C{os.sendfile}, large
reads) is there as on Twisted's TCP transport.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from typing import Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.base import DelayedCall
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from coursenet.blocking.reactor import BlockingReactor, runCall
from coursenet.interfaces import IFastTransfer

_log = Logger()

#: Bytes written but not yet sent past which a push producer is paused
#: (Twisted's C{FileDescriptor.bufferSize}).
BUFFER_SIZE = 2**16
#: Bytes asked of the kernel per read, unless a protocol asks for more
#: (L{BlockingTransport.setReadSize}).
READ_SIZE = 2**16


def _address(addr) -> IPv4Address | IPv6Address:
    host, port = addr[0], addr[1]
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


@implementer(IFastTransfer)
class BlockingTransport:
    """
    An C{ITCPTransport} over a socket served by one thread (L{serveConnection}).

    Any thread holding the reactor lock may write; bytes that do not go at
    once wait in a buffer that the owning thread flushes.  C{pauseProducing}
    stops reading, as it would on a reactor.
    """

    bufferSize = BUFFER_SIZE

    def __init__(self, sock: socket.socket, reactor: BlockingReactor, owner: "_Connection") -> None:
        self.socket = sock
        self.reactor = reactor
        self._owner = owner
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.producer = None
        self.streamingProducer = False
        self.producerPaused = False
        self.readPaused = False
        self.wantWrite = False
        self.disconnecting = False
        self.disconnected = False
        self.aborted = False
        self.readSize = READ_SIZE
        self._host = _address(sock.getsockname())
        self._peer = _address(sock.getpeername())

    # -- ITransport -------------------------------------------------------

    def getPeer(self):
        return self._peer

    def getHost(self):
        return self._host

    def write(self, data: bytes) -> None:
        if self.disconnected or self.disconnecting or not data:
            return
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        if not self._owner.isCurrent():
            # Another connection's thread (a chat broadcast, say): the owner
            # sends everything written meanwhile at once, as a reactor sends
            # what one iteration wrote.
            self._owner.wake()
        if self._buffered > self.bufferSize and self.producer is not None and self.streamingProducer:
            if not self.producerPaused:
                self.producerPaused = True
                self.producer.pauseProducing()

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        if not self.disconnected:
            self.disconnecting = True
            self._owner.wake()

    def abortConnection(self) -> None:
        if not self.disconnected:
            self.aborted = True
            self._owner.wake()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    # -- IConsumer ----------------------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"producer {self.producer} was never unregistered")
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        self.producerPaused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._owner.wake()

    # -- IPushProducer (reading) -----------------------------------------------

    def pauseProducing(self) -> None:
        self.readPaused = True

    def resumeProducing(self) -> None:
        self.readPaused = False
        self._owner.wake()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- IFastTransfer ------------------------------------------------------------

    def sendfileSocket(self) -> int:
        """
        The socket's descriptor: the twins serve plain TCP only.
        """
        return self.socket.fileno()

    def startWriting(self) -> None:
        """
        @see: L{IFastTransfer.startWriting}
        """
        self.wantWrite = True
        self._owner.wake()

    def setReadSize(self, size: int | None) -> None:
        """
        @see: L{IFastTransfer.setReadSize}
        """
        self.readSize = size or READ_SIZE

    # -- for the owning thread ------------------------------------------------------

    def pending(self) -> bool:
        return bool(self._buffered)

    def flush(self) -> None:
        """
        Send what the kernel takes now, without blocking.
        """
        while self._buffer and not self.disconnected:
            data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
            try:
                sent = self.socket.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.aborted = True
                self._buffer, self._buffered = [], 0
                return
            rest = data[sent:]
            self._buffer = [rest] if rest else []
            self._buffered = len(rest)
            if not sent:
                return

    def writable(self) -> None:
        """
        The socket can take more: flush, then let a producer go on, or
        finish closing (Twisted's C{FileDescriptor.doWrite}).
        """
        self.flush()
        if self._buffered:
            return
        self.wantWrite = False
        if self.producer is not None and (not self.streamingProducer or self.producerPaused):
            self.producerPaused = False
            self.producer.resumeProducing()


class _Connection:
    """
    One connection's loop, in the thread (or process) that owns it.
    """

    def __init__(self, sock: socket.socket, factory, reactor: BlockingReactor) -> None:
        self.reactor = reactor
        self.thread = threading.get_ident()
        self.sock = sock
        self._wakefd: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._timers: list[DelayedCall] = []
        self._readers: dict[int, Callable[[], None]] = {}
        sock.setblocking(False)
        self.transport = BlockingTransport(sock, reactor, self)
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.transport = self.transport

    def isCurrent(self) -> bool:
        return threading.get_ident() == self.thread

    def wake(self) -> None:
        if not self.isCurrent() and self._wakefd is not None:
            try:
                os.eventfd_write(self._wakefd, 1)
            except OSError:
                pass

    def addReader(self, fd: int, callback: Callable[[], None]) -> None:
        """
        Also wait for C{fd} to be readable, then call C{callback} (with the
        lock).
        """
        self._readers[fd] = callback

    def callLater(self, delay, f, args, kwargs) -> DelayedCall:
        call = DelayedCall(
            self.reactor.seconds() + delay, f, args, kwargs,
            self._cancelled, lambda c: self.wake(), self.reactor.seconds,
        )
        self._timers.append(call)
        self.wake()
        return call

    def _cancelled(self, call: DelayedCall) -> None:
        if call in self._timers:
            self._timers.remove(call)

    def _runTimers(self) -> None:
        now = self.reactor.seconds()
        for call in [c for c in self._timers if c.getTime() <= now]:
            if call in self._timers:
                self._timers.remove(call)
                runCall(call)

    def _timeout(self) -> int | None:
        live = [c.getTime() for c in self._timers if c.active()]
        if not live:
            return None
        return max(0, int((min(live) - self.reactor.seconds()) * 1000) + 1)

    def run(self) -> None:
        reactor, transport, protocol = self.reactor, self.transport, self.protocol
        reactor.serving(self)
        poller = select.poll()
        fd = self.sock.fileno()
        wakefd = self._wakefd
        assert wakefd is not None, "run after close"
        poller.register(wakefd, select.POLLIN)
        for extra in self._readers:
            poller.register(extra, select.POLLIN)
        reason: Failure = Failure(ConnectionDone())
        reactor.acquire()
        try:
            protocol.makeConnection(transport)
            while True:
                if transport.pending():
                    transport.writable()
                if transport.aborted:
                    reason = Failure(ConnectionAborted())
                    break
                if transport.disconnecting and not transport.pending():
                    if transport.producer is None or (
                        transport.streamingProducer and not transport.producerPaused
                    ):
                        break
                events = 0
                if not transport.readPaused and not transport.disconnecting:
                    events |= select.POLLIN
                if transport.pending() or transport.wantWrite:
                    events |= select.POLLOUT
                poller.register(fd, events)
                timeout = self._timeout()
                reactor.release()
                try:
                    ready = poller.poll(timeout)
                    data: bytes | BaseException | None = None
                    if any(f == fd and ev & (select.POLLIN | select.POLLHUP | select.POLLERR) for f, ev in ready) and events & select.POLLIN:
                        try:
                            data = self.sock.recv(transport.readSize)
                        except (BlockingIOError, InterruptedError):
                            data = None
                        except OSError as e:
                            data = e
                    elif any(f == fd and ev & (select.POLLHUP | select.POLLERR) for f, ev in ready):
                        data = ConnectionLost()
                    if any(f == wakefd for f, _ in ready):
                        try:
                            os.eventfd_read(wakefd)
                        except BlockingIOError:
                            pass
                finally:
                    reactor.acquire()
                for f, _ in ready:
                    if f in self._readers:
                        self._readers[f]()
                if data == b"":
                    break
                if isinstance(data, BaseException):
                    reason = Failure(data if isinstance(data, ConnectionLost) else ConnectionLost(str(data)))
                    break
                if data:
                    protocol.dataReceived(data)
                if any(f == fd and ev & select.POLLOUT for f, ev in ready):
                    transport.writable()
                self._runTimers()
        except Exception:
            _log.failure("connection from {peer} failed", peer=transport.getPeer())
            reason = Failure()
        finally:
            transport.disconnected = True
            try:
                if transport.producer is not None:
                    transport.producer.stopProducing()
                protocol.connectionLost(reason)
            except Exception:
                _log.failure("connectionLost failed")
            finally:
                self._orphan()
                reactor.serving(None)
                reactor.release()
                self.close()

    def _orphan(self) -> None:
        """
        Timers this connection's thread still owns (set by its code for
        another connection, say) move to threads of their own.
        """
        timers, self._timers = self._timers, []
        for call in timers:
            if call.active():
                self.reactor.adopt(call)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            fd, self._wakefd = self._wakefd, None
            if fd is not None:
                os.close(fd)


def serveConnection(sock: socket.socket, factory, reactor: BlockingReactor, prepare=None) -> None:
    """
    Run C{factory}'s protocol over C{sock} in the calling thread until the
    connection ends.

    @param prepare: called with the L{_Connection} before the protocol
        starts (to add readers).
    """
    connection = _Connection(sock, factory, reactor)
    if prepare is not None:
        prepare(connection)
    connection.run()
