"""
What every chat connection does whatever its wire: admission, flood
control, slow-consumer protection and the idle PING, and delivery of room
events.  The course protocol (L{chat.protocol}) and the IRC front door
(L{chat.irc}) both mix in L{Session}.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from chat.interfaces import IParticipant
from chat.rooms import ChatServer, Event
from coursenet.transport import noDelay


@dataclass(frozen=True)
class Limits:
    """
    Per-connection limits, the same for every front door.

    @ivar floodRate: lines a second a connection may send on average
        (0: no flood control).
    @ivar floodBurst: lines it may send at once after a quiet spell.
    @ivar maxOutput: bytes that may wait for a client beyond what the
        transport buffers itself; past that the client is cut off.
    @ivar idleTimeout: seconds of silence before the server sends PING.
    @ivar pingTimeout: seconds after that PING before it gives up.
    """

    floodRate: float = 10.0
    floodBurst: int = 20
    maxOutput: int = 256 * 1024
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


@implementer(IPushProducer)
class OutputGuard:
    """
    Registered with a transport as a streaming producer, so the transport
    says when its buffer is full (L{pauseProducing}) and when it has
    drained (L{resumeProducing}).  Bytes written in between are counted;
    past C{limit} the reader is too slow and C{overflow} is called, once.
    """

    def __init__(self, transport, limit: int, overflow) -> None:
        self.limit = limit
        self.waiting = 0
        self.full = False
        self._overflow = overflow
        transport.registerProducer(self, True)

    def wrote(self, n: int) -> None:
        if self.full:
            self.waiting += n
            if self.waiting > self.limit and self._overflow is not None:
                overflow, self._overflow = self._overflow, None
                overflow()

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full = False
        self.waiting = 0

    def stopProducing(self) -> None:
        self._overflow = None


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
    Mixed into a front door's protocol.  The protocol sets C{wire} (the key
    under which events are encoded) and provides L{encodeEvent},
    L{sendPing}, L{refuseFlood} and L{sendClosing}; it calls L{startSession}
    from C{connectionMade}, L{lineArrived} for every line and L{endSession}
    from C{connectionLost}.
    """

    _log = Logger()
    wire = ""
    nick: str | None = None
    connected = False
    server: ChatServer
    _abort = None

    def startSession(self, server: ChatServer, limits: Limits, clock) -> bool:
        """
        @return: C{False} if the server is full (the client was told).
        """
        self.server = server
        self.limits = limits
        self.clock = clock
        self.peer = self.transport.getPeer()
        refusal = server.admit()
        if refusal is not None:
            self.sendClosing(refusal)
            self.transport.loseConnection()
            return False
        self.connected = True
        noDelay(self.transport)
        self._bucket = (
            TokenBucket(limits.floodRate, limits.floodBurst, clock) if limits.floodRate else None
        )
        self._guard = OutputGuard(self.transport, limits.maxOutput, self._tooSlow)
        self._heartbeat = Heartbeat(
            clock, limits.idleTimeout, limits.pingTimeout, self._ping, self._noAnswer
        )
        return True

    def endSession(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        self._heartbeat.stop()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self.server.quit(self, reason)
        self.server.release()

    def write(self, data: bytes) -> None:
        if self.connected:
            self.transport.write(data)
            self._guard.wrote(len(data))

    def deliver(self, event: Event) -> None:
        self.write(event.encoded(self.wire, self.encodeEvent))

    def lineArrived(self, counted: bool = True) -> bool:
        """
        Note a line from the client.

        @param counted: whether the line counts towards the flood limit
            (an answer to our PING does not).
        @return: C{False} if the flood limit refuses it (the client was
            told).
        """
        self._heartbeat.touch()
        if not counted or self._bucket is None or self._bucket.take():
            return True
        self.refuseFlood(
            f"flood limit: at most {self.limits.floodRate:g} lines a second"
            f" (bursts of {self.limits.floodBurst}); line ignored, slow down"
        )
        return False

    def hangUp(self) -> None:
        """
        Close once what was written is sent.  The output guard is
        unregistered first: TLS does not close while a producer is
        registered.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def close(self, why: str) -> None:
        """
        Tell the client why, then close; do not wait long for a client that
        does not read.
        """
        self.sendClosing(why)
        self.hangUp()
        self._abort = self.clock.callLater(5, self.transport.abortConnection)

    def _ping(self) -> None:
        self.sendPing(secrets.token_hex(4))

    def _noAnswer(self) -> None:
        self._log.info("{peer} ({nick}) did not answer PING", peer=self.peer, nick=self.nick)
        self.close(f"no answer to PING within {self.limits.pingTimeout:g} seconds; closing")

    def _tooSlow(self) -> None:
        self._log.warn(
            "{peer} ({nick}) is not reading: over {limit} bytes waiting; cut off",
            peer=self.peer, nick=self.nick, limit=self.limits.maxOutput,
        )
        # It will rarely be read, but it says why to a client that catches up.
        self.sendClosing(
            f"you are not reading: over {self.limits.maxOutput} bytes waiting for you; cut off"
        )
        self.transport.abortConnection()
        self.endSession("cut off: not reading")
