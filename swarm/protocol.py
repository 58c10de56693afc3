"""
The peer wire (BEP 3) on Twisted: one L{PeerProtocol} per connection, to
or from another peer, speaking for one L{swarm.torrent.Torrent}.

Parsing is L{swarm.wire.Framer}'s; this module keeps the connection's
state (choked, interested, the peer's pieces, requests both ways) and its
limits:
  - a message over the framer's limit, a malformed one, a request outside
    the piece or the torrent, a piece we never asked for in bulk: the
    connection is closed (BEP 3 has no error message; the reason is logged);
  - the peer's requests wait in a queue of at most C{MAX_QUEUE}; past that
    the connection is closed;
  - blocks are sent only while the transport is not full (the protocol is
    its transport's push producer), so a peer that never reads holds at
    most one block beyond the transport's own buffer, and is cut off after
    C{DRAIN_TIMEOUT} seconds stalled;
  - with the peer's rate limits (L{swarm.ratelimit}), sending pauses
    between blocks, and receiving stops reading the socket, while the
    shared bucket is overdrawn;
  - no message for C{IDLE_TIMEOUT} seconds, or no handshake within
    C{HANDSHAKE_TIMEOUT}: closed.  A keep-alive goes out every
    C{KEEPALIVE} seconds.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from coursenet.admission import Admission, AdmittingFactory
from swarm import wire

if TYPE_CHECKING:
    from swarm.torrent import Torrent

MAX_QUEUE = 512
HANDSHAKE_TIMEOUT = 30.0
IDLE_TIMEOUT = 240.0
KEEPALIVE = 90.0
DRAIN_TIMEOUT = 60.0
#: Requests kept outstanding to one peer, at most and at least: between
#: them, as many as it delivers in PIPELINE_SECONDS (so a slow peer does
#: not hold blocks a fast one could bring; measured each second).
PIPELINE, MIN_PIPELINE = 32, 4
PIPELINE_SECONDS = 0.5


@implementer(IPushProducer)
class PeerProtocol(Protocol):
    """
    One connection to another peer.

    @ivar bits: the pieces the peer has said it has.
    @ivar outstanding: our requests to it, C{(index, begin, length)}.
    @ivar queue: its requests to us, waiting to be served.
    """

    _log = Logger()
    torrent: Torrent | None = None
    _admittedAs: str | None = None

    @staticmethod
    def busyReply(text: str) -> bytes:
        # BEP 3 has no refusal message: a refused connection just closes.
        return b""

    def __init__(self, torrents: dict[bytes, Torrent], clock: Any, initiator: Torrent | None = None) -> None:
        self.torrents = torrents
        self.clock = clock
        self.initiator = initiator
        self.peerId = b""
        self.bits: list[bool] = []
        self.amChoking = True
        self.amInterested = False
        self.peerChoking = True
        self.peerInterested = False
        self.outstanding: dict[tuple[int, int, int], None] = {}
        self.queue: collections.deque[tuple[int, int, int]] = collections.deque()
        self.paused = False
        self.closed = False
        self.downloadedBytes = 0
        self.uploadedBytes = 0
        self.rateDown = 0
        self.rateUp = 0
        #: Bytes a second it sends us (smoothed), and the window measuring it.
        self.receiveRate = 0.0
        self._windowStart: float | None = None
        self._windowBytes = 0
        self.sentWhilePaused = 0
        self.peakSentWhilePaused = 0
        self.remotePort: int | None = None
        self._stall: Any = None
        #: Waits for the upload and download limits' buckets.
        self._paced: Any = None
        self._readPaused: Any = None
        self._timers: list[Any] = []
        self._idle: Any = None
        self._keepalive: Any = None

    def __repr__(self) -> str:
        return f"<peer {self.address}>"

    @property
    def address(self) -> str:
        try:
            p: Any = self.transport.getPeer()  # type: ignore[union-attr]
            return f"{p.host}:{p.port}"
        except Exception:
            return "?"

    @property
    def host(self) -> str:
        try:
            return self.transport.getPeer().host  # type: ignore[union-attr]
        except Exception:
            return "?"

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._framer = wire.Framer(wire.MAX_REQUEST + 13)
        self._idle = self.clock.callLater(HANDSHAKE_TIMEOUT, self.close, "no handshake in time")
        if self.initiator is not None:
            self.sendHandshake(self.initiator)

    def sendHandshake(self, torrent: Torrent) -> None:
        self.transport.write(wire.handshake(torrent.meta.infoHash, torrent.peerId))  # type: ignore[union-attr]

    def close(self, why: str) -> None:
        """
        Close the connection, logging why (BEP 3 has no way to tell the
        peer).
        """
        if self.closed:
            return
        self._log.info("closing {peer}: {why}", peer=self.address, why=why)
        self.closed = True
        if self.transport is not None:
            self.transport.loseConnection()
            self._timers.append(self.clock.callLater(5, self.transport.abortConnection))  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        for t in (self._idle, self._keepalive, self._stall, self._paced, self._readPaused, *self._timers):
            if t is not None and t.active():
                t.cancel()
        if self.torrent is not None:
            self.torrent.peerLost(self)
        factory = getattr(self, "factory", None)
        if self._admittedAs is not None and factory is not None:
            factory.admission.release(self._admittedAs)
            self._admittedAs = None

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            items = self._framer.feed(data)
        except wire.WireError as e:
            self.close(str(e))
            return
        if items and self.torrent is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)
        for item in items:
            if self.closed:
                return
            try:
                if isinstance(item, wire.Handshake):
                    self.handshakeReceived(item)
                else:
                    self.messageReceived(item)
            except wire.WireError as e:
                self.close(str(e))
                return

    def handshakeReceived(self, hs: wire.Handshake) -> None:
        torrent = self.torrents.get(hs.infoHash)
        if torrent is None or (self.initiator is not None and torrent is not self.initiator):
            raise wire.WireError("handshake for a torrent not served here")
        if hs.peerId == torrent.peerId:
            raise wire.WireError("connected to ourselves")
        self.peerId = hs.peerId
        refusal = torrent.admitPeer(self)
        if refusal:
            raise wire.WireError(refusal)
        if self.initiator is None:
            self.sendHandshake(torrent)
        self.torrent = torrent
        self.bits = [False] * torrent.meta.numPieces
        self._idle.reset(IDLE_TIMEOUT)
        self._keepalive = self.clock.callLater(KEEPALIVE, self._sendKeepalive)
        if any(torrent.have):
            self.send(wire.bitfield(torrent.have))
        torrent.peerReady(self)

    def _sendKeepalive(self) -> None:
        self.send(wire.KEEPALIVE)
        self._keepalive = self.clock.callLater(KEEPALIVE, self._sendKeepalive)

    def messageReceived(self, m: wire.Message) -> None:
        torrent = self.torrent
        assert torrent is not None
        kind = m.kind
        if kind is None:
            return
        if kind == wire.PIECE:
            self.downloadedBytes += m.length
            self._measure(m.length)
            if torrent.downloadLimit is not None:
                self._limitReading(torrent.downloadLimit.take(m.length), torrent.downloadLimit.clock)
            torrent.blockReceived(self, m.index, m.begin, m.data)
        elif kind == wire.REQUEST:
            self.requestReceived(m.index, m.begin, m.length)
        elif kind == wire.HAVE:
            if m.index >= len(self.bits):
                raise wire.WireError(f"have {m.index}: no such piece")
            if not self.bits[m.index]:
                self.bits[m.index] = True
                torrent.peerHas(self, [m.index])
        elif kind == wire.BITFIELD:
            self.bits = wire.parseBitfield(m.data, len(self.bits))
            torrent.peerHas(self, [i for i, b in enumerate(self.bits) if b])
        elif kind == wire.CHOKE:
            self.peerChoking = True
            torrent.peerChoked(self)
        elif kind == wire.UNCHOKE:
            self.peerChoking = False
            torrent.fillRequests(self)
        elif kind == wire.INTERESTED:
            self.peerInterested = True
            torrent.choker.interestChanged(self)
        elif kind == wire.NOT_INTERESTED:
            self.peerInterested = False
            torrent.choker.interestChanged(self)
        elif kind == wire.CANCEL:
            try:
                self.queue.remove((m.index, m.begin, m.length))
            except ValueError:
                pass
        # PORT (DHT) and extension messages: not spoken here, ignored.

    def _limitReading(self, wait: float, clock: Any) -> None:
        # Over the download limit: read nothing more until the bucket's debt
        # is paid; TCP's window then slows the sender.
        if wait > 0 and self._readPaused is None and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            self._readPaused = clock.callLater(wait, self._resumeReading)

    def _resumeReading(self) -> None:
        self._readPaused = None
        if not self.closed and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _measure(self, n: int) -> None:
        now = self.clock.seconds()
        if self._windowStart is None:
            self._windowStart = now
        elif now - self._windowStart >= 1.0:
            rate = self._windowBytes / (now - self._windowStart)
            self.receiveRate = rate if not self.receiveRate else (self.receiveRate + rate) / 2
            self._windowStart, self._windowBytes = now, 0
        self._windowBytes += n

    @property
    def pipeline(self) -> int:
        """
        How many requests to keep out to this peer: 8 until its rate is
        known, then what it sends in L{PIPELINE_SECONDS}, within
        L{MIN_PIPELINE}..L{PIPELINE}.
        """
        if not self.receiveRate:
            return 2 * MIN_PIPELINE
        want = int(self.receiveRate * PIPELINE_SECONDS / wire.BLOCK) + 2
        return max(MIN_PIPELINE, min(PIPELINE, want))

    def requestReceived(self, index: int, begin: int, length: int) -> None:
        torrent = self.torrent
        assert torrent is not None
        meta = torrent.meta
        if index >= meta.numPieces:
            raise wire.WireError(f"request for piece {index}: the torrent has {meta.numPieces}")
        if length == 0 or length > wire.MAX_REQUEST or begin + length > meta.pieceSize(index):
            raise wire.WireError(
                f"request {index}/{begin}+{length}: outside the piece ({meta.pieceSize(index)} bytes)"
                f" or over {wire.MAX_REQUEST}"
            )
        if not torrent.have[index]:
            raise wire.WireError(f"request for piece {index}, which we have not announced")
        if self.amChoking:
            return  # BEP 3: requests while choked are dropped
        if len(self.queue) >= MAX_QUEUE:
            raise wire.WireError(f"over {MAX_QUEUE} requests waiting to be served")
        self.queue.append((index, begin, length))
        self.serve()

    # -- output -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self.closed:
            if self.paused:
                self.sentWhilePaused += len(data)
                self.peakSentWhilePaused = max(self.peakSentWhilePaused, self.sentWhilePaused)
            self.transport.write(data)  # type: ignore[union-attr]

    def serve(self) -> None:
        """
        Send queued blocks until the queue is empty, the transport full, or
        the upload limit's bucket overdrawn (then again once it is paid).
        """
        torrent = self.torrent
        if torrent is None or torrent.finishing:
            return
        limit = torrent.uploadLimit
        while self.queue and not self.paused and not self.closed and self._paced is None:
            index, begin, length = self.queue.popleft()
            block = torrent.storage.read(index, begin, length)
            self.send(wire.piece(index, begin, block))
            self.uploadedBytes += length
            torrent.uploaded += length
            if limit is not None:
                wait = limit.take(length)
                if wait > 0:
                    self._paced = limit.clock.callLater(wait, self._unpace)

    def _unpace(self) -> None:
        self._paced = None
        self.serve()

    def setChoking(self, choking: bool) -> None:
        if choking == self.amChoking:
            return
        self.amChoking = choking
        if choking:
            self.queue.clear()
        self.send(wire.encode(wire.CHOKE if choking else wire.UNCHOKE))

    def setInterested(self, interested: bool) -> None:
        if interested != self.amInterested:
            self.amInterested = interested
            self.send(wire.encode(wire.INTERESTED if interested else wire.NOT_INTERESTED))

    def sendRequest(self, index: int, begin: int, length: int) -> None:
        self.outstanding[(index, begin, length)] = None
        self.send(wire.request(wire.REQUEST, index, begin, length))

    def sendCancel(self, index: int, begin: int, length: int) -> None:
        if self.outstanding.pop((index, begin, length), 0) is None:
            self.send(wire.request(wire.CANCEL, index, begin, length))

    # -- IPushProducer: the transport's buffer ------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self._stall is None or not self._stall.active():
            self._stall = self.clock.callLater(
                DRAIN_TIMEOUT, self._cutOff, f"read nothing for {DRAIN_TIMEOUT:g} s"
            )

    def resumeProducing(self) -> None:
        self.paused = False
        self.sentWhilePaused = 0
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self.serve()

    def stopProducing(self) -> None:
        self.closed = True

    def _cutOff(self, why: str) -> None:
        self._log.info("cutting off {peer}: {why}", peer=self.address, why=why)
        self.closed = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _Build(Factory):
    torrents: dict[bytes, Torrent]
    reactor: Any

    def buildProtocol(self, addr):
        p = PeerProtocol(self.torrents, self.reactor)
        p.factory = self
        return p


class PeerFactory(AdmittingFactory, _Build):
    """
    The listener's factory: every torrent this process serves, by info
    hash, behind the project's connection caps.
    """

    protocol = PeerProtocol

    def __init__(self, clock: Any = None, maxConnections: int | None = None, maxPerAddress: int | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.reactor = clock
        self.torrents: dict[bytes, Torrent] = {}
        self.admission = Admission(maxConnections, maxPerAddress or 32)


class OutgoingFactory(ClientFactory):
    """
    A connection we open to a peer of C{torrent}.
    """

    def __init__(self, torrent: Torrent) -> None:
        self.torrent = torrent

    def buildProtocol(self, addr):
        p = PeerProtocol({self.torrent.meta.infoHash: self.torrent}, self.torrent.clock, initiator=self.torrent)
        p.factory = self
        return p

    def clientConnectionFailed(self, connector, reason) -> None:
        self.torrent.connectFailed(connector.getDestination())
