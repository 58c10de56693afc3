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

import secrets
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
from coursenet.logs import peerName
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


class TokenBucket:
    """
    A token bucket: C{burst} tokens, refilled at C{rate} a second.  A
    token may be taken before it is there: the taker is told how long to
    wait for it (ngircd's penalty, Ergo's fakelag).
    """

    def __init__(self, rate: float, burst: int, clock) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock.seconds()
        self.level = self._tokens

    def take(self) -> float:
        """
        Take one token.

        @return: the seconds until it is there: 0 if it was.
        """
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        #: What was there before this take: how far the client is from its limit.
        self.level = self._tokens
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Heartbeat:
    """
    Call C{ping} after C{idle} seconds without L{touch}, then C{dead} if
    another C{grace} seconds pass without one.
    """

    def __init__(self, clock, idle: float, grace: float, ping, dead) -> None:
        self._clock = clock
        self.idle = idle
        self.grace = grace
        self._ping = ping
        self._dead = dead
        self.pinged = False
        self._call = clock.callLater(idle, self._expired) if idle else None

    def touch(self) -> None:
        if self._call is None:
            return
        if self.pinged:
            self.pinged = False
        self._call.reset(self.idle)

    def _expired(self) -> None:
        if self.pinged:
            self._call = None
            self._dead()
            return
        self.pinged = True
        self._call = self._clock.callLater(self.grace, self._expired)
        self._ping()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


@implementer(IParticipant)
class Session:
    """
    One connection as the rooms see it, owned by its front door's
    protocol: its nickname, the flood limit on its lines and the PING
    sent when it is silent.
    """

    _log = Logger()
    nick: str | None = None
    user: str | None = None
    realname: str | None = None
    account: str | None = None
    away: str | None = None
    online = True

    def __init__(self, door: IFrontDoor, server: IChatServer, limits: Limits, clock, peer, queue=None) -> None:
        """
        @param queue: the door's coalescing outbox queue
            (L{coursenet.receiver.Outbox.turnQueue}), if it has one: events'
            bytes go there, and a room may hold it for a turn.
        """
        self.door = door
        self.turnQueue = queue
        self._write = queue.write if queue is not None else door.send
        self.server = server
        self.limits = limits
        self.peer = peer
        self.host = getattr(peer, "host", None) or "chat"
        self._clock = clock
        self._behindSince: float | None = None
        self._bucket = (
            TokenBucket(limits.floodRate, limits.floodBurst, clock) if limits.floodRate else None
        )
        self._heartbeat = Heartbeat(
            clock, limits.idleTimeout, limits.pingTimeout, self._ping, self._noAnswer
        )

    def end(self, reason: str) -> None:
        """
        The connection is over: out of the rooms at once, with C{reason}
        as the QUIT the others see.
        """
        if not self.online:
            return
        self.online = False
        self._heartbeat.stop()
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
            self._write(data)

    def lineArrived(self) -> float | None:
        """
        Note a line from the client, whatever it is: an answer to our PING
        is a line like any other.

        @return: the seconds the line must wait for the flood limit (0: run
            it now), or L{None} if the connection has been behind its limit
            for longer than C{floodCut} seconds and is being cut off.
        """
        self._heartbeat.touch()
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

    _log = Logger()
    # A room's fan-out: one write per member per reactor turn, whatever the
    # number of messages said in it (docs/chat.md, section 7).
    coalesceOutput = True
    # What CommandReceiver makes of the transport it is given.
    transport: Outbox  # type: ignore[assignment]
    wire = ""
    session: Session
    quitReason = "connection lost"

    def makeConnection(self, transport) -> None:
        limits: Limits = self.factory.limits
        self.outputLimit = limits.maxOutput
        self.drainTimeout = limits.drainTimeout
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        factory = self.factory
        noDelay(self.transport)
        self.server: IChatServer = factory.server
        self.session = Session(
            self, self.server, factory.limits, factory.reactor, self.transport.getPeer(),
            getattr(self.transport, "turnQueue", None),
        )

    _waiting: Deferred | None = None

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
