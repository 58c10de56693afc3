"""
What every chat connection does whatever its wire: flood control, the
idle PING, delivery of room events, and the line receiver both front
doors are built on.

A front door's protocol (L{chat.protocol.ChatProtocol},
L{chat.irc.IRCSession}) is a L{ChatReceiver}: framing, pipelining and
output back-pressure are L{coursenet.receiver.CommandReceiver}'s, and the
rooms see the protocol's L{Session}, a component it owns, as their
L{IParticipant}.
"""

from __future__ import annotations

import heapq
import secrets
import weakref
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.interfaces import IChatServer, IFrontDoor, IParticipant
from chat.rooms import Event
from coursenet.admission import Admission, AdmittingFactory
from coursenet.bucket import TokenBucket
from coursenet.logs import peerName
from coursenet._compat import sharedAttributeLayout
from coursenet.receiver import CommandReceiver, Outbox
from coursenet.transport import noDelay


@dataclass(frozen=True)
class Limits:
    """
    Per-connection limits, the same for every front door.

    @ivar floodRate: lines a second a connection may send on average
        (0: no flood control).  Every line counts, PONG included; a line
        past the limit waits its turn (it is not dropped).
    @ivar floodBurst: lines it may send at once after a quiet spell.
    @ivar floodCut: seconds a connection may stay behind its flood limit
        (its lines kept waiting all along) before it is cut off.
    @ivar maxOutput: bytes that may wait for a client beyond what the
        transport buffers itself (64 KiB); past that the client is cut off.
    @ivar drainTimeout: seconds output may wait for a client that reads
        none of it; then the client is cut off.
    @ivar idleTimeout: seconds of silence before the server sends PING.
    @ivar pingTimeout: seconds after that PING before it gives up.
    """

    floodRate: float = 10.0
    floodBurst: int = 20
    floodCut: float = 60.0
    # Room for a burst from every member of a busy room: a client reading
    # at 1 MB/s takes this in a second, one that reads nothing holds no more.
    maxOutput: int = 1024 * 1024
    drainTimeout: float = 30.0
    idleTimeout: float = 120.0
    pingTimeout: float = 60.0


class IdleTimers:
    """
    The idle deadlines of every connection on one clock: a heap of
    C{[when, n, session]} and one L{DelayedCall} for the earliest, instead
    of a L{DelayedCall} per connection.  A line from a client only stores
    the time: its entry is not moved, and when it comes up the session
    checks its own deadline and is put back for the later one.

    A session that ends sets its entry's session to L{None}, so the heap
    keeps no ended connection alive.
    """

    __slots__ = ("_clock", "_heap", "_call", "_n", "__weakref__")

    def __init__(self, clock) -> None:
        self._clock = clock
        self._heap: list[list] = []
        self._call = None
        self._n = 0

    def add(self, when: float, session: "Session") -> list:
        """
        Call C{session._idleDeadline} at C{when}.

        @return: the entry; set its last item to L{None} to cancel.
        """
        self._n += 1
        entry = [when, self._n, session]
        heapq.heappush(self._heap, entry)
        if self._call is None:
            self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)
        elif when < self._call.getTime():
            self._call.reset(max(0.0, when - self._clock.seconds()))
        return entry

    def _fire(self) -> None:
        self._call = None
        heap = self._heap
        now = self._clock.seconds()
        while heap and heap[0][0] <= now:
            session = heapq.heappop(heap)[2]
            if session is not None:
                session._idleDeadline(now)
        if heap and self._call is None:
            self._call = self._clock.callLater(max(0.0, heap[0][0] - now), self._fire)


_idleTimers: "weakref.WeakKeyDictionary[object, IdleTimers]" = weakref.WeakKeyDictionary()


def idleTimers(clock) -> IdleTimers:
    """
    The one L{IdleTimers} of C{clock}.
    """
    timers = _idleTimers.get(clock)
    if timers is None:
        timers = _idleTimers[clock] = IdleTimers(clock)
    return timers


@implementer(IParticipant)
class Session:
    """
    One connection as the rooms see it, owned by its front door's
    protocol: its nickname, the flood limit on its lines and the PING
    sent when it is silent (after C{limits.idleTimeout} seconds without a
    line, then closed if C{limits.pingTimeout} more pass without one).

    Slotted, with its timers shared (L{IdleTimers}) and its flood bucket
    made only with a flood limit: a server holds many idle ones.
    """

    __slots__ = (
        "door", "server", "limits", "peer", "host", "turnQueue", "_clock", "_behindSince",
        "_bucket", "_lastLine", "_pinged", "_ticket", "nick", "user", "realname", "account", "away", "online",
    )
    _log = Logger()

    def __init__(self, door: IFrontDoor, server: IChatServer, limits: Limits, clock, peer, queue=None) -> None:
        """
        @param queue: the door's coalescing outbox queue
            (L{coursenet.receiver.Outbox.turnQueue}), if it has one: events'
            bytes go there, and a room may hold it for a turn.
        """
        self.door = door
        self.turnQueue = queue
        self.server = server
        self.limits = limits
        self.peer = peer
        self.host = getattr(peer, "host", None) or "chat"
        self.nick: str | None = None
        self.user: str | None = None
        self.realname: str | None = None
        self.account: str | None = None
        self.away: str | None = None
        self.online = True
        self._clock = clock
        self._behindSince: float | None = None
        self._bucket = (
            TokenBucket(limits.floodRate, limits.floodBurst, clock) if limits.floodRate else None
        )
        self._lastLine = clock.seconds()
        self._pinged = False
        self._ticket: list | None = None
        if limits.idleTimeout:
            self._ticket = idleTimers(clock).add(self._lastLine + limits.idleTimeout, self)

    def _idleDeadline(self, now: float) -> None:
        """
        This session's entry came up: PING, close, or wait again.
        """
        limits = self.limits
        timers = idleTimers(self._clock)
        if self._pinged:
            if now < self._lastLine + limits.pingTimeout:
                self._ticket = timers.add(self._lastLine + limits.pingTimeout, self)
                return
            self._ticket = None
            self._noAnswer()
            return
        if now < self._lastLine + limits.idleTimeout:
            self._ticket = timers.add(self._lastLine + limits.idleTimeout, self)
            return
        self._pinged = True
        self._lastLine = now  # the grace is counted from the PING
        self._ticket = timers.add(now + limits.pingTimeout, self)
        self._ping()

    def end(self, reason: str) -> None:
        """
        The connection is over: out of the rooms at once, with C{reason}
        as the QUIT the others see.
        """
        if not self.online:
            return
        self.online = False
        if self._ticket is not None:
            self._ticket[2] = None
            self._ticket = None
        self.server.quit(self, reason)

    def deliver(self, event: Event) -> None:
        if self.online:
            # Called once per member per event: the cached encoding is
            # looked up directly, and encoded only for the first of a wire;
            # the bytes go straight to the door's (coalescing) outbox.
            door = self.door
            data = event._cache.get(door.wire)
            if data is None:
                data = event.encoded(door.wire, door.encodeEvent)
            queue = self.turnQueue
            if queue is not None:
                queue.write(data)
            else:
                door.send(data)

    def lineArrived(self) -> float | None:
        """
        Note a line from the client, whatever it is: an answer to our PING
        is a line like any other.

        @return: the seconds the line must wait for the flood limit (0: run
            it now), or L{None} if the connection has been behind its limit
            for longer than C{floodCut} seconds and is being cut off.
        """
        self._lastLine = self._clock.seconds()
        self._pinged = False
        if self._bucket is None:
            return 0.0
        wait = self._bucket.take()
        now = self._clock.seconds()
        if not wait:
            # Caught up only once half the burst has come back: a paced
            # flood finds a token now and then as the clock jitters.
            if self._bucket.level >= self._bucket.burst / 2:
                self._behindSince = None
            return 0.0
        if self._behindSince is None:
            self._behindSince = now
        elif now + wait - self._behindSince > self.limits.floodCut:
            self._log.info("{peer} cut off for flooding", peer=peerName(self.peer, self.nick))
            self.door.close(
                f"flood: more than {self.limits.floodRate:g} lines a second for"
                f" {self.limits.floodCut:g} seconds; closing"
            )
            return None
        return wait

    def _ping(self) -> None:
        self.door.sendPing(secrets.token_hex(4))

    def _noAnswer(self) -> None:
        self._log.info("{peer} did not answer PING", peer=peerName(self.peer, self.nick))
        self.door.close(f"no answer to PING within {self.limits.pingTimeout:g} seconds; closing")


@implementer(IFrontDoor)
class ChatReceiver(CommandReceiver):
    """
    The receiver under both front doors.  The factory has C{server} (an
    L{IChatServer}), C{limits} and C{reactor}; the protocol provides
    the rest of L{IFrontDoor} (C{wire}, C{encodeEvent}, C{sendPing},
    C{busyReply}), L{commandReceived} and L{lineTooLong}.

    Output to a client that does not read is bounded by the receiver's
    outbox, from L{Limits}: C{maxOutput} bytes beyond the transport's own
    buffer, C{drainTimeout} seconds without draining.  A client cut off
    for it leaves the rooms at once; nobody waits for it.

    @ivar session: this connection's L{Session}.
    """

    # Slotted, with the names the receiver and Twisted's Protocol set on
    # every connection: a server holds many idle connections, and an
    # instance dict costs hundreds of bytes each.  What is set only now and
    # then (quitReason, a pause's reasons) goes in the dict.
    __slots__ = (
        "server", "session", "_waiting", "transport", "factory", "connected",
        "_input", "_pos", "_processing", "_outbox", "_admittedAs", "outputLimit", "drainTimeout",
    )
    _log = Logger()
    # A room's fan-out: one write per member per reactor turn, whatever the
    # number of messages said in it (docs/chat.md, section 7).
    coalesceOutput = True
    # What CommandReceiver makes of the transport it is given.
    transport: Outbox  # type: ignore[assignment]
    wire = ""
    session: Session
    quitReason = "connection lost"

    def __init__(self) -> None:
        # The class defaults the slots hide.
        self.transport = None  # type: ignore[assignment]
        self.connected = 0
        self._input = b""
        self._pos = 0
        self._processing = False
        self._outbox = None
        self._admittedAs = None
        self._waiting: Deferred | None = None
        self.outputLimit = CommandReceiver.outputLimit
        self.drainTimeout = CommandReceiver.drainTimeout

    def makeConnection(self, transport) -> None:
        limits: Limits = self.factory.limits
        self.outputLimit = limits.maxOutput
        self.drainTimeout = limits.drainTimeout
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        factory = self.factory
        noDelay(self.transport.wrappedTransport)  # the outbox's own dict would cost memory
        sharedAttributeLayout(self.transport.wrappedTransport)
        self.server: IChatServer = factory.server
        self.session = Session(
            self, self.server, factory.limits, factory.reactor, self.transport.getPeer(),
            getattr(self.transport, "turnQueue", None),
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.session.end(self.quitReason)
        if self._waiting is not None:
            self._waiting.cancel()  # a line waiting for the flood limit: gone with the client

    def cutOff(self, why: str) -> None:
        self.session.end("cut off: not reading")

    def lineReceived(self, line: bytes) -> Deferred | None:
        if not self.session.online:
            return None
        wait = self.session.lineArrived()
        if wait is None:
            return None
        if not wait:
            return self.commandReceived(line)
        # The line waits its turn; reading stops until it has run (the
        # receiver holds the lines after it), so a flood is paced, not lost.
        d = self._waiting = deferLater(self.factory.reactor, wait, self._runLate, line)
        return d.addErrback(lambda f: f.trap(CancelledError) and None)

    def _runLate(self, line: bytes) -> Deferred | None:
        self._waiting = None
        if not self.session.online:
            return None
        return self.commandReceived(line)

    def commandReceived(self, line: bytes) -> Deferred | None:
        """
        A line the flood limit let through: run it, answering in order.
        """
        raise NotImplementedError

    def lineTooLong(self) -> None:
        """
        Say that the line was too long and skipped.
        """
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        # Counted like any line; the next line waits for its token.
        if self.session.online and self.session.lineArrived() is not None:
            self.lineTooLong()

    # -- IFrontDoor ---------------------------------------------------------------

    def encodeEvent(self, event: Event) -> bytes:
        raise NotImplementedError

    def sendPing(self, token: str) -> None:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self, why: str) -> None:
        self.sendClosing(why)
        self.transport.loseConnection()

    def sendClosing(self, text: str) -> None:
        """
        Say why the connection is being closed.
        """
        self.send(self.busyReply(text))

    @staticmethod
    def busyReply(text: str) -> bytes:
        """
        The line that says the connection is being closed, and why: also
        what a connection refused by admission gets.
        """
        raise NotImplementedError


class DoorFactory(AdmittingFactory, Factory):
    """
    A front door's factory: its protocol is a L{ChatReceiver}.  A
    connection past the server's caps gets the protocol's C{busyReply}
    and never reaches it (L{AdmittingFactory}).
    """

    def __init__(
        self,
        server: IChatServer,
        limits: Limits = Limits(),
        reactor=None,
        admission: Admission | None = None,
    ) -> None:
        """
        @param admission: the connection caps; by default the server's,
            which every front door of it shares.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.server = server
        self.limits = limits
        self.admission = admission or server.admission or Admission()
