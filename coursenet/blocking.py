"""
The same Twisted protocols, run thread-per-connection or process-per-connection.

A service's L{Protocol} and L{Factory} hold its rules: parsing, commands,
limits.  This module runs them without a reactor, from blocking sockets,
so that the course can compare I/O models with one implementation of the
rules (docs/event-vs-threads.md):

  - L{BlockingReactor} stands in for the reactor: its "thread pool" runs
    work at once in the calling thread, C{callFromThread} runs at once,
    and C{callLater} timers belong to the connection whose code set them
    and run in that connection's thread.
  - L{BlockingTransport} is the transport: C{write} never blocks (bytes the
    kernel does not take wait in a buffer the connection's own thread
    flushes), producers are honoured as a reactor would, and the fast
    transfer path (L{coursenet.interfaces.IFastTransfer}) is there.
  - L{serveConnection} is one connection's life in its own thread or
    process: wait in C{poll()} for its socket (or a timer, or a wake-up
    from another thread), hand what arrives to the protocol.
  - L{ThreadedServer} and L{ForkingServer} are C{socketserver}'s
    C{ThreadingTCPServer} and C{ForkingTCPServer} calling it.

The protocols were written for a cooperative world, where each callback
runs to its end before anything else happens.  Threads are preemptive, so
the reactor's one lock (L{BlockingReactor.lock}) gives that guarantee
back: a thread holds it while it runs protocol code and releases it for
every blocking call (C{poll}, thread-pool work such as scrypt or hashing).
No lock is ever held across a blocking socket operation.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import pickle
import select
import selectors
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from typing import Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from coursenet.interfaces import IFastTransfer

_log = Logger()

#: Bytes written but not yet sent past which a push producer is paused
#: (Twisted's C{FileDescriptor.bufferSize}).
BUFFER_SIZE = 2**16
#: Bytes asked of the kernel per read, unless a protocol asks for more
#: (L{BlockingTransport.setReadSize}).
READ_SIZE = 2**16


class _InlinePool:
    """
    A "thread pool" that runs work in the calling thread, with the reactor
    lock released meanwhile: the thread blocks, other connections go on.
    """

    def __init__(self, reactor: "BlockingReactor") -> None:
        self._reactor = reactor

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        try:
            result = self._reactor.outside(f, *args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callInThread(self, f, *args, **kwargs) -> None:
        self.callInThreadWithCallback(lambda ok, result: None, f, *args, **kwargs)


class BlockingReactor:
    """
    What the protocols ask of a reactor, for code that runs in many
    threads (or forked processes), each owning one connection.

    @ivar lock: held by whichever thread runs protocol code.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._local = threading.local()
        self._pool = _InlinePool(self)

    # -- the lock -------------------------------------------------------------

    def holding(self) -> bool:
        """
        Whether the calling thread holds L{lock}.
        """
        return getattr(self._local, "held", False)

    def acquire(self) -> None:
        self.lock.acquire()
        self._local.held = True

    def release(self) -> None:
        self._local.held = False
        self.lock.release()

    def outside(self, f: Callable, *args, **kwargs):
        """
        Call C{f}, a blocking call, without the lock if the caller holds it.
        """
        if not self.holding():
            return f(*args, **kwargs)
        self.release()
        try:
            return f(*args, **kwargs)
        finally:
            self.acquire()

    def inside(self, f: Callable, *args, **kwargs):
        """
        Call C{f}, protocol code, with the lock.
        """
        if self.holding():
            return f(*args, **kwargs)
        self.acquire()
        try:
            return f(*args, **kwargs)
        finally:
            self.release()

    def wait(self, d: Deferred, timeout: float | None = None):
        """
        Block the calling thread until C{d} fires (the lock released
        meanwhile); return its result or raise its failure.
        """
        done = threading.Event()
        box: list = []

        def fired(result):
            box.append(result)
            done.set()

        d.addBoth(fired)
        if not box:
            if not self.outside(done.wait, timeout):
                raise TimeoutError("gave up waiting")
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]

    def afterFork(self) -> None:
        """
        In a forked child: a fresh lock, whatever other threads of the
        parent held when it forked.
        """
        self.lock = threading.Lock()
        self._local = threading.local()

    # -- IReactorTime, IReactorThreads ------------------------------------------

    def seconds(self) -> float:
        return time.time()

    def callLater(self, delay: float, f: Callable, *args, **kwargs) -> DelayedCall:
        """
        Call C{f} in C{delay} seconds, in the thread of the connection whose
        code asks (or in a thread of its own if no connection's does).
        """
        owner = getattr(self._local, "connection", None)
        if owner is None:
            return self._orphanCall(delay, f, args, kwargs)
        return owner.callLater(delay, f, args, kwargs)

    def _orphanCall(self, delay, f, args, kwargs) -> DelayedCall:
        call = DelayedCall(self.seconds() + delay, f, args, kwargs, None, None, self.seconds)
        self.adopt(call)
        return call

    def adopt(self, call: DelayedCall) -> None:
        """
        Run C{call} when it is due in a thread of its own (a timer whose
        connection is gone, or that no connection set).
        """
        wake = threading.Event()
        call.canceller = lambda c: wake.set()
        call.resetter = lambda c: wake.set()

        def run():
            while call.active():
                left = call.getTime() - self.seconds()
                if left > 0:
                    wake.wait(left)
                    wake.clear()
                    continue
                self.inside(self._runCall, call)

        threading.Thread(target=run, daemon=True).start()

    @staticmethod
    def _runCall(call: DelayedCall) -> None:
        if not call.active():
            return
        call.called = 1
        try:
            call.func(*call.args, **call.kw)
        except Exception:
            _log.failure("timed call {f} failed", f=call.func)

    def callFromThread(self, f: Callable, *args, **kwargs) -> None:
        """
        Run C{f} now, in the calling thread, with the lock.
        """
        self.inside(f, *args, **kwargs)

    def getThreadPool(self) -> _InlinePool:
        return self._pool

    def callInThread(self, f: Callable, *args, **kwargs) -> None:
        self._pool.callInThread(f, *args, **kwargs)

    def callWhenRunning(self, f: Callable, *args, **kwargs) -> None:
        f(*args, **kwargs)

    def addSystemEventTrigger(self, phase, event, f, *args, **kwargs):
        return None

    def removeSystemEventTrigger(self, triggerID) -> None:
        pass


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
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
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
                BlockingReactor._runCall(call)

    def _timeout(self) -> int | None:
        live = [c.getTime() for c in self._timers if c.active()]
        if not live:
            return None
        return max(0, int((min(live) - self.reactor.seconds()) * 1000) + 1)

    def run(self) -> None:
        reactor, transport, protocol = self.reactor, self.transport, self.protocol
        reactor._local.connection = self
        poller = select.poll()
        fd = self.sock.fileno()
        poller.register(self._wakefd, select.POLLIN)
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
                    data = None
                    if any(f == fd and ev & (select.POLLIN | select.POLLHUP | select.POLLERR) for f, ev in ready) and events & select.POLLIN:
                        try:
                            data = self.sock.recv(transport.readSize)
                        except (BlockingIOError, InterruptedError):
                            data = None
                        except OSError as e:
                            data = e
                    elif any(f == fd and ev & (select.POLLHUP | select.POLLERR) for f, ev in ready):
                        data = ConnectionLost()
                    if any(f == self._wakefd for f, _ in ready):
                        try:
                            os.eventfd_read(self._wakefd)
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
                reactor._local.connection = None
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


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.serveRequest(self.request)


class _ServerMixin:
    """
    What the threaded and the forking servers share.
    """

    allow_reuse_address = True
    request_queue_size = 1024
    factory = None
    reactor: BlockingReactor

    def serveRequest(self, sock: socket.socket) -> None:
        serveConnection(sock, self.factory, self.reactor)

    def handle_error(self, request, client_address) -> None:
        _log.failure("request from {addr} failed", addr=client_address)


class ThreadedServer(_ServerMixin, socketserver.ThreadingTCPServer):
    """
    One thread per connection.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, factory, reactor: BlockingReactor) -> None:
        self.factory, self.reactor = factory, reactor
        super().__init__(address, _Handler)


class ForkingServer(_ServerMixin, socketserver.ForkingTCPServer):
    """
    One process per connection.  Children share nothing with each other
    but what they inherit at the fork.
    """

    block_on_close = False

    def __init__(self, address, factory, reactor: BlockingReactor, maxChildren: int = 4096) -> None:
        self.factory, self.reactor = factory, reactor
        self.max_children = maxChildren
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        self.beforeFork(request)
        # Without this the child's garbage collector writes to every object
        # it inherited, and copy-on-write copies the parent's whole heap
        # into every child.
        gc.freeze()
        super().process_request(request, client_address)
        self.afterForkInParent(request)

    def beforeFork(self, request) -> None:
        """
        In the parent, before each fork.
        """

    def afterForkInParent(self, request) -> None:
        """
        In the parent, after each fork.
        """

    def finish_request(self, request, client_address) -> None:
        # Only the child runs this.
        self.reactor.afterFork()
        self.socket.close()
        self.afterForkInChild(request)
        super().finish_request(request, client_address)

    def afterForkInChild(self, request) -> None:
        """
        In the child, before it serves its connection.
        """

    def server_close(self) -> None:
        """
        Stop listening, and end the children: the server goes with them.
        """
        for pid in list(self.active_children or ()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        super().server_close()


def sendMessage(sock: socket.socket, message) -> None:
    """
    Send a picklable C{message} to the other end of a hub link.
    """
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recvExactly(sock: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        try:
            part = sock.recv(left)
        except BlockingIOError:
            select.poll().poll(10)
            continue
        if not part:
            raise EOFError("hub link closed")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def recvMessage(sock: socket.socket):
    """
    The next message from the other end of a hub link.

    @raise EOFError: if the link is closed.
    """
    (n,) = struct.unpack("!I", _recvExactly(sock, 4))
    return pickle.loads(_recvExactly(sock, n))


class Link:
    """
    The parent's end of the link to one forked child.

    Messages pushed while the reactor lock is held (an event for that
    child, say) wait in the pushing thread's outbox and go once the lock
    is released (L{HubForkingServer}).
    """

    _outbox = threading.local()

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._sending = threading.Lock()
        self.state: dict = {}

    def push(self, message) -> None:
        box = getattr(self._outbox, "messages", None)
        if box is None:
            self.send(message)
        else:
            box.append((self, message))

    def send(self, message) -> None:
        with self._sending:
            try:
                sendMessage(self.sock, message)
            except OSError:
                pass  # the child is gone; its thread will notice

    @classmethod
    def collecting(cls):
        """
        Start collecting the calling thread's pushes.
        """
        cls._outbox.messages = []

    @classmethod
    def flush(cls) -> None:
        """
        Send the calling thread's collected pushes; call without the lock.
        """
        box, cls._outbox.messages = cls._outbox.messages, []
        for link, message in box:
            link.send(message)


class HubForkingServer(ForkingServer):
    """
    A forking server whose children share state through the parent.

    Each child gets one end of a socket pair; in the parent one thread
    waits on all the other ends (an event loop: a thread per child would
    make every later fork copy every thread's state) and answers each
    request with C{hub.handle(link, message)}, run with the reactor lock.
    Forked processes share no memory: this link is how the state of the
    whole server (who is in which room) stays in one place.

    @param hub: has C{handle(link, message)}, returning the reply, and
        C{linkLost(link)}.
    @param childFactory: called in the child with its end of the link;
        returns C{(factory, prepare)} for L{serveConnection}.
    """

    def __init__(self, address, hub, childFactory, reactor: BlockingReactor, maxChildren: int = 4096) -> None:
        self.hub = hub
        self._childFactory = childFactory
        self._links: set[Link] = set()
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._prepare = None
        self._selector = selectors.DefaultSelector()
        super().__init__(address, None, reactor, maxChildren)
        threading.Thread(target=self._serveLinks, daemon=True).start()

    def beforeFork(self, request) -> None:
        self._pair = socket.socketpair()

    def afterForkInParent(self, request) -> None:
        parentEnd, childEnd = self._pair
        childEnd.close()
        link = Link(parentEnd)
        self._links.add(link)
        self._selector.register(parentEnd, selectors.EVENT_READ, link)

    def afterForkInChild(self, request) -> None:
        parentEnd, childEnd = self._pair
        parentEnd.close()
        for link in list(self._links):
            link.sock.close()
        self._links.clear()
        self._selector = None
        self.factory, self._prepare = self._childFactory(childEnd)

    def serveRequest(self, sock: socket.socket) -> None:
        serveConnection(sock, self.factory, self.reactor, self._prepare)

    def _serveLinks(self) -> None:
        Link.collecting()
        while True:
            for key, _ in self._selector.select(timeout=0.5):
                link = key.data
                try:
                    message = recvMessage(link.sock)
                except (EOFError, OSError):
                    self._selector.unregister(link.sock)
                    self.reactor.inside(self.hub.linkLost, link)
                    Link.flush()
                    self._links.discard(link)
                    link.sock.close()
                    continue
                reply = self.reactor.inside(self.hub.handle, link, message)
                Link.flush()
                link.send(reply)


class SharedNameSet:
    """
    A set of names (C{in}, C{add}, C{discard}, iteration) shared by forked
    processes: a name is in the set while some process holds an
    C{flock} on its file in C{directory}.  A process that dies drops its
    names with its locks.
    """

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._held: dict[str, int] = {}

    def _file(self, name: str) -> str:
        return os.path.join(self._dir, hashlib.sha256(name.encode("utf-8")).hexdigest())

    @staticmethod
    def _locked(path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __contains__(self, name: str) -> bool:
        return name in self._held or self._locked(self._file(name))

    def add(self, name: str) -> None:
        if name in self._held:
            return
        fd = os.open(self._file(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Another process took it since the caller checked: refuse
            # rather than wait under the reactor lock.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, name.encode("utf-8"))
        self._held[name] = fd

    def discard(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)

    def __iter__(self):
        names = set(self._held)
        for entry in os.listdir(self._dir):
            path = os.path.join(self._dir, entry)
            if self._locked(path):
                with open(path, "rb") as f:
                    names.add(f.read().decode("utf-8"))
        return iter(names)


def parseListen(text: str) -> tuple[str, int]:
    """
    C{HOST:PORT} as C{(host, port)}.

    @raise ValueError: if it is not one.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen takes HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def raiseFileLimit() -> None:
    """
    Allow as many descriptors as the hard limit does: a connection per
    client, and a wake-up descriptor per threaded connection.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def runServer(server: socketserver.BaseServer, name: str) -> None:
    """
    Serve until SIGTERM or SIGINT, logging to stderr.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    _log.info("{name} listening on {host}:{port}", name=name, host=host, port=port)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class TwinOptionsMixin:
    """
    Mixed into a service's twistd C{Options} (before it) for its twins:
    C{--listen HOST:PORT} instead of endpoint strings, C{--forking}, and
    no TLS.  The data options stay the service's own.
    """

    defaultListen = "127.0.0.1:0"
    optFlags = [["forking", None, "one process per connection (default: one thread)"]]

    def opt_listen(self, description: str) -> None:
        """
        Listen on HOST:PORT (default 127.0.0.1 and the service's port)
        """
        from twisted.python import usage

        try:
            self.setdefault("address", parseListen(description))
        except ValueError as e:
            raise usage.UsageError(str(e))
        else:
            self["listen"].append(description)

    def postOptions(self) -> None:
        from twisted.python import usage

        if self.get("tls-cert"):
            raise usage.UsageError("the threaded and forking twins serve plain TCP only; no --tls-cert")
        if len(self["listen"]) > 1:
            raise usage.UsageError("the twins listen on one HOST:PORT")
        if not self["listen"]:
            self.opt_listen(self.defaultListen)
        super().postOptions()


def twinMain(options, argv: list[str] | None, makeServer, name: str) -> int:
    """
    Run a service's twin from the command line.

    @param options: the service's L{TwinOptionsMixin} options, unparsed.
    @param makeServer: C{(options, reactor) -> socketserver server}, built
        around the service's own factory.
    """
    from twisted.python import usage

    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{name}: {e}\n{options}", file=sys.stderr)
        return 2
    raiseFileLimit()
    server = makeServer(options, BlockingReactor())
    runServer(server, f"{name} ({'forking' if options['forking'] else 'threaded'})")
    return 0
