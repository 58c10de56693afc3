"""
The swarm's rules on a controlled swarm with a fake clock and fake peers:
rarest-first after random first pieces, tit-for-tat unchoking (4 slots,
10 s rounds, an optimistic unchoke every 30 s), and the storage interface.
"""

from __future__ import annotations

import hashlib

from twisted.internet import task
from zope.interface.verify import verifyObject

from swarm.interfaces import IPieceStorage
from swarm.metainfo import Metainfo, FileEntry
from swarm.storage import Storage
from swarm.torrent import RANDOM_FIRST, Torrent


class FakePeer:
    def __init__(self, name, bits):
        self.address = name
        self.host = "127.0.0.1"
        self.peerId = name.encode()
        self.bits = bits
        self.torrent = object()
        self.amChoking = True
        self.amInterested = False
        self.peerInterested = True
        self.peerChoking = True
        self.closed = False
        self.downloadedBytes = 0
        self.uploadedBytes = 0
        self.outstanding = {}

    def setChoking(self, choking):
        self.amChoking = choking

    def setInterested(self, interested):
        self.amInterested = interested


def _meta(pieces=10):
    return Metainfo(None, "f", 1 << 14, tuple(hashlib.sha1(b"%d" % i).digest() for i in range(pieces)),
                    (FileEntry((), pieces << 14, 0),), True, bytes(20))


def _torrent(have, clock=None):
    meta = _meta(len(have))
    return Torrent(meta, Storage(meta, "/nonexistent", False), have, clock or task.Clock())


def test_rarestFirstAfterRandomStart():
    """Once RANDOM_FIRST pieces are in, the piece fewest peers have is picked, whatever its position."""
    have = [True] * RANDOM_FIRST + [False] * 6
    t = _torrent(have)
    peer = FakePeer("a", [True] * 10)
    t.availability = [9] * RANDOM_FIRST + [5, 4, 6, 1, 3, 2]
    assert t.pick(peer) == RANDOM_FIRST + 3
    peer.bits[RANDOM_FIRST + 3] = False
    assert t.pick(peer) == RANDOM_FIRST + 5


def test_randomFirstPiecesIgnoreRarity():
    """Before RANDOM_FIRST pieces are in, picks are spread at random rather than always the rarest."""
    t = _torrent([False] * 10)
    t.availability = [1] + [5] * 9
    picks = {t.pick(FakePeer("a", [True] * 10)) for _ in range(200)}
    assert len(picks) > 3


def test_endgameAsksSecondPeerForOutstandingBlocks():
    """When every missing block is already asked of someone, the next peer is asked for them too."""
    t = _torrent([True] * 9 + [False])
    first, second = FakePeer("a", [True] * 10), FakePeer("b", [True] * 10)
    assert t.nextBlock(first) == (9, 0, 1 << 14)
    assert t.nextBlock(first) is None
    assert t.nextBlock(second) == (9, 0, 1 << 14)


def test_titForTatFourSlotsAndOptimisticUnchoke():
    """Each 10 s round unchokes the 4 peers that gave most plus one optimistic pick, kept for 30 s then redrawn."""
    clock = task.Clock()
    t = _torrent([False] * 10, clock)
    peers = [FakePeer(f"p{i}", [True] * 10) for i in range(8)]
    t.peers = set(peers)
    t.start()
    optimists = []
    for rnd in range(6):
        for i, p in enumerate(peers):
            p.downloadedBytes = (i + 1) * 1000  # p7 gives most
        clock.advance(10)
        unchoked = {p.address for p in peers if not p.amChoking}
        assert {"p7", "p6", "p5", "p4"} <= unchoked and len(unchoked) == 5
        optimists.append(t.choker.optimistic.address)
        assert optimists[-1] in {"p0", "p1", "p2", "p3"}
    assert optimists[0] == optimists[1] == optimists[2] and optimists[3] == optimists[4] == optimists[5]
    assert "round 6 (by bytes they gave): unchoked p7 (8000 B), p6 (7000 B)" in t.choker.decisions[-1]


def test_seedingRanksByBytesTaken():
    """A seeder (nothing to download) ranks peers by what they took from it."""
    clock = task.Clock()
    t = _torrent([True] * 10, clock)
    peers = [FakePeer(f"p{i}", [False] * 10) for i in range(6)]
    t.peers = set(peers)
    t.start()
    for i, p in enumerate(peers):
        p.uploadedBytes = (6 - i) * 1000  # p0 took most
    clock.advance(10)
    assert {"p0", "p1", "p2", "p3"} <= {p.address for p in peers if not p.amChoking}


def test_uninterestedPeersStayChoked():
    """Peers that are not interested are never unchoked by a round."""
    clock = task.Clock()
    t = _torrent([False] * 10, clock)
    peers = [FakePeer(f"p{i}", [True] * 10) for i in range(3)]
    peers[0].peerInterested = False
    t.peers = set(peers)
    t.start()
    clock.advance(10)
    assert peers[0].amChoking and not peers[1].amChoking


def test_storageProvidesInterface(tmp_path):
    """Storage implements every method IPieceStorage declares."""
    assert verifyObject(IPieceStorage, Storage(_meta(), str(tmp_path / "x"), True))
