"""
The swarm's rules on a controlled swarm over real sockets on 127.0.0.1:
our peer (L{swarm.client.Peer}) against peers the test scripts on the wire
(handshake, bitfield, choke/unchoke, request/piece), so that what our peer
decides is seen only in what it sends.

 - Rarest-first: our leecher downloads from the one peer that unchokes it
   while three choked peers make some pieces commoner than others; once it
   has told that peer of RANDOM_FIRST pieces (HAVE), the pieces it asks
   for come rarest first.
 - Tit-for-tat: our seeder, its choker on a fake clock, serves seven
   scripted leechers; each 10 s round unchokes the 4 that took most in the
   round plus one optimistic pick that is kept for 30 s, as both its choke
   log and the choke/unchoke messages the leechers receive show.
"""

from __future__ import annotations

import os
import re

import pytest_twisted
from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from swarm import wire
from swarm.client import Peer
from swarm.torrent import RANDOM_FIRST, openTorrent
from tests.swarm_support import torrentFor, writeData

PIECES = 48


class Scripted(Protocol):
    """
    A peer played by the test: sends its handshake and bitfield, answers
    requests when told to serve, and records what our peer sends it.
    """

    def __init__(self, meta, data: bytes, bits: list[bool], serve: bool, name: bytes) -> None:
        self.meta, self.data, self.bits, self.serving = meta, data, bits, serve
        self.peerId = name.ljust(20, b"-")
        self.framer = wire.Framer(1 << 20)
        self.haves = 0
        #: (piece, HAVEs received before it) for each request, in order.
        self.requests: list[tuple[int, int]] = []
        self.interested = Deferred()
        self.choked = True
        self.received = 0

    @property
    def address(self) -> str:
        h = self.transport.getHost()
        return f"{h.host}:{h.port}"

    def connectionMade(self) -> None:
        self.transport.write(wire.handshake(self.meta.infoHash, self.peerId))
        if any(self.bits):
            self.transport.write(wire.bitfield(self.bits))

    def send(self, kind: int) -> None:
        self.transport.write(wire.encode(kind))

    def dataReceived(self, data: bytes) -> None:
        for m in self.framer.feed(data):
            if isinstance(m, wire.Handshake):
                continue
            if m.kind == wire.HAVE:
                self.haves += 1
            elif m.kind == wire.INTERESTED and not self.interested.called:
                self.interested.callback(None)
            elif m.kind == wire.CHOKE:
                self.choked = True
            elif m.kind == wire.UNCHOKE:
                self.choked = False
            elif m.kind == wire.PIECE:
                self.received += len(m.data)
            elif m.kind == wire.REQUEST:
                self.requests.append((m.index, self.haves))
                if self.serving:
                    at = m.index * self.meta.pieceLength + m.begin
                    self.transport.write(wire.piece(m.index, m.begin, self.data[at:at + m.length]))


class _ScriptedFactory(Factory):
    def __init__(self, made: list, *args) -> None:
        self.made, self.args = made, args

    def buildProtocol(self, addr):
        self.made.append(Scripted(*self.args))
        return self.made[-1]


def _rarity(index: int) -> int:
    """
    How many peers have piece C{index} in the rarest-first swarm: a third
    of the pieces 1, a third 2, a third 4, interleaved so that rarity and
    position disagree.
    """
    return (1, 2, 4)[index % 3]


async def _eventually(reactor, check, what: str, tries: int = 200) -> None:
    for _ in range(tries):
        if check():
            return
        await task.deferLater(reactor, 0.02)
    raise AssertionError(what)


@pytest_twisted.ensureDeferred
async def test_leecherAsksForRarestPiecesFirst(reactor, tmp_path):
    """After RANDOM_FIRST pieces, the pieces our leecher requests go from the rarest in the swarm to the commonest, never back."""
    path = str(tmp_path / "seed" / "r.bin")
    data = writeData(path, PIECES * wire.BLOCK)
    _, meta = torrentFor(path, None, pieceLength=wire.BLOCK)
    everything = [True] * PIECES
    # Three choked peers hold the commoner pieces; the serving peer has all.
    holders = [
        (everything, True, b"full"),
        ([_rarity(i) >= 2 for i in range(PIECES)], False, b"two"),
        ([_rarity(i) >= 4 for i in range(PIECES)], False, b"fourA"),
        ([_rarity(i) >= 4 for i in range(PIECES)], False, b"fourB"),
    ]
    scripted: list[Scripted] = []
    ports = []
    for bits, serve, name in holders:
        factory = _ScriptedFactory(scripted, meta, data, bits, serve, name)
        ports.append(await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory))
    leecher = Peer(reactor)
    try:
        await leecher.listen()
        torrent = await leecher.add(meta, str(tmp_path / "got" / "r.bin"), download=True, announce=False)
        torrent.addPeers([("127.0.0.1", p.getHost().port) for p in ports])
        await _eventually(reactor, lambda: len(scripted) == 4, "the leecher did not connect to all four")
        for s in scripted:
            await s.interested  # it has read every bitfield: availability is known
        full = next(s for s in scripted if s.serving)
        full.send(wire.UNCHOKE)
        await torrent.done
        assert (tmp_path / "got" / "r.bin").read_bytes() == data
        first: dict[int, int] = {}
        for index, haves in full.requests:
            first.setdefault(index, haves)
        assert sorted(first) == list(range(PIECES))
        ruled = [_rarity(i) for i, haves in first.items() if haves >= RANDOM_FIRST]
        assert len(ruled) >= PIECES - 2 * RANDOM_FIRST - 8, first
        assert ruled == sorted(ruled), ruled
        assert all(s.requests == [] for s in scripted if not s.serving)
    finally:
        await leecher.stop()
        for p in ports:
            await p.stopListening()
        for s in scripted:
            s.transport.loseConnection()


_ROUND = re.compile(
    r"round (\d+) \(seeding: by bytes they took\): unchoked (.*); optimistic (\S+) \((new pick, kept 30 s|since round \d+)\); choked (\d+)"
)


@pytest_twisted.ensureDeferred
async def test_seederChokerFourBestAndOptimisticEveryThirtySeconds(reactor, tmp_path):
    """Each 10 s round (fake clock) unchokes the 4 leechers that took most plus an optimistic one, redrawn every 30 s, in the log and on the wire."""
    path = str(tmp_path / "seed" / "c.bin")
    data = writeData(path, PIECES * wire.BLOCK)
    _, meta = torrentFor(path, None, pieceLength=wire.BLOCK)
    clock = task.Clock()
    seeder = Peer(reactor)
    leechers: list[Scripted] = []
    try:
        port = await seeder.listen()
        torrent = openTorrent(meta, path, clock, download=False)
        seeder.factory.torrents[meta.infoHash] = torrent
        seeder.torrents.append(torrent)
        torrent.start()
        for i in range(7):
            point = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            s = Scripted(meta, b"", [False] * PIECES, False, b"L%d" % i)
            await endpoints.connectProtocol(point, s)
            s.send(wire.INTERESTED)
            leechers.append(s)
        # Between rounds, interested peers are unchoked while a slot (of 4 + 1) is free.
        await _eventually(reactor, lambda: sum(not s.choked for s in leechers) == 5, "5 unchoked at once")
        wants = {s: 2 * (i + 1) for i, s in enumerate(leechers)}  # blocks each takes a round: all differ
        optimists = []
        for rnd in range(1, 5):
            took = {}
            for s in leechers:
                before = s.received
                if not s.choked:
                    for k in range(wants[s]):
                        s.transport.write(wire.request(wire.REQUEST, k, 0, wire.BLOCK))
                took[s] = (before, wants[s] * wire.BLOCK if not s.choked else 0)
            await _eventually(reactor, lambda: all(s.received == b + n for s, (b, n) in took.items()),
                              f"round {rnd}: requests not served")
            decided = len(torrent.choker.decisions)
            clock.advance(9.9)
            assert len(torrent.choker.decisions) == decided, "a round before 10 s"
            clock.advance(0.1)
            line = torrent.choker.decisions[-1]
            m = _ROUND.search(line)
            assert m and int(m.group(1)) == rnd, line
            drawn = rnd in (1, 4)  # every third 10 s round: 30 s
            kept = None if drawn else optimists[-1][0]
            best = sorted((s for s in leechers if s is not kept), key=lambda s: took[s][1], reverse=True)[:4]
            assert m.group(2) == ", ".join(f"{s.address} ({took[s][1]} B)" for s in best), line
            optimistic = next(s for s in leechers if s.address == m.group(3))
            assert optimistic not in best
            optimists.append((optimistic, m.group(4)))
            assert int(m.group(5)) == 2
            await _eventually(reactor, lambda: {s for s in leechers if not s.choked} == {*best, optimistic},
                              f"round {rnd}: the leechers' choke state differs from the log: {line}")
        (o1, w1), (o2, w2), (o3, w3), (o4, w4) = optimists
        assert (w1, w2, w3, w4) == ("new pick, kept 30 s", "since round 1", "since round 1", "new pick, kept 30 s")
        assert o1 is o2 is o3
    finally:
        for s in leechers:
            s.transport.loseConnection()
        await seeder.stop()
        torrent.stop()
