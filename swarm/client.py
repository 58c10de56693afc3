"""
The peer as a library: L{Peer} listens for other peers, holds torrents
(seeding or downloading), and announces each to its tracker.

    peer = Peer(reactor)
    await peer.listen("tcp:0:interface=127.0.0.1")
    torrent = await peer.add(readMetainfo("f.torrent"), "downloads/f", download=True)
    path = await torrent.done
    await peer.stop()
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from fastbencode import bdecode
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from swarm.metainfo import Metainfo
from swarm.protocol import OutgoingFactory, PeerFactory
from swarm.ratelimit import rateLimit
from swarm.torrent import Torrent, openTorrent
from swarm.tracker import parseCompact

#: Largest tracker reply read.
MAX_REPLY = 1 << 20
#: Re-announce bounds, whatever the tracker says.
MIN_INTERVAL, MAX_INTERVAL = 5.0, 1800.0
#: Seconds an announce may take.
ANNOUNCE_TIMEOUT = 15.0
#: While downloading with no peer, ask again this soon.
RETRY_NO_PEERS = 5.0


class TrackerError(Exception):
    """
    A tracker that could not be reached, or answered with a failure reason.
    """


class _Body(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_REPLY:
            self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if len(self.data) > MAX_REPLY:
            self.done.errback(TrackerError(f"reply over {MAX_REPLY} bytes"))
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(reason)


def announceURL(base: str, params: dict[str, Any]) -> bytes:
    """
    C{base} with the announce parameters appended; binary values
    percent-encoded byte for byte, as BEP 3 says.
    """
    query = "&".join(
        f"{k}={urllib.parse.quote_from_bytes(v) if isinstance(v, bytes) else urllib.parse.quote(str(v))}"
        for k, v in params.items()
    )
    return (base + ("&" if "?" in base else "?") + query).encode("ascii")


def parsePeers(reply: dict) -> list[tuple[str, int]]:
    """
    The peers of an announce reply: compact (BEP 23) or a list of
    dictionaries (BEP 3).
    """
    peers = reply.get(b"peers", b"")
    if isinstance(peers, bytes):
        return parseCompact(peers)
    out = []
    if isinstance(peers, list):
        for p in peers:
            if isinstance(p, dict) and isinstance(p.get(b"ip"), bytes) and isinstance(p.get(b"port"), int):
                out.append((p[b"ip"].decode("ascii", "replace"), p[b"port"]))
    return out


class Announcer:
    """
    Announces one torrent to its HTTP tracker: C{started}, then again every
    interval the tracker asks for (bounded), C{completed} when the download
    ends, C{stopped} at the end.
    """

    _log = Logger()

    def __init__(self, torrent: Torrent, url: str, port: int, clock: Any) -> None:
        self.torrent = torrent
        self.url = url
        self.port = port
        self.clock = clock
        self.agent = Agent(clock)
        self.interval = MAX_INTERVAL
        self.lastPeers: list[tuple[str, int]] = []
        self._call: Any = None
        self.stopped = False

    async def announce(self, event: str = "") -> list[tuple[str, int]]:
        t = self.torrent
        params: dict[str, Any] = {
            "info_hash": t.meta.infoHash, "peer_id": t.peerId, "port": self.port,
            "uploaded": t.uploaded, "downloaded": t.downloaded, "left": t.left,
            "compact": 1, "numwant": 50,
        }
        if event:
            params["event"] = event
        request = self.agent.request(b"GET", announceURL(self.url, params), Headers({}))
        response = await request.addTimeout(ANNOUNCE_TIMEOUT, self.clock)
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_Body(done))
        body = await done.addTimeout(ANNOUNCE_TIMEOUT, self.clock)
        if response.code != 200:
            raise TrackerError(f"tracker answered HTTP {response.code}")
        try:
            reply = bdecode(body)
        except Exception:
            raise TrackerError("tracker reply is not bencode") from None
        if not isinstance(reply, dict):
            raise TrackerError("tracker reply is not a dictionary")
        if b"failure reason" in reply:
            raise TrackerError(reply[b"failure reason"].decode("utf-8", "replace"))
        interval = reply.get(b"interval", MAX_INTERVAL)
        if isinstance(interval, int):
            self.interval = min(max(interval, MIN_INTERVAL), MAX_INTERVAL)
        self.lastPeers = parsePeers(reply)
        return self.lastPeers

    def start(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._round("started"))
        if not self.torrent.complete:
            self.torrent.done.addCallback(self._completed)
        return d

    def _completed(self, result: Any) -> Any:
        if not self.stopped:
            Deferred.fromCoroutine(self._round("completed"))
        return result

    async def _round(self, event: str) -> None:
        delay = self.interval
        try:
            peers = await self.announce(event)
            self.torrent.addPeers(peers)
            if not self.torrent.complete and not self.torrent.peers and len(peers) <= 1:
                delay = RETRY_NO_PEERS
        except Exception as e:
            self._log.warn("announce to {url} failed: {why}", url=self.url, why=e)
            delay = RETRY_NO_PEERS if not self.torrent.complete else MIN_INTERVAL * 6
        if self._call is not None and self._call.active():
            self._call.cancel()
        if not self.stopped:
            self._call = self.clock.callLater(delay, lambda: Deferred.fromCoroutine(self._round("")))

    async def stop(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        try:
            await self.announce("stopped")
        except Exception as e:
            self._log.info("stopped-announce to {url} failed: {why}", url=self.url, why=e)


class DHTAnnouncer:
    """
    Finds peers for one torrent in the DHT (BEP 5) and announces it there:
    every C{RETRY_NO_PEERS} seconds while a download has no peer, every
    15 minutes otherwise.
    """

    _log = Logger()

    def __init__(self, torrent: Torrent, dht: Any, port: int, clock: Any) -> None:
        self.torrent = torrent
        self.dht = dht
        self.port = port
        self.clock = clock
        self._call: Any = None
        self.stopped = False
        self.rounds = 0
        self.firstRound: Deferred[None] | None = None

    def start(self) -> Deferred[None]:
        self.firstRound = Deferred.fromCoroutine(self._round())
        return self.firstRound

    async def _round(self) -> None:
        self.rounds += 1
        try:
            result = await self.dht.announce(self.torrent.meta.infoHash, self.port)
            self.torrent.addPeers(sorted(result.peers))
        except Exception as e:
            self._log.warn("DHT round failed: {why}", why=e)
        delay = RETRY_NO_PEERS if not self.torrent.complete and not self.torrent.peers else 900.0
        if not self.stopped:
            self._call = self.clock.callLater(delay, lambda: Deferred.fromCoroutine(self._round()))

    def stop(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()


class Peer:
    """
    A BitTorrent peer: one listener, any number of torrents; with C{dht}
    (a listening L{swarm.dht.DHTNode}), each torrent is also announced
    and looked up in the DHT.  C{maxUploadRate} and C{maxDownloadRate}
    (bytes a second) limit all its torrents together (L{swarm.ratelimit}).
    """

    def __init__(
        self, reactor: Any = None, maxConnections: int | None = None, dht: Any = None,
        maxUploadRate: float | None = None, maxDownloadRate: float | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _r

            reactor = _r
        self.reactor = reactor
        self.factory = PeerFactory(reactor, maxConnections)
        self.port: Any = None
        self.announcers: list[Announcer] = []
        self.torrents: list[Torrent] = []
        self.stopped = False
        self.dht = dht
        self.dhtAnnouncers: list[DHTAnnouncer] = []
        #: Bytes a second, shared by every torrent added (None: no limit).
        self.uploadLimit = rateLimit(maxUploadRate, reactor)
        self.downloadLimit = rateLimit(maxDownloadRate, reactor)

    @property
    def portNumber(self) -> int:
        return self.port.getHost().port

    async def listen(self, description: str = "tcp:0:interface=127.0.0.1") -> int:
        self.port = await endpoints.serverFromString(self.reactor, description).listen(self.factory)
        return self.portNumber

    def _connect(self, torrent: Torrent, host: str, port: int) -> None:
        self.reactor.connectTCP(host, port, OutgoingFactory(torrent), timeout=10)

    async def add(
        self, meta: Metainfo, path: str, download: bool, announce: bool = True, tracker: str | None = None,
    ) -> Torrent:
        """
        Seed (C{download} false) the data at C{path}, or download to it;
        the data is verified first, off the reactor thread.  Announced to
        C{tracker} or the metainfo's own, unless C{announce} is false.
        """
        torrent: Torrent = await deferToThread(
            openTorrent, meta, path, self.reactor, download, connect=self._connect,
            uploadLimit=self.uploadLimit, downloadLimit=self.downloadLimit,
        )
        if self.port is not None:
            torrent.ownAddresses.add(("127.0.0.1", self.portNumber))
        self.factory.torrents[meta.infoHash] = torrent
        self.torrents.append(torrent)
        torrent.start()
        url = tracker or meta.announce
        if announce and url and self.port is not None:
            a = Announcer(torrent, url, self.portNumber, self.reactor)
            self.announcers.append(a)
            a.start()
        if self.dht is not None and self.port is not None:
            da = DHTAnnouncer(torrent, self.dht, self.portNumber, self.reactor)
            self.dhtAnnouncers.append(da)
            da.start()
        return torrent

    async def stop(self) -> None:
        """
        Announce C{stopped}, close every connection and the listener (a
        second call does nothing).
        """
        if self.stopped:
            return
        self.stopped = True
        for da in self.dhtAnnouncers:
            da.stop()
        await DeferredList([Deferred.fromCoroutine(a.stop()) for a in self.announcers])
        for t in self.torrents:
            t.stop()
        if self.port is not None:
            await self.port.stopListening()
        await succeed(None)
