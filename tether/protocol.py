"""
The tether wire over Twisted's WebSocket: one link class both ends share
(framing, keepalive, refusals), a WebSocket resource that negotiates the
subprotocol and bounds message size, and a client connect that bounds it
too.

Twisted 26.10's L{WebSocketResource} neither echoes a subprotocol (so a
browser that offers one would fail the handshake) nor limits how much a
peer may buffer in one message.  Both are added here around Twisted's own
wire protocol rather than by reimplementing RFC 6455.

Nor does it bound what waits to be sent to a peer that does not read.
Here every WebSocket writes through a L{coursenet.receiver.Outbox}
(L{OutputLimits}): packets for a peer whose output is full are dropped,
anything else written past the cap, or output full past the drain
deadline, cuts the peer off, and every close is an abort a few seconds
later if the peer does not take it.  The accepting end also stops reading
while its output is full, so a flood of pings cannot make it queue pongs.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import Any, Callable, cast

from hyperlink import URL
from twisted.internet.interfaces import IAddress, IProtocol, ITransport
from twisted.internet.protocol import AbstractDatagramProtocol, Factory
from twisted.logger import Logger, LogLevel
from twisted.pair.raw import IRawPacketProtocol
from twisted.pair.tuntap import TunnelFlags, TuntapPort
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.websocket import WebSocketClientEndpoint, WebSocketTransport
from wsproto import Connection, ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request as WSRequest, TextMessage
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError
from zope.interface import implementer

from coursenet.admission import Admission, Busy
from coursenet.logs import peerName
from coursenet.receiver import Outbox
from coursenet.tls import clientTLSOptions
from coursenet.transport import noDelay
from tether import _compat, masking
from tether.offload import PLAIN_HDR, VNET_HDR_LEN, OffloadError, tunMessages
from tether.wire import (
    MAX_MESSAGE,
    MAX_PACKET,
    SUBPROTOCOL,
    Close,
    ProtocolError,
    decodeText,
    encodeControl,
    encodePacketText,
    errorMessage,
)


def describePeer(address) -> str:
    """
    C{HOST:PORT} (C{[HOST]:PORT} for IPv6) for a TCP address, else its
    C{str}: L{coursenet.logs.peerName}.
    """
    return peerName(address)


# 64 KiB frames make wsproto's byte-wise masking the bottleneck.
masking.install()

#: The drop reason for packets to a peer whose output is full.
OUTPUT_FULL = "output full"
#: The shortest wait between two keepalive checks, in seconds: a check
#: that came a hair early must not reschedule itself at once, forever.
MIN_TICK = 0.05
#: Seconds an HTTP connection may sit idle before its request is complete
#: (Twisted's default is a minute); once upgraded, a link has the tether's
#: keepalive instead.
HTTP_IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class OutputLimits:
    """
    How much may wait to be sent to one WebSocket peer (docs/tether.md,
    section 7.1).  "Full" is the transport's own buffer past its
    high-water mark (64 KiB for TCP); the byte counts are what is written
    after that, until it has drained.

    @ivar queue: bytes of packets that may be queued while full; later
        packets are dropped (tail drop) until the output drains.
    @ivar limit: bytes of anything (packets, pongs, control replies) that
        may be written while full; one more cuts the peer off.
    @ivar drainTimeout: seconds the output may stay full before the peer
        is cut off.
    @ivar closeTimeout: seconds a closing link may take to send what is
        left before it is aborted.
    """

    # A GSO super-packet is up to 64 KiB, and a TUN port reads up to 256
    # KiB a turn: a smaller queue drops bursts that the link would carry
    # (measured with iperf3 through the tunnel: a 256 KiB queue lost
    # throughput, 1 MiB did not).
    queue: int = 1024 * 1024
    limit: int = 2 * 1024 * 1024
    drainTimeout: float = 30.0
    closeTimeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.queue < self.limit:
            raise ValueError(f"output limits: need 0 < queue < limit, not {self.queue} and {self.limit}")
        if not (self.drainTimeout > 0 and self.closeTimeout > 0):
            raise ValueError("output limits: the drain and close timeouts must be positive")


class LogBudget:
    """
    Lines that any peer can cause as often as it likes (refusals before
    the hello, HTTP requests): at most C{burst} every C{interval} seconds.
    The others are counted by kind, and the counts logged with the first
    line of a later interval, or by L{flush}.
    """

    def __init__(self, log: Logger, clock, burst: int = 20, interval: float = 60.0) -> None:
        self.log = log
        self.burst = burst
        self.interval = interval
        self.suppressed: dict[str, int] = {}
        self._clock = clock
        self._start: float | None = None
        self._used = 0

    def emit(self, kind: str, level: LogLevel, format: str, **kw) -> bool:
        """
        Log C{format} at C{level} if the budget allows, else count it
        under C{kind}.

        @return: whether it was logged.
        """
        now = self._clock.seconds()
        if self._start is None or now - self._start >= self.interval:
            self.flush()
            self._start, self._used = now, 0
        if self._used >= self.burst:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return False
        self._used += 1
        self.log.emit(level, format, **kw)
        return True

    def flush(self) -> None:
        """
        Log how many lines were left out, if any.
        """
        if self.suppressed:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.suppressed.items()))
            self.log.info("not logged (over {burst} lines in {interval:g} s): {counts}",
                          burst=self.burst, interval=self.interval, counts=counts)
            self.suppressed = {}


class _LimitedWire(_compat.WebSocketWire):
    """
    Twisted's WebSocket wire protocol, refusing with 1009 any message that
    would grow past C{maxMessage} before it is buffered, and, with
    C{limits}, writing through an L{Outbox}.

    @ivar wsproto: the wsproto connection that frames and parses.
    @ivar link: the L{TetherLink} the messages are for.
    """

    maxMessage = MAX_MESSAGE
    #: Whether a connect waits on the handshake: a client's does, and must hear
    #: of a connection lost before the handshake (a TLS failure, say).
    awaited = False
    #: The bounds on unsent output; L{None}: unbounded.
    limits: OutputLimits | None = None
    #: Whether reading stops while the output is full: the accepting end's
    #: policy.  Not both ends: each would wait for the other to read.
    pauseReadingWhenFull = False
    outbox: Outbox | None = None
    _readingPaused = False

    def __init__(self, wsproto: WSConnection | Connection, bootstrap, link: TetherLink) -> None:
        super().__init__(wsproto, bootstrap, link)
        self.wsproto = wsproto
        self.link = link

    def makeConnection(self, transport) -> None:
        if self.limits is not None:
            limits = self.limits
            transport = self.outbox = Outbox(
                transport, self.link.clock, limit=limits.limit, drainTimeout=limits.drainTimeout,
                closeTimeout=limits.closeTimeout, onFull=self._outputFull, onDrained=self._outputDrained,
            )
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        if self.outbox is not None:
            self.outbox.stopProducing()
        done = _compat.takeHandshakeDone(self)
        super().connectionLost(reason)
        if done is not None and self.awaited:
            done.errback(reason)

    def room(self, size: int) -> bool:
        """
        Whether a packet of C{size} bytes may be queued now.
        """
        outbox, limits = self.outbox, self.limits
        return outbox is None or limits is None or not outbox.full or outbox.waiting + size <= limits.queue

    # Called by the outbox, so it exists.
    def _outputFull(self) -> None:
        if self.pauseReadingWhenFull and not self._readingPaused:
            self._readingPaused = True
            cast(Outbox, self.outbox).wrappedTransport.pauseProducing()

    def _outputDrained(self) -> None:
        if self._readingPaused:
            self._readingPaused = False
            cast(Outbox, self.outbox).wrappedTransport.resumeProducing()
            self._deliver()

    def dataReceived(self, data: bytes) -> None:
        self.wsproto.receive_data(data)
        self._deliver()

    def _deliver(self) -> None:
        """
        Handle the messages received, until reading pauses: those left wait
        in wsproto until the output has drained.
        """
        events = self.wsproto.events()
        while not self._readingPaused:
            event = next(events, None)
            if event is None:
                return
            if isinstance(event, (TextMessage, BytesMessage)):
                held = _compat.pendingMessage(self, isinstance(event, TextMessage))
                if len(held.data) + len(event.data) > self.maxMessage:
                    held.done()
                    reason = f"message larger than {self.maxMessage} bytes"
                    self.link.note("refusals", LogLevel.warn, "refused from {peer}: {reason}",
                                   peer=describePeer(self.transport.getPeer()), reason=reason)
                    self.link.refuse(ProtocolError(Close.TOO_BIG, reason))
                    return
            _compat.handleEvent(event, self)


class TetherResource(Resource):
    """
    The WebSocket endpoint: like L{twisted.web.websocket.WebSocketResource},
    plus the C{tether.v1} subprotocol, a message-size limit and bounded
    output (L{OutputLimits}).

    @param factory: C{refusal(request)} says why a request may not
        connect (403), or L{None}; C{buildProtocol(request)} returns a
        L{TetherLink}.
    @param clock: for the abort of a refused HTTP client that does not
        read its refusal; the links bring their own.
    """

    isLeaf = True

    def __init__(self, factory, maxMessage: int = MAX_MESSAGE, limits: OutputLimits = OutputLimits(),
                 clock=None) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.factory = factory
        self.maxMessage = maxMessage
        self.limits = limits
        self.clock = clock

    def render_GET(self, request: Request) -> bytes | int:
        offered = [
            p.strip() for h in request.requestHeaders.getRawHeaders("sec-websocket-protocol", [])
            for p in h.split(",") if p.strip()
        ]
        if offered and SUBPROTOCOL not in offered:
            return self._refuse(request, 400, f"unsupported subprotocol; offer {SUBPROTOCOL} or none")
        refusal = self.factory.refusal(request)
        if refusal is not None:
            return self._refuse(request, 403, refusal)
        handshake = H11Handshake(ConnectionType.SERVER)
        headers = [(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        try:
            handshake.initiate_upgrade_connection(headers, request.path)
        except RemoteProtocolError as e:
            return self._refuse(request, 400, f"not a WebSocket handshake: {e}")
        link = self.factory.buildProtocol(request)
        toSend = handshake.send(AcceptConnection(subprotocol=SUBPROTOCOL if offered else None))
        # An accepted upgrade has its connection.
        assert handshake.connection is not None
        wire = _LimitedWire(handshake.connection, _compat.serverBootstrap, link)
        wire.maxMessage = self.maxMessage
        wire.limits = self.limits
        wire.pauseReadingWhenFull = True
        # The HTTP channel holds the transport's producer slot; the wire's
        # outbox takes it over.
        transport: Any = request.channel.transport
        transport.unregisterProducer()
        _compat.upgradeToWebSocket(request.channel, wire)
        transport.write(toSend)
        link.negotiationFinished()
        return NOT_DONE_YET

    def _refuse(self, request: Request, code: int, reason: str) -> bytes:
        """
        An HTTP refusal with a JSON reason; the connection closes after it,
        and is aborted if the client has not read it C{closeTimeout}
        seconds later.
        """
        request.setResponseCode(code)
        request.setHeader("content-type", "application/json")
        request.setHeader("connection", "close")
        request.channel.persistent = False
        transport: Any = request.channel.transport
        self.clock.callLater(self.limits.closeTimeout, transport.abortConnection)
        return (errorMessage(code, reason) + "\n").encode("utf-8")


def busyReply(reason: str) -> bytes:
    """
    The answer to a connection over the caps, before any request:
    C{503 Service Unavailable} with C{reason} in a one-line JSON error,
    and the connection closed.
    """
    body = (errorMessage(503, reason) + "\n").encode("utf-8")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


@implementer(IProtocol)
class AdmittedChannel:
    """
    The protocol of an admitted connection: Twisted's HTTP channel, with
    C{release} called once the connection has ended, whether it was
    upgraded to a WebSocket (which takes the channel's C{dataReceived} and
    C{connectionLost} over) or not.
    """

    def __init__(self, channel: IProtocol, release: Callable[[], None]) -> None:
        self.channel = channel
        self._release = release

    def makeConnection(self, transport: ITransport) -> None:
        self.channel.makeConnection(transport)

    def connectionMade(self) -> None:
        self.channel.connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        try:
            self.channel.connectionLost(reason)
        finally:
            self._release()


class TetherSite(Site):
    """
    A web site for tether resources.  Every request it sees comes before
    any hello, from anyone: its access log goes to the debug level,
    through a L{LogBudget} (C{budget}, or one of its own).

    It takes the connections its L{Admission} allows, in total and from
    one address, each counted until it closes, upgraded or not; the
    others get L{busyReply}.  An HTTP connection idle for
    L{HTTP_IDLE_TIMEOUT} seconds before its request is complete is closed.

    @param admission: the caps; by default as many connections as fit
        under the descriptor limit, 256 from one address.
    """

    _log = Logger()

    def __init__(self, resource: Resource, reactor=None, budget: LogBudget | None = None,
                 admission: Admission | None = None, **kw) -> None:
        if reactor is None:
            from twisted.internet import reactor
        kw.setdefault("timeout", HTTP_IDLE_TIMEOUT)
        super().__init__(resource, reactor=reactor, **kw)
        self.budget = budget or LogBudget(self._log, reactor)
        # A link holds its socket and nothing else: one TUN serves them all.
        self.admission = admission or Admission(fdsPerConnection=1)

    # Twisted's annotation has a Site build only its HTTP channel, where
    # IProtocolFactory allows any protocol: a refused connection gets Busy,
    # as with Twisted's own LimitTotalConnectionsFactory (untyped).
    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]
        """
        Twisted's HTTP channel for an admitted connection, released when
        it closes; L{Busy} with L{busyReply} for one over the caps.
        """
        host = getattr(addr, "host", None) or str(addr)
        refusal = self.admission.admit(host)
        if refusal is not None:
            self.budget.emit("busy refusals", LogLevel.info, "refused {peer}: {reason}",
                             peer=describePeer(addr), reason=refusal)
            busy = Busy(busyReply(refusal), self.reactor)
            busy.factory = self
            return busy
        channel = super().buildProtocol(addr)
        if channel is None:
            self.admission.release(host)
            return None
        return AdmittedChannel(channel, lambda: self.admission.release(host))

    def log(self, request: http.Request) -> None:
        self.budget.emit(
            "HTTP requests", LogLevel.debug, "{peer} {method} {uri} {code}",
            peer=describePeer(request.getClientAddress()), method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace")[:200], code=request.code,
        )


@implementer(IPolicyForHTTPS)
class VerifyingPolicy:
    """
    wss:// trust: the platform's roots, or the certificates in C{cafile},
    and the server's name checked through service_identity.
    """

    def __init__(self, cafile: str | None = None) -> None:
        self._cafile = cafile

    def creatorForNetloc(self, hostname: bytes, port: int):
        return clientTLSOptions(hostname.decode("ascii"), self._cafile)


async def connectWebSocket(reactor, url: str, link: TetherLink, *, cafile: str | None = None,
                           timeout: int = 30, maxMessage: int = MAX_MESSAGE,
                           limits: OutputLimits = OutputLimits()) -> TetherLink:
    """
    Open a WebSocket to C{url} (C{ws://} or C{wss://}) carrying C{link}.

    Like L{twisted.web.websocket.WebSocketClientEndpoint.connect}, with the
    message-size limit and bounded output of L{_LimitedWire}.

    @raise twisted.web.websocket.ConnectionRejected: on an HTTP refusal.
    """
    # Twisted's own client endpoint, for the TCP or TLS endpoint it would
    # connect with: the connection is ours to make, with our wire.
    endpointFactory = WebSocketClientEndpoint.new(
        reactor, url, VerifyingPolicy(cafile) if cafile else BrowserLikePolicyForHTTPS(), timeout
    ).endpointFactory
    endpoint = endpointFactory.endpointForURI(
        URI.fromBytes(url.replace("ws", "http", 1).encode("utf-8"))
    )

    # Typed as Twisted's wire: it declares its factory as making that class,
    # not a subclass, and Factory.forProtocol checks the two agree.
    def build() -> _compat.WebSocketWire[Any]:
        return clientWire(url, link, maxMessage, limits)

    wire = await endpoint.connect(Factory.forProtocol(build))
    return await _compat.handshakeDone(wire)


def clientWire(url: str, link: TetherLink, maxMessage: int = MAX_MESSAGE,
               limits: OutputLimits = OutputLimits()) -> _LimitedWire:
    """
    The client side of a WebSocket to C{url} carrying C{link}, ready to be
    connected to any transport; its handshake L{Deferred}
    (L{_compat.handshakeDone}) fires once the server accepts.
    It keeps reading while its output is full (the server stops), so
    that the two ends never wait for each other.
    """
    parsed = URL.fromText(url)
    target = str(parsed.replace(scheme="", host="", port=None)) or "/"

    def bootstrap(wsc, transport) -> None:
        transport.write(wsc.send(WSRequest(parsed.host, target)))

    wire = _LimitedWire(WSConnection(ConnectionType.CLIENT), bootstrap, link)
    wire.maxMessage = maxMessage
    wire.limits = limits
    wire.awaited = True
    return wire


def checkKeepalive(interval: float, timeout: float) -> None:
    """
    @raise ValueError: unless 0 < C{interval} < C{timeout}: a ping every
        zero seconds never lets the clock move on.
    """
    if not 0 < interval < timeout:
        raise ValueError(f"keepalive: need 0 < interval < timeout, not {interval:g} and {timeout:g} seconds")


class TetherLink:
    """
    One end of a tether WebSocket: packets and control messages in, the
    same out, with keepalive pings and refusals that say why.

    Subclasses handle L{controlReceived}, L{packetReceived} and
    L{linkLost}.  Until L{startKeepalive}, no timer runs.

    @ivar logBudget: where the lines this link's peer can cause go while
        it is not L{authenticated}; L{None}: logged as they come.
    """

    _log = Logger()
    logBudget: LogBudget | None = None

    def __init__(self, clock) -> None:
        self.clock = clock
        self.transport: WebSocketTransport | None = None
        self.connected = False
        self.binary = True
        #: Whether data messages carry a virtio-net header (the C{gso} extension).
        self.offload = False
        self._pingID = 0
        self._lastHeard = 0.0
        self._timer = None
        self._keepalive = 15.0
        self._timeout = 45.0
        self.closeReason: ProtocolError | None = None

    # WebSocketProtocol

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        self.connected = True
        self._lastHeard = self.clock.seconds()
        # Each message is a packet someone waits for: Nagle's delay would
        # add to every round trip through the tunnel.
        noDelay(self.transport)
        self.linkMade()

    def pongReceived(self, payload: bytes) -> None:
        self._lastHeard = self.clock.seconds()

    def textMessageReceived(self, message: str) -> None:
        self._lastHeard = self.clock.seconds()
        try:
            control, packet = decodeText(message)
            if control is None:
                assert packet is not None  # decodeText gives a control or a packet
                self.packetReceived(packet)
            elif control["type"] == "ping":
                self.sendControl({"type": "pong", "id": control.get("id")})
            elif control["type"] == "error":
                self.closeReason = ProtocolError(control.get("code", 0), str(control.get("reason", ""))[:200])
            elif control["type"] != "pong":
                self.controlReceived(control)
        except ProtocolError as e:
            self.refuse(e)

    def bytesMessageReceived(self, data: bytes) -> None:
        self._lastHeard = self.clock.seconds()
        try:
            self.packetReceived(bytes(data))
        except ProtocolError as e:
            self.refuse(e)

    def connectionLost(self, reason: Failure) -> None:
        self.connected = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.linkLost(reason)

    # Sending

    def sendControl(self, message: dict | str) -> None:
        if self.connected:
            assert self.transport is not None  # connected
            self.transport.sendTextMessage(message if isinstance(message, str) else encodeControl(message))

    def sendPacket(self, packet: bytes) -> None:
        transport = self.transport
        assert transport is not None, "no WebSocket to send on yet"
        if self.binary:
            transport.sendBytesMessage(packet)
        else:
            transport.sendTextMessage(encodePacketText(packet))

    def sendFromTun(self, data: bytes, vnet: bool, counters) -> str | None:
        """
        Send what the TUN device read: whole where this link carries
        super-packets, else cut up here; each message counted as out in
        C{counters}.  While the peer's output is full past its queue, the
        messages are dropped instead, as a router's full queue drops.

        @return: why nothing, or not all of it, was sent (L{OUTPUT_FULL}
            for drops), or L{None}.
        """
        try:
            messages = tunMessages(data, vnet, self.offload)
        except OffloadError as e:
            return f"bad offload header from the kernel: {e}"
        room = getattr(self.transport, "room", None)
        dropped = None
        for message in messages:
            if room is not None and not room(len(message)):
                dropped = OUTPUT_FULL
                continue
            counters.packetsOut += 1
            counters.bytesOut += len(message)
            self.sendPacket(message)
        return dropped

    def refuse(self, error: ProtocolError) -> None:
        """
        Say why in an C{error} message (it crosses a relay, close codes may
        not), then close with its code.
        """
        if not self.connected:
            return
        level = LogLevel.info if error.code in (Close.NORMAL, Close.GOING_AWAY) else LogLevel.warn
        self.note("refusals", level, "closing link{to}: {code} {reason}", to=self.logName(),
                  code=int(error.code), reason=error.reason)
        self.closeReason = error
        self.sendControl(errorMessage(error.code, error.reason))
        self.connected = False
        assert self.transport is not None  # it was connected
        _compat.closeWebSocket(self.transport, int(error.code), error.reason[:120])

    # Logging

    def logName(self) -> str:
        """
        C{" to PEER"} for log lines about this link, where the peer is
        known (a server's client, as C{ADDRESS:PORT [name]}), else C{""}.
        """
        return ""

    @property
    def authenticated(self) -> bool:
        """
        Whether the peer has proved who it is; only a server's peer has to.
        """
        return True

    def note(self, kind: str, level: LogLevel, format: str, **kw) -> None:
        """
        Log a line about this link; through L{logBudget} (counted as
        C{kind} if left out) while the peer is not L{authenticated}.
        """
        if self.logBudget is not None and not self.authenticated:
            self.logBudget.emit(kind, level, format, **kw)
        else:
            self._log.emit(level, format, **kw)

    # Keepalive

    def startKeepalive(self, interval: float, timeout: float) -> None:
        """
        Ping every C{interval} seconds; close with 4408 after C{timeout}
        seconds without a message from the peer.

        @raise ValueError: unless 0 < C{interval} < C{timeout}.
        """
        checkKeepalive(interval, timeout)
        self._keepalive, self._timeout = interval, timeout
        self._lastHeard = self.clock.seconds()
        if self._timer is None:
            self._timer = self.clock.callLater(interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.connected:
            return
        silent = self.clock.seconds() - self._lastHeard
        if silent >= self._timeout:
            self.refuse(ProtocolError(Close.TIMEOUT, f"keepalive timeout: nothing heard for {silent:.0f} s"))
            return
        self._pingID += 1
        self.sendControl({"type": "ping", "id": self._pingID})
        self._timer = self.clock.callLater(max(MIN_TICK, min(self._keepalive, self._timeout - silent)), self._tick)

    # For subclasses

    def linkMade(self) -> None:
        pass

    def controlReceived(self, message: dict) -> None:
        raise ProtocolError(Close.BAD_MESSAGE, f"unexpected control message {message['type']!r}")

    def packetReceived(self, packet: bytes) -> None:
        raise NotImplementedError

    def linkLost(self, reason: Failure) -> None:
        pass


@implementer(IRawPacketProtocol)
class TunProtocol(AbstractDatagramProtocol):
    """
    What a L{twisted.pair.tuntap.TuntapPort} reads: every IP packet goes to
    C{deliver}.
    """

    def __init__(self, deliver) -> None:
        self.deliver = deliver

    def datagramReceived(self, data, partial=0, dest=None, source=None, protocol=None) -> None:
        self.deliver(data)

    def addProto(self, num, proto) -> None:
        raise NotImplementedError("a tether TUN carries IP only")


#: ioctl(TUNSETOFFLOAD) and its flags, from linux/if_tun.h.
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40
_TSO = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN


class OffloadTunPort(TuntapPort):
    """
    A TUN device opened with C{IFF_VNET_HDR}: every read and write starts
    with a virtio-net header (L{tether.offload}), and once L{setOffload} is
    on, the kernel hands over GSO super-packets of up to 64 KiB with partial
    checksums instead of one MTU-sized packet per read.

    @ivar vnet: always true here; L{TuntapPort} has no such attribute.
    @ivar offload: whether the kernel may hand over super-packets now.
    """

    vnet = True
    offload = False

    # A private method of TuntapPort (tether._compat.OVERRIDDEN): it takes
    # no flags of ours anywhere else.
    def _openTunnel(self, name, mode):
        return _compat.openTunnel(self, name, mode | TunnelFlags.IFF_VNET_HDR)

    def setOffload(self, on: bool) -> bool:
        """
        Ask the kernel for super-packets (checksum offload, TSO and, where
        the kernel has it, USO), or for none.

        @return: whether offload is now on.
        """
        flags = (_TSO | TUN_F_USO4 | TUN_F_USO6, _TSO) if on else (0,)
        for value in flags:
            try:
                fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, value)
            except OSError:
                continue
            self.offload = on
            return on
        fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, 0)
        self.offload = False
        return False

    def writePlain(self, packet: bytes) -> int:
        """
        Write a complete IP packet, behind a header that says so.
        """
        return self.writev((PLAIN_HDR, packet))

    def writeSequence(self, seq) -> None:
        self.writev(seq)

    def writev(self, seq) -> int:
        """
        Write the pieces in C{seq} as one datagram, in one system call.

        @return: the bytes written.
        """
        while True:
            try:
                return os.writev(self.fileno(), seq)
            except InterruptedError:
                continue


def openTun(name: str, deliver, reactor, system=None, vnet: bool = False) -> TuntapPort:
    """
    Open (creating it) the TUN device C{name}; every packet it reads goes
    to C{deliver}.

    @param system: L{twisted.pair.testing.MemoryIOSystem} in tests.
    @param vnet: open it with virtio-net headers (L{OffloadTunPort}); only
        for a real device (C{system} L{None}).
    @return: the started L{TuntapPort}; C{write} sends a packet into it and
        C{interface} is the device's name as the kernel gave it.
    """
    port: TuntapPort
    if vnet and system is None:
        port = OffloadTunPort(name.encode(), TunProtocol(deliver), maxPacketSize=MAX_PACKET + VNET_HDR_LEN,
                              reactor=reactor)
    else:
        port = TuntapPort(name.encode(), TunProtocol(deliver), maxPacketSize=MAX_PACKET,
                          reactor=reactor, system=system)
    port.startListening()
    return port
