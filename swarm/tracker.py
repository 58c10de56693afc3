"""
An HTTP tracker (BEP 3's tracker protocol, BEP 23's compact peer lists,
scrape) on twisted.web.

State is bounded: at most C{maxTorrents} torrents and C{maxPeers} peers a
torrent (the longest-silent one is dropped to make room), peers that have
not announced for twice the interval are forgotten, replies carry at most
C{maxNumwant} peers, and each address may announce or scrape at most
C{rate} times a second (burst C{burst}).  Every refusal is a bencoded
C{failure reason} that says what was wrong, as BEP 3 prescribes.

The peer's address is the one its connection comes from: the C{ip}
parameter is ignored, so nobody can make the tracker hand out a third
party's address.
"""

from __future__ import annotations

import collections
import ipaddress
import random
import socket
import struct
from dataclasses import dataclass
from typing import Any

from fastbencode import bencode
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

DEFAULT_INTERVAL = 1800


@dataclass
class PeerEntry:
    ip: str
    port: int
    left: int
    seen: float


def compactPeers(peers: list[PeerEntry]) -> bytes:
    """
    BEP 23: six bytes a peer, IPv4 address then port, both big-endian.
    """
    return b"".join(socket.inet_aton(p.ip) + struct.pack(">H", p.port) for p in peers if ":" not in p.ip)


def parseCompact(data: bytes) -> list[tuple[str, int]]:
    """
    The peers of a compact list (a trailing partial entry is ignored).
    """
    return [
        (socket.inet_ntoa(data[i:i + 4]), struct.unpack(">H", data[i + 4:i + 6])[0])
        for i in range(0, len(data) - len(data) % 6, 6)
    ]


class TrackerError(ValueError):
    pass


class Swarms:
    """
    The tracker's state: torrents by info hash, each a dict of peers by
    peer id; with the limits above.
    """

    def __init__(
        self, clock: Any, interval: int = DEFAULT_INTERVAL, maxTorrents: int = 1000, maxPeers: int = 1000,
        maxNumwant: int = 50, rate: float = 1.0, burst: int = 10,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.maxTorrents = maxTorrents
        self.maxPeers = maxPeers
        self.maxNumwant = maxNumwant
        self.rate = rate
        self.burst = burst
        self.torrents: collections.OrderedDict[bytes, collections.OrderedDict[bytes, PeerEntry]] = (
            collections.OrderedDict()
        )
        self.downloaded: dict[bytes, int] = {}
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, ip: str) -> bool:
        """
        Token bucket per address; at most 10 000 addresses remembered.
        """
        if self.rate <= 0:
            return True
        now = self.clock.seconds()
        tokens, last = self._buckets.pop(ip, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        ok = tokens >= 1
        self._buckets[ip] = (tokens - 1 if ok else tokens, now)
        while len(self._buckets) > 10_000:
            self._buckets.popitem(last=False)
        return ok

    def expire(self, swarm: collections.OrderedDict[bytes, PeerEntry]) -> None:
        limit = self.clock.seconds() - 2 * self.interval
        for pid in [pid for pid, p in swarm.items() if p.seen < limit]:
            del swarm[pid]

    def announce(self, infoHash: bytes, peerId: bytes, ip: str, port: int, left: int, event: str,
                 numwant: int) -> tuple[list[PeerEntry], int, int]:
        """
        Record an announce; the peers to give back (not the announcer),
        and the swarm's seeders and leechers.
        """
        swarm = self.torrents.get(infoHash)
        if swarm is None:
            if event == "stopped":
                return [], 0, 0
            if len(self.torrents) >= self.maxTorrents:
                for h in list(self.torrents):
                    self.expire(self.torrents[h])
                    if not self.torrents[h]:
                        del self.torrents[h]
                if len(self.torrents) >= self.maxTorrents:
                    raise TrackerError(f"tracker full ({self.maxTorrents} torrents); try again later")
            swarm = self.torrents[infoHash] = collections.OrderedDict()
        self.expire(swarm)
        if event == "stopped":
            swarm.pop(peerId, None)
        else:
            if event == "completed" and peerId in swarm:
                self.downloaded[infoHash] = self.downloaded.get(infoHash, 0) + 1
            swarm.pop(peerId, None)
            swarm[peerId] = PeerEntry(ip, port, left, self.clock.seconds())
            while len(swarm) > self.maxPeers:
                swarm.popitem(last=False)
        others = [p for pid, p in swarm.items() if pid != peerId]
        chosen = random.sample(others, min(len(others), max(0, min(numwant, self.maxNumwant))))
        seeders = sum(1 for p in swarm.values() if p.left == 0)
        return chosen, seeders, len(swarm) - seeders

    def scrape(self, infoHash: bytes) -> dict[bytes, int]:
        swarm = self.torrents.get(infoHash, collections.OrderedDict())
        self.expire(swarm)
        seeders = sum(1 for p in swarm.values() if p.left == 0)
        return {b"complete": seeders, b"downloaded": self.downloaded.get(infoHash, 0),
                b"incomplete": len(swarm) - seeders}


def _args(request: Request) -> dict[bytes, list[bytes]]:
    return request.args or {}


def _one(request: Request, name: bytes, required: bool = True) -> bytes | None:
    values = _args(request).get(name)
    if not values:
        if required:
            raise TrackerError(f"missing {name.decode()}")
        return None
    return values[0]


def _int(request: Request, name: bytes, default: int | None = None, high: int = 1 << 62) -> int:
    raw = _one(request, name, default is None)
    if raw is None:
        assert default is not None
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TrackerError(f"{name.decode()}: not an integer") from None
    if not 0 <= value <= high:
        raise TrackerError(f"{name.decode()}: out of range")
    return value


class _Bencoded(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(self, swarms: Swarms) -> None:
        super().__init__()
        self.swarms = swarms

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"cache-control", b"no-cache")
        ip = request.getClientAddress().host  # type: ignore[attr-defined]
        try:
            if not self.swarms.allow(ip):
                raise TrackerError(f"too many requests from {ip}; at most {self.swarms.rate:g} a second")
            reply = self.answer(request, ip)
        except TrackerError as e:
            reply = {b"failure reason": str(e).encode("utf-8")}
        return bencode(reply)

    def answer(self, request: Request, ip: str) -> dict:
        raise NotImplementedError


class Announce(_Bencoded):
    """
    C{GET /announce?info_hash=...&peer_id=...&port=...&left=...}
    """

    def answer(self, request: Request, ip: str) -> dict:
        infoHash = _one(request, b"info_hash")
        peerId = _one(request, b"peer_id")
        assert infoHash is not None and peerId is not None
        if len(infoHash) != 20:
            raise TrackerError("info_hash: not 20 bytes")
        if len(peerId) != 20:
            raise TrackerError("peer_id: not 20 bytes")
        port = _int(request, b"port", high=65535)
        if port == 0:
            raise TrackerError("port: 0 is not a port")
        left = _int(request, b"left", 0)
        _int(request, b"uploaded", 0)
        _int(request, b"downloaded", 0)
        numwant = _int(request, b"numwant", 50, high=1 << 31)
        event = (_one(request, b"event", False) or b"").decode("ascii", "replace")
        if event not in ("", "started", "completed", "stopped", "paused"):
            raise TrackerError(f"event: {event!r} is not started, completed or stopped")
        host = ip
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            host = str(address.ipv4_mapped)
        peers, seeders, leechers = self.swarms.announce(infoHash, peerId, host, port, left, event, numwant)
        reply: dict[bytes, Any] = {
            b"interval": self.swarms.interval,
            b"min interval": max(1, self.swarms.interval // 2),
            b"complete": seeders,
            b"incomplete": leechers,
        }
        if _one(request, b"compact", False) == b"0":
            noPeerId = _one(request, b"no_peer_id", False) == b"1"
            reply[b"peers"] = [
                {b"ip": p.ip.encode(), b"port": p.port, **({} if noPeerId else {b"peer id": pid})}
                for p in peers
                for pid in [self._idOf(infoHash, p)]
            ]
        else:
            reply[b"peers"] = compactPeers(peers)
        return reply

    def _idOf(self, infoHash: bytes, entry: PeerEntry) -> bytes:
        for pid, p in self.swarms.torrents.get(infoHash, {}).items():
            if p is entry:
                return pid
        return b""


class Scrape(_Bencoded):
    """
    C{GET /scrape?info_hash=...} (repeatable, at most 100): counts per
    torrent.  Without info_hash, nothing (a whole-tracker listing is not
    offered).
    """

    def answer(self, request: Request, ip: str) -> dict:
        hashes = _args(request).get(b"info_hash", [])[:100]
        if not hashes:
            raise TrackerError("scrape needs info_hash (this tracker does not list every torrent)")
        if any(len(h) != 20 for h in hashes):
            raise TrackerError("info_hash: not 20 bytes")
        return {b"files": {h: self.swarms.scrape(h) for h in hashes}}


class TrackerRoot(Resource):
    """
    C{/announce} and C{/scrape}; anything else is twisted.web's 404.
    """

    def __init__(self, swarms: Swarms) -> None:
        super().__init__()
        self.swarms = swarms
        self.putChild(b"announce", Announce(swarms))
        self.putChild(b"scrape", Scrape(swarms))
