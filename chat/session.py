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

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.interfaces import IChatServer, IFrontDoor, IParticipant
from chat.rooms import Event
from coursenet.admission import Admission, AdmittingFactory
from coursenet.receiver import CommandReceiver, Outbox
from coursenet.transport import noDelay


@dataclass(frozen=True)
class Limits:
    """
    Per-connection limits, the same for every front door.

    @ivar floodRate: lines a second a connection may send on average
        (0: no flood control).  Every line counts, PONG included.
    @ivar floodBurst: lines it may send at once after a quiet spell.
    @ivar maxOutput: bytes that may wait for a client beyond what the
        transport buffers itself (64 KiB); past that the client is cut off.
    @ivar drainTimeout: seconds output may wait for a client that reads
        none of it; then the client is cut off.
    @ivar idleTimeout: seconds of silence before the server sends PING.
    @ivar pingTimeout: seconds after that PING before it gives up.
    """

    floodRate: float = 10.0
    floodBurst: int = 20
    # Room for a burst from every member of a busy room: a client reading
    # at 1 MB/s takes this in a second, one that reads nothing holds no more.
    maxOutput: int = 1024 * 1024
    drainTimeout: float = 30.0
    idleTimeout: float = 120.0
    pingTimeout: float = 60.0


class TokenBucket:
    """
    A token bucket: C{burst} tokens, refilled at C{rate} a second.
    """

    def __init__(self, rate: float, burst: int, clock) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self) -> bool:
        """
        Take one token if there is one.
        """
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


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
    online = True

    def __init__(self, door: IFrontDoor, server: IChatServer, limits: Limits, clock, peer) -> None:
        self.door = door
        self.server = server
        self.limits = limits
        self.peer = peer
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
            self.door.send(event.encoded(self.door.wire, self.door.encodeEvent))

    def lineArrived(self) -> bool:
        """
        Note a line from the client, whatever it is: an answer to our PING
        is a line like any other.

        @return: C{False} if the flood limit refuses it (the client was
            told).
        """
        self._heartbeat.touch()
        if self._bucket is None or self._bucket.take():
            return True
        self.door.refuseFlood(
            f"flood limit: at most {self.limits.floodRate:g} lines a second"
            f" (bursts of {self.limits.floodBurst}); line ignored, slow down"
        )
        return False

    def _ping(self) -> None:
        self.door.sendPing(secrets.token_hex(4))

    def _noAnswer(self) -> None:
        self._log.info("{peer} ({nick}) did not answer PING", peer=self.peer, nick=self.nick)
        self.door.close(f"no answer to PING within {self.limits.pingTimeout:g} seconds; closing")


@implementer(IFrontDoor)
class ChatReceiver(CommandReceiver):
    """
    The receiver under both front doors.  The factory has C{server} (an
    L{IChatServer}), C{limits} and C{reactor}; the protocol provides
    the rest of L{IFrontDoor} (C{wire}, C{encodeEvent}, C{sendPing},
    C{refuseFlood}, C{busyReply}), L{commandReceived} and L{lineTooLong}.

    Output to a client that does not read is bounded by the receiver's
    outbox, from L{Limits}: C{maxOutput} bytes beyond the transport's own
    buffer, C{drainTimeout} seconds without draining.  A client cut off
    for it leaves the rooms at once; nobody waits for it.

    @ivar session: this connection's L{Session}.
    """

    _log = Logger()
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
        self.session = Session(self, self.server, factory.limits, factory.reactor, self.transport.getPeer())

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.session.end(self.quitReason)

    def cutOff(self, why: str) -> None:
        self.session.end("cut off: not reading")

    def lineReceived(self, line: bytes) -> Deferred | None:
        if not self.session.online or not self.session.lineArrived():
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
        if self.session.online and self.session.lineArrived():
            self.lineTooLong()

    # -- IFrontDoor ---------------------------------------------------------------

    def encodeEvent(self, event: Event) -> bytes:
        raise NotImplementedError

    def sendPing(self, token: str) -> None:
        raise NotImplementedError

    def refuseFlood(self, text: str) -> None:
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
