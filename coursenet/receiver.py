"""
The one command receiver every line-based server of the project is built
on: line framing, in-order pipelining and output back-pressure, whatever
the client does.

L{CommandReceiver} is mixed in first, before the protocol's own classes
(ours or Twisted's C{LineReceiver}, C{LineOnlyReceiver}, C{IRC}, C{SMTP},
C{POP3}, C{IMAP4Server}), and keeps their API: C{lineReceived},
C{rawDataReceived}, C{setRawMode}, C{setLineMode}, C{pauseProducing},
C{resumeProducing}, C{clearLineBuffer}.

Input:
  - a line ends at LF; a CR before it is part of the line ending, not of
    the line, so C{maxLineLength} counts the same bytes whichever ending
    the client uses;
  - an overlong line is reported once (L{CommandReceiver.lineLengthExceeded})
    and skipped up to its end; the lines after it are read as usual;
  - a C{lineReceived} that returns an unfired L{Deferred} holds every
    later line until it fires, so pipelined commands are answered in
    order;
  - a client that has too much output waiting is not read from until the
    output drains (see below), so a flood of cheap commands whose answers
    are never read costs no more than one transport buffer.

Output goes through an L{Outbox}, the transport as the protocol sees it.
It stays registered with the real transport as a streaming producer, so it
knows when the transport's own buffer is full (the high-water mark) and
when it has drained.  While it is full:
  - reading from this connection stops;
  - bytes written are counted, and past C{outputLimit} the client is cut
    off with C{abortConnection};
  - if it stays full for C{drainTimeout} seconds, the client is cut off.
And C{loseConnection} is bounded too: a client that does not read what is
left is aborted C{closeTimeout} seconds later.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

from OpenSSL.SSL import RECEIVED_SHUTDOWN
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ISystemHandle, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy

from coursenet.admission import Admission
from coursenet.logs import LogBudget


_budgets: weakref.WeakKeyDictionary[Any, LogBudget] = weakref.WeakKeyDictionary()
_flushers: weakref.WeakKeyDictionary[Any, "_TurnFlush"] = weakref.WeakKeyDictionary()

#: Bytes a coalescing outbox holds before it writes them out at once,
#: without waiting for the end of the turn: as much again as the
#: transport's own buffer (Twisted's C{FileDescriptor.bufferSize}).
COALESCE_LIMIT = 64 * 1024


def _cutOffLog(clock: Any) -> LogBudget:
    """
    One log budget for the cut-offs on a clock: many clients that do not
    read must not become many log lines.
    """
    budget = _budgets.get(clock)
    if budget is None:
        budget = _budgets[clock] = LogBudget(Logger(namespace=__name__), clock)
    return budget


class _TurnFlush:
    """
    The coalescing outboxes of one clock that have output queued in this
    reactor turn: one C{callLater(0)} for all of them, armed by the first,
    writes each one's output out in a single C{write} at the end of the
    turn.
    """

    __slots__ = ("_clock", "_dirty", "_before", "_call")

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._dirty: list[Outbox] = []
        self._before: list[Callable[[], None]] = []
        self._call: Any = None

    def add(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def before(self, call: Callable[[], None]) -> None:
        self._before.append(call)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        # Output queued while flushing (a cut-off member's QUIT to the
        # others) goes in the next turn's list, flushed in the next turn.
        self._call = None
        before, self._before = self._before, []
        for call in before:
            call()
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


def atEndOfTurn(clock: Any, call: Callable[[], None]) -> None:
    """
    Run C{call} at the end of this reactor turn of C{clock}, before the
    coalescing outboxes write out what they were given in it: what it
    writes goes out in the same turn.
    """
    _turnFlush(clock).before(call)


class _TurnQueue:
    """
    What a coalescing L{Outbox} has been given in this turn, not yet
    written.  Its C{write} is the outbox's: a small object of its own, so
    that the one call per member per message finds its attributes fast
    (the outbox's C{__getattr__} makes each of its own lookups slow).

    @ivar items: the bytes queued, or L{None} when nothing is queued and
        whenever the outbox is full, cut off or closing: then C{write}
        goes to the outbox's own rules.
    @ivar holder: L{None}, or what holds this connection's output for the
        rest of the turn (L{claim}), to hand it back in order: it has
        C{hold(queue, data)}, given every C{write}, and C{release(queue,
        keep)}, which sets C{holder} back to L{None} and, with C{keep},
        L{put}s what it holds.  A chat room's turn of messages
        (L{chat.rooms.Room}) is one.  The outbox releases it when the bytes
        must be counted at once (the transport is full) or sent now (the
        connection is closing), and drops it when the client is cut off.
    """

    __slots__ = ("_outbox", "items", "size", "holder")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.items: list[bytes] | None = None
        self.size = 0
        self.holder: Any = None

    def claim(self, holder: Any) -> bool:
        """
        Let C{holder} hold this connection's output for the rest of the
        turn, unless another does, or its bytes are counted as written (the
        transport is full), or it is closing or cut off.
        """
        outbox = self._outbox
        if self.holder is not None or outbox.full or outbox.closing or outbox.cutOff:
            return False
        self.holder = holder
        return True

    def put(self, data: bytes) -> None:
        """
        Queue C{data} for the end of the turn, as written before now: for a
        holder giving back what it held.
        """
        if self.items is None:
            self.items = [data]
            self.size = len(data)
            outbox = self._outbox
            assert outbox._flusher is not None
            outbox._flusher.add(outbox)
        else:
            self.items.append(data)
            self.size += len(data)

    def release(self, keep: bool = True) -> None:
        """
        Take back what a holder holds: written (C{keep}) or dropped.
        """
        if self.holder is not None:
            self.holder.release(self, keep)

    def write(self, data: bytes) -> None:
        holder = self.holder
        if holder is not None:
            holder.hold(self, data)
            return
        items = self.items
        if items is None:
            self._outbox._writeOut(data)
            return
        items.append(data)
        self.size += len(data)
        if self.size >= COALESCE_LIMIT:
            self._outbox.flush()


def _turnFlush(clock: Any) -> _TurnFlush:
    flusher = _flushers.get(clock)
    if flusher is None:
        flusher = _flushers[clock] = _TurnFlush(clock)
    return flusher


class _Callbacks:
    """
    An L{Outbox}'s listener made of three callables.
    """

    __slots__ = ("_outputFull", "_outputDrained", "cutOff")

    def __init__(
        self, onFull: Callable[[], None], onDrained: Callable[[], None], onCutOff: Callable[[str], None]
    ) -> None:
        self._outputFull = onFull
        self._outputDrained = onDrained
        self.cutOff = onCutOff


@implementer(IPushProducer)
class Outbox:
    """
    A transport in front of a connection's real one: everything is passed
    through, and unsent output is bounded.

    With C{coalesce}, what is written in one reactor turn is queued and
    written to the real transport at once, in one C{write}, when the turn
    ends (or as soon as L{COALESCE_LIMIT} bytes are queued): a chat room's
    fan-out makes one write per member per turn instead of one per member
    per message.  Nothing is held past the end of the turn, and the rules
    below are the same: while the transport is full, bytes are counted
    when they are written (not when they are flushed), and a cut-off
    connection gets nothing more, queued or not.  A protocol that switches
    its transport to TLS must not coalesce.

    @ivar wrappedTransport: the real transport.
    @ivar full: whether the real transport's buffer is past its high-water
        mark (it asked its producer to pause).
    @ivar waiting: bytes written since it became full.
    """

    def __init__(
        self,
        transport: Any,
        clock: Any,
        limit: int,
        drainTimeout: float,
        closeTimeout: float,
        onFull: Callable[[], None] = lambda: None,
        onDrained: Callable[[], None] = lambda: None,
        onCutOff: Callable[[str], None] = lambda why: None,
        coalesce: bool = False,
        listener: Any = None,
    ) -> None:
        """
        @param listener: instead of the three callbacks, an object with
            C{_outputFull()}, C{_outputDrained()} and C{cutOff(why)} (a
            L{CommandReceiver}): one reference kept, not three bound
            methods, for each of many connections.
        """
        self.wrappedTransport = transport
        self.limit = limit
        self.drainTimeout = drainTimeout
        self.closeTimeout = closeTimeout
        self.full = False
        self.waiting = 0
        self.closing = False
        self.cutOff = False
        self._clock = clock
        self._listener = listener if listener is not None else _Callbacks(onFull, onDrained, onCutOff)
        self._stall: Any = None
        self._producer: Any = None
        self._flusher = _turnFlush(clock) if coalesce else None
        #: Output written this turn, not yet flushed (coalescing only).
        self._queue = _TurnQueue(self) if coalesce else None
        self._direct(True)
        transport.registerProducer(self, True)

    # The interfaces of the real transport, as they are now: startTLS adds
    # ISSLTransport to it after this object was made.
    @property
    def __providedBy__(self):  # type: ignore[override]
        return providedBy(self.wrappedTransport)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrappedTransport, name)

    def __repr__(self) -> str:
        return f"<Outbox of {self.wrappedTransport!r}>"

    @property
    def disconnecting(self) -> bool:
        return self.closing or bool(getattr(self.wrappedTransport, "disconnecting", False))

    # -- ITransport -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        # Reached only while full or cut off.  Otherwise _direct has put the
        # real transport's own write (as it was when the connection was
        # made) in this instance's dict, where it is found first: with
        # __getattr__ defined, every attribute lookup here is slow, and a
        # chat fan-out makes one write per member per message.  Coalescing,
        # every write comes here and goes to the queue, which comes back
        # (to _writeOut) only when it has no list to append to.
        if self._queue is not None:
            self._queue.write(data)
        else:
            self._writeOut(data)

    def _writeOut(self, data: bytes) -> None:
        if self.cutOff:
            return
        if self.full:
            self.waiting += len(data)
            if self.waiting > self.limit:
                self.cutOffNow(f"over {self.limit} bytes waiting to be read")
                return
        elif self._queue is not None and not self.closing:
            self._queue.items = [data]
            self._queue.size = len(data)
            assert self._flusher is not None
            self._flusher.add(self)
            return
        self.wrappedTransport.write(data)

    def flush(self) -> None:
        """
        Write what is queued (coalescing) to the real transport, in one
        C{write}; unless the connection has been cut off.
        """
        queue = self._queue
        if queue is None or queue.items is None:
            return
        items = queue.items
        queue.items = None
        queue.size = 0
        if not self.cutOff:
            self.wrappedTransport.write(items[0] if len(items) == 1 else b"".join(items))

    @property
    def turnQueue(self) -> _TurnQueue | None:
        """
        A coalescing outbox's queue (its C{write}), for a holder to claim.
        """
        return self._queue

    def _dropQueued(self) -> None:
        if self._queue is not None:
            self._queue.release(keep=False)
            self._queue.items = None
            self._queue.size = 0

    def _direct(self, direct: bool) -> None:
        """
        Let writes go straight to the real transport (C{direct}), or through
        L{write}, which counts them and drops them once cut off.  A
        coalescing outbox always writes through L{write}.
        """
        if self._queue is not None:
            return  # write goes to the queue (its dict would cost memory)
        if direct:
            self.__dict__["write"] = self.wrappedTransport.write
        else:
            self.__dict__.pop("write", None)

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        """
        Close once what is written is sent, but abort a client that does
        not take it within C{closeTimeout} seconds.
        """
        if self.closing or self.cutOff:
            return
        if self._queue is not None:
            self._queue.release()
        self.flush()
        self.closing = True
        # A registered producer would hold the close back (Twisted waits
        # for it to be unregistered).
        if self._producer is None:
            self.wrappedTransport.unregisterProducer()
            if ISSLTransport.providedBy(self.wrappedTransport):
                # Close TCP right after our close_notify instead of waiting
                # for the client's (RFC 8446 6.1 allows it): clients that
                # wait for the server to close first would hang until
                # closeTimeout.  Only once the handshake is over: during it,
                # the flag would end the handshake, and what waits for it.
                tls: Any = ISystemHandle(self.wrappedTransport).getHandle()
                if tls.get_peer_finished() is not None:
                    tls.set_shutdown(tls.get_shutdown() | RECEIVED_SHUTDOWN)
        self.wrappedTransport.loseConnection()
        self._clock.callLater(self.closeTimeout, self.wrappedTransport.abortConnection)

    def abortConnection(self) -> None:
        self.closing = True
        self._dropQueued()
        self._cancelStall()
        self.wrappedTransport.abortConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        """
        A producer of the protocol's own (a file being sent) takes the
        transport's producer slot while it runs: it is paced by the
        transport itself, and this outbox steps aside until it is
        unregistered.  The drain deadline still holds: a client that takes
        nothing of it for C{drainTimeout} seconds is cut off.
        """
        if self._producer is not None:
            raise RuntimeError(f"a producer is already registered: {self._producer!r}")
        self._producer = _ProgressWatch(self, producer, streaming)
        self.wrappedTransport.unregisterProducer()
        self._resume()
        self.wrappedTransport.registerProducer(self._producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer.stop()
        self._producer = None
        self.wrappedTransport.unregisterProducer()
        if self.closing:
            return
        self.wrappedTransport.registerProducer(self, True)

    # -- IPushProducer, called by the real transport ----------------------------

    def pauseProducing(self) -> None:
        if self.full:
            return
        self.full = True
        self.waiting = 0
        self._direct(False)
        if self.drainTimeout:
            self._stall = self._clock.callLater(self.drainTimeout, self._stalled)
        # Queued or held before it filled (TLS pauses on its own): written
        # as it would have been, uncounted, and what comes next is counted.
        if self._queue is not None:
            self._queue.release()
        self.flush()
        self._listener._outputFull()

    def resumeProducing(self) -> None:
        self._resume()

    def stopProducing(self) -> None:
        self._cancelStall()

    def _resume(self) -> None:
        if not self.full:
            return
        self.full = False
        self.waiting = 0
        self._direct(not self.cutOff)
        self._cancelStall()
        self._listener._outputDrained()

    def _stalled(self) -> None:
        self._stall = None
        self.cutOffNow(f"nothing read for {self.drainTimeout:g} seconds with output waiting")

    def _watchStall(self, waiting: bool) -> None:
        """
        A protocol's producer is waiting for the client (C{waiting}), or it
        has just been asked for more: (re)start or stop the drain deadline.
        """
        self._cancelStall()
        if waiting and self.drainTimeout and not self.cutOff:
            self._stall = self._clock.callLater(self.drainTimeout, self._stalled)

    def _cancelStall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def cutOffNow(self, why: str) -> None:
        """
        Abort the connection: the client is not reading.
        """
        if self.cutOff:
            return
        self.cutOff = True
        self._dropQueued()
        self._direct(False)
        _cutOffLog(self._clock).info("{transport}: cut off: {why}", transport=self.wrappedTransport, why=why)
        self._listener.cutOff(why)
        self.abortConnection()


@implementer(IPushProducer)
class _ProgressWatch:
    """
    Between the transport and a producer of the protocol's own: passes
    every call on, and keeps the outbox's drain deadline running whenever
    the producer waits on the client (a streaming producer paused, a pull
    producer not asked for more since its last chunk).
    """

    def __init__(self, outbox: Outbox, producer: Any, streaming: bool) -> None:
        self._outbox = outbox
        self.producer = producer
        self._streaming = streaming
        if not streaming:
            outbox._watchStall(True)

    def pauseProducing(self) -> None:
        self._outbox._watchStall(True)
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        # A pull producer is asked for each chunk: the next ask must come
        # within the deadline too.
        self._outbox._watchStall(not self._streaming)
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()
        self.producer.stopProducing()

    def stop(self) -> None:
        self._outbox._watchStall(False)


class CommandReceiver(Protocol):
    """
    Mix in first: framing, pipelining, back-pressure and admission for a
    line-based server protocol.  See the module docstring.

    @cvar maxLineLength: the longest line accepted, in bytes, without its
        line ending.
    @cvar requireCRLF: whether a line ending in a bare LF goes to
        L{bareLineFeed} instead of C{lineReceived}.
    @cvar outputLimit: bytes that may be written beyond the transport's own
        buffer before the client is cut off.
    @cvar drainTimeout: seconds the output may stay full before the client
        is cut off.
    @cvar closeTimeout: seconds a closing connection may take to send what
        is left before it is aborted.
    @cvar inputLimit: bytes of unprocessed input held while reading is
        paused (what arrived before the pause took effect); past it the
        client is cut off.
    @cvar linesPerTurn: lines run one after another, none of them answered
        later, before the reactor is handed back for a turn, so that one
        client's pipelined flood does not delay everyone else's replies.
    @cvar coalesceOutput: whether the outbox coalesces what is written in
        one reactor turn into one write (L{Outbox}, C{coalesce}).
    """

    maxLineLength = 510
    requireCRLF = False
    outputLimit = 1024 * 1024
    drainTimeout = 60.0
    closeTimeout = 5.0
    inputLimit = 1024 * 1024
    linesPerTurn = 200
    coalesceOutput = False
    #: Twisted's receivers' names for the mode; C{setRawMode} clears it.
    line_mode = 1

    #: Input not yet handled is C{_input[_pos:]}: lines are cut off the
    #: front by moving C{_pos}, so a read of many short lines is not copied
    #: once per line.
    _input = b""
    _pos = 0
    _discarding = False
    _processing = False
    _full = False
    _admittedAs: str | None = None
    _outbox: Outbox | None = None
    #: Why reading is paused, and who waits for the output to drain: made
    #: when first needed (a server holds many connections that never are).
    _pausedFor: set[str] | frozenset[str] = frozenset()
    _drainWaiters: list[Deferred[None]] | tuple[()] = ()
    # Not Protocol's Optional: makeConnection sets it (to the Outbox, which
    # provides what the real transport does) before any other method runs.
    transport: ITransport

    # -- connection ---------------------------------------------------------------

    def receiverClock(self):
        """
        The clock for the outbox's deadlines: the factory's reactor.
        """
        clock = getattr(getattr(self, "factory", None), "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock
        return clock

    def makeConnection(self, transport) -> None:
        self._outbox = Outbox(
            transport,
            self.receiverClock(),
            limit=self.outputLimit,
            drainTimeout=self.drainTimeout,
            closeTimeout=self.closeTimeout,
            coalesce=self.coalesceOutput,
            listener=self,
        )
        super().makeConnection(self._outbox)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._outbox is not None:
            self._outbox.stopProducing()
        self._wakeDrainWaiters()
        admission: Admission | None = getattr(getattr(self, "factory", None), "admission", None)
        if self._admittedAs is not None and admission is not None:
            admission.release(self._admittedAs)
            self._admittedAs = None
        # None is taken for a clean close; Twisted's classes are given
        # what their own default would be.
        super().connectionLost(reason if reason is not None else connectionDone)

    def cutOff(self, why: str) -> None:
        """
        The client is being cut off for not reading; override to log or
        to say so where it may still be read.
        """

    def _connectedOutbox(self) -> Outbox:
        """
        C{self.transport} as what it is from C{makeConnection} on.
        """
        assert self._outbox is not None, "not connected yet"
        return self._outbox

    # -- reading ----------------------------------------------------------------

    def pauseReading(self, reason: str) -> None:
        """
        Read nothing more from this connection until L{resumeReading} with
        the same reason (and every other reason) is called.
        """
        if not self._pausedFor:
            self._connectedOutbox().wrappedTransport.pauseProducing()
            self._pausedFor = {reason}
            return
        assert isinstance(self._pausedFor, set)
        self._pausedFor.add(reason)

    def resumeReading(self, reason: str) -> None:
        if reason not in self._pausedFor:
            return
        assert isinstance(self._pausedFor, set)
        self._pausedFor.discard(reason)
        if not self._pausedFor:
            self._pausedFor = frozenset()
        if self._pausedFor or self._connectedOutbox().disconnecting:
            return
        self._connectedOutbox().wrappedTransport.resumeProducing()
        self._process()

    def _outputFull(self) -> None:
        # No more commands are run until the output drains.  The transport
        # is paused only once input is actually waiting: TLS reports its
        # buffer full while the handshake is under way, and pausing its
        # reading then would stop the handshake itself.
        self._full = True

    def _outputDrained(self) -> None:
        self._full = False
        self._wakeDrainWaiters()
        if "output" in self._pausedFor:
            self.resumeReading("output")
        else:
            self._process()

    def whenOutputDrained(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once the transport's buffer is no longer
        full (at once if it is not), or the connection is lost: for a
        command that writes a long answer piece by piece.
        """
        if not self._full or self._outbox is None or self._outbox.disconnecting:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if not self._drainWaiters:
            self._drainWaiters = []
        assert isinstance(self._drainWaiters, list)
        self._drainWaiters.append(d)
        return d

    def _wakeDrainWaiters(self) -> None:
        waiters, self._drainWaiters = self._drainWaiters, ()
        for d in waiters:
            d.callback(None)

    @property
    def readingPaused(self) -> bool:
        """
        Whether reading from this connection is paused, for any reason.
        """
        return bool(self._pausedFor)

    # Twisted's receivers call these for themselves; a protocol may too.
    def pauseProducing(self) -> None:
        self.pauseReading("protocol")

    def resumeProducing(self) -> None:
        self.resumeReading("protocol")

    def stopProducing(self) -> None:
        self._input = b""
        self._connectedOutbox().loseConnection()

    def setRawMode(self) -> None:
        self.line_mode = 0

    def setLineMode(self, extra: bytes = b"") -> None:
        self.line_mode = 1
        if extra:
            self._input, self._pos = extra + self._input[self._pos :], 0
            if not self._processing:
                self._process()

    def clearLineBuffer(self) -> bytes:
        data = self._input[self._pos :]
        self._input, self._pos = b"", 0
        return data

    def dataReceived(self, data: bytes) -> None:
        if self._pos:
            self._input, self._pos = self._input[self._pos :], 0
        self._input += data
        self._process()
        if self._pausedFor and len(self._input) - self._pos > self.inputLimit:
            self._input, self._pos = b"", 0
            if self._outbox is not None:
                self._outbox.cutOffNow(f"over {self.inputLimit} bytes sent while reading was paused")

    def _process(self) -> None:
        if self._processing:
            return  # the loop below is running and goes on by itself
        self._processing = True
        lines = 0
        try:
            while self._pos < len(self._input) and not self._pausedFor and not self._connectedOutbox().disconnecting:
                if self._full:
                    self.pauseReading("output")
                    return
                if lines >= self.linesPerTurn:
                    # Let the reactor serve everyone else for a turn.
                    self.pauseReading("turn")
                    self.receiverClock().callLater(0, self.resumeReading, "turn")
                    return
                if not self.line_mode:
                    data = self._input[self._pos :]
                    self._input, self._pos = b"", 0
                    self.rawDataReceived(data)
                    continue
                end = self._input.find(b"\n", self._pos)
                if end < 0:
                    self._checkPartialLine()
                    return
                raw, self._pos = self._input[self._pos : end], end + 1
                crlf = raw.endswith(b"\r")
                line = raw[:-1] if crlf else raw
                lines += 1
                if self._discarding:
                    self._discarding = False
                elif len(line) > self.maxLineLength:
                    self.lineLengthExceeded(line[: self.maxLineLength])
                elif self.requireCRLF and not crlf:
                    self._pipeline(self.bareLineFeed(line))
                else:
                    self._pipeline(self.lineReceived(line))
        finally:
            self._processing = False

    def _checkPartialLine(self) -> None:
        pending = len(self._input) - self._pos - self._input.endswith(b"\r")
        if pending <= self.maxLineLength:
            return
        line = self._input[self._pos : self._pos + self.maxLineLength]
        self._input, self._pos = b"", 0
        if not self._discarding:
            self._discarding = True
            self.lineLengthExceeded(line)

    def _pipeline(self, result: object) -> None:
        """
        Hold the next lines while C{result}, if an unfired L{Deferred},
        is pending.
        """
        if not isinstance(result, Deferred):
            return
        # Not result.called: a Deferred that has fired but waits on another
        # one it returned is called and still pending.
        finished: list[bool] = []

        def done(value):
            finished.append(True)
            return value

        result.addBoth(done)
        if finished:
            return
        self.pauseReading("command")
        result.addBoth(self._commandDone)

    def _commandDone(self, value):
        self.resumeReading("command")
        return value

    # -- what the protocol provides ---------------------------------------------------

    def lineReceived(self, line: bytes) -> Deferred | None:
        raise NotImplementedError

    def rawDataReceived(self, data: bytes) -> None:
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line longer than C{maxLineLength} came (C{line} is its start); it
        is skipped.  Answer with the protocol's error.
        """
        raise NotImplementedError

    def bareLineFeed(self, line: bytes) -> Deferred | None:
        """
        With C{requireCRLF}, a line that ended in a bare LF.  By default it
        is taken like any other.
        """
        return self.lineReceived(line)
