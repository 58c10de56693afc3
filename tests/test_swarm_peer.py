"""
Our peers with each other over real sockets on 127.0.0.1: downloads
through the tracker, resume, and peers that lie, flood or never read.
"""

from __future__ import annotations

import os
import struct

import pytest_twisted
from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory, Protocol

from swarm import wire
from swarm.client import Peer
from swarm.protocol import MAX_QUEUE
from tests.swarm_support import startTracker, torrentFor, writeData


async def _until(reactor, predicate, timeout=20.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05)
    raise AssertionError("condition not reached in time")


@pytest_twisted.ensureDeferred
async def test_downloadThroughTrackerFromTwoSeeders(reactor, tmp_path):
    """A directory torrent downloads through the tracker from two seeders; the result is byte-identical and .part is gone."""
    url, tport, _ = await startTracker(reactor)
    root = tmp_path / "seed" / "album"
    a = writeData(str(root / "one.bin"), 700_000, 1)
    b = writeData(str(root / "deep" / "two.bin"), 900_001, 2)
    _, meta = torrentFor(str(root), url)
    seeders, getter = [Peer(reactor), Peer(reactor)], Peer(reactor)
    try:
        for s in seeders:
            await s.listen()
            await s.add(meta, str(root), download=False)
        await getter.listen()
        torrent = await getter.add(meta, str(tmp_path / "out" / "album"), download=True)
        path = await torrent.done
        assert path == str(tmp_path / "out" / "album")
        assert (tmp_path / "out" / "album" / "one.bin").read_bytes() == a
        assert (tmp_path / "out" / "album" / "deep" / "two.bin").read_bytes() == b
        assert not (tmp_path / "out" / "album.part").exists()
        assert torrent.hashFailures == 0 and torrent.downloaded == meta.length
    finally:
        for p in (getter, *seeders):
            await p.stop()
        await tport.stopListening()


@pytest_twisted.ensureDeferred
async def test_resumeKeepsVerifiedPieces(reactor, tmp_path):
    """A .part holding half the pieces (and a corrupted one) is re-verified: only the missing and bad pieces are fetched."""
    data = writeData(str(tmp_path / "f.bin"), 1 << 20)
    _, meta = torrentFor(str(tmp_path / "f.bin"), None)
    part = bytearray(data[: 1 << 19]) + bytes(1 << 19)
    part[100] ^= 0xFF  # piece 0 is now bad
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "f.bin.part").write_bytes(part)
    seeder, getter = Peer(reactor), Peer(reactor)
    try:
        port = await seeder.listen()
        await seeder.add(meta, str(tmp_path / "f.bin"), download=False, announce=False)
        await getter.listen()
        torrent = await getter.add(meta, str(tmp_path / "out" / "f.bin"), download=True, announce=False)
        assert torrent.have.count(True) == 7  # pieces 1..7 of 16
        torrent.addPeers([("127.0.0.1", port)])
        await torrent.done
        assert (tmp_path / "out" / "f.bin").read_bytes() == data
        assert torrent.downloaded == 9 * (1 << 16)
    finally:
        await getter.stop()
        await seeder.stop()


@pytest_twisted.ensureDeferred
async def test_lyingPeerIsBannedAndItsPiecesRefetched(reactor, tmp_path):
    """Blocks that fail the SHA-1 check are discarded, the sender banned and cut off, and the file completes from an honest seeder."""
    data = writeData(str(tmp_path / "good" / "f.bin"), 1 << 19)
    _, meta = torrentFor(str(tmp_path / "good" / "f.bin"), None)
    writeData(str(tmp_path / "bad" / "f.bin"), 1 << 19, seed=99)
    liar, honest, getter = Peer(reactor), Peer(reactor), Peer(reactor)
    try:
        liarPort = await liar.listen()
        lt = await liar.add(meta, str(tmp_path / "bad" / "f.bin"), download=False, announce=False)
        lt.have[:] = [True] * meta.numPieces  # claims every piece it does not have
        honestPort = await honest.listen()
        await honest.add(meta, str(tmp_path / "good" / "f.bin"), download=False, announce=False)
        await getter.listen()
        torrent = await getter.add(meta, str(tmp_path / "out" / "f.bin"), download=True, announce=False)
        torrent.addPeers([("127.0.0.1", liarPort)])
        await _until(reactor, lambda: torrent.hashFailures >= 1 and not torrent.peers)
        assert len(torrent.banned) == 1 and ("127.0.0.1", liarPort) in torrent.bannedAddresses
        torrent.addPeers([("127.0.0.1", liarPort), ("127.0.0.1", honestPort)])
        await torrent.done
        assert (tmp_path / "out" / "f.bin").read_bytes() == data
        assert lt.uploaded > 0 and not lt.peers
    finally:
        for p in (getter, honest, liar):
            await p.stop()


class _Raw(Protocol):
    """
    A hand-written hostile peer: it sends what the test says and counts
    what it gets, reading nothing once told not to.
    """

    def __init__(self):
        self.received = bytearray()
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=None):
        self.closed.callback(None)


async def _rawPeer(reactor, port, meta):
    proto = _Raw()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoints.connectProtocol(endpoint, proto)
    proto.transport.write(wire.handshake(meta.infoHash, b"-EV0000-" + bytes(12)))
    return proto


async def _seeder(reactor, tmp_path, size=1 << 20):
    writeData(str(tmp_path / "f.bin"), size)
    _, meta = torrentFor(str(tmp_path / "f.bin"), None)
    seeder = Peer(reactor)
    port = await seeder.listen()
    torrent = await seeder.add(meta, str(tmp_path / "f.bin"), download=False, announce=False)
    return seeder, port, meta, torrent


@pytest_twisted.ensureDeferred
async def test_oversizedLengthPrefixClosesConnection(reactor, tmp_path):
    """A length prefix of 4 GB is refused from its four bytes: the seeder closes the connection, nothing allocated."""
    seeder, port, meta, torrent = await _seeder(reactor, tmp_path)
    try:
        raw = await _rawPeer(reactor, port, meta)
        await _until(reactor, lambda: len(raw.received) >= 68)
        assert raw.received.startswith(wire.handshake(meta.infoHash, torrent.peerId))
        raw.transport.write(struct.pack(">I", 0xFFFFFFF0))
        await raw.closed
        assert not torrent.peers
    finally:
        await seeder.stop()


@pytest_twisted.ensureDeferred
async def test_requestBeyondPieceClosesConnection(reactor, tmp_path):
    """A request past the end of its piece (or an unknown piece) closes the connection without sending data."""
    seeder, port, meta, torrent = await _seeder(reactor, tmp_path)
    try:
        for request in ((0, meta.pieceLength - 10, 16384), (meta.numPieces, 0, 16384), (0, 0, wire.MAX_REQUEST + 1)):
            raw = await _rawPeer(reactor, port, meta)
            raw.transport.write(wire.encode(wire.INTERESTED))
            await _until(reactor, lambda: wire.encode(wire.UNCHOKE) in raw.received)
            raw.transport.write(wire.request(wire.REQUEST, *request))
            await raw.closed
            assert struct.pack(">B", wire.PIECE) not in raw.received[68:].split(wire.encode(wire.UNCHOKE))[-1]
    finally:
        await seeder.stop()


@pytest_twisted.ensureDeferred
async def test_peerThatNeverReadsIsBounded(reactor, tmp_path):
    """A peer that floods requests and reads nothing gets at most one block past the transport's buffer, then is cut off at the queue limit."""
    seeder, port, meta, torrent = await _seeder(reactor, tmp_path)
    try:
        raw = await _rawPeer(reactor, port, meta)
        raw.transport.write(wire.encode(wire.INTERESTED))
        await _until(reactor, lambda: wire.encode(wire.UNCHOKE) in raw.received)
        raw.transport.pauseProducing()  # read nothing more
        (server,) = torrent.peers
        request = wire.request(wire.REQUEST, 0, 0, 16384)
        for _ in range(200):
            if server.closed:
                break
            raw.transport.write(request * 50)
            await task.deferLater(reactor, 0.02)
        await _until(reactor, lambda: server.closed)
        assert server.peakSentWhilePaused <= 16384 + 13
        assert server.paused and len(server.queue) == MAX_QUEUE  # queued only while the transport was full
        raw.transport.abortConnection()
    finally:
        await seeder.stop()
