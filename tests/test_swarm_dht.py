"""
The DHT (BEP 5) between our own nodes on 127.0.0.1 UDP, bootstrapped only
from a node the test started: lookups find the truly closest nodes,
announce_peer needs the token get_peers gave, malformed queries get KRPC
errors, and a download finds its seeder through the DHT alone.
"""

from __future__ import annotations

import os
import random

import pytest_twisted
from fastbencode import bdecode, bencode
from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol

from swarm.client import Peer
from swarm.dht import K, Contact, DHTNode, KRPCError, RoutingTable, distance
from tests.swarm_support import torrentFor, writeData


async def _network(reactor, n):
    nodes, ports = [], []
    for i in range(n):
        node = DHTNode(reactor)
        ports.append(reactor.listenUDP(0, node, interface="127.0.0.1"))
        nodes.append(node)
    first = ("127.0.0.1", ports[0].getHost().port)
    for node in nodes[1:]:
        await node.bootstrap([first])
    return nodes, ports


async def _close(ports):
    for p in ports:
        await p.stopListening()


@pytest_twisted.ensureDeferred
async def test_lookupFindsTheClosestNodesAskingFew(reactor):
    """In 32 nodes, a find_node lookup returns exactly the K nodes closest by XOR, asking fewer nodes than there are."""
    nodes, ports = await _network(reactor, 32)
    try:
        rng = random.Random(7)
        for _ in range(5):
            target = rng.randbytes(20)
            asker = rng.choice(nodes)
            result = await asker.lookup(target, b"find_node")
            truth = sorted((n for n in nodes if n is not asker), key=lambda n: distance(n.nodeId, target))[:K]
            assert [c.nodeId for c, _ in result.closest] == [n.nodeId for n in truth]
            assert result.queries < len(nodes) - 1, result.queries
    finally:
        await _close(ports)


@pytest_twisted.ensureDeferred
async def test_announceThenGetPeers(reactor):
    """A peer announced by one node is returned by get_peers from another, and stored only on nodes near the info hash."""
    nodes, ports = await _network(reactor, 16)
    try:
        infoHash = os.urandom(20)
        await nodes[3].announce(infoHash, 6881)
        found = await nodes[11].getPeers(infoHash)
        assert ("127.0.0.1", 6881) in found.peers
        holders = [n for n in nodes if n.peers.get(infoHash)]
        closest = sorted(nodes, key=lambda n: distance(n.nodeId, infoHash))[: K + 1]
        assert holders and all(h in closest for h in holders)
    finally:
        await _close(ports)


@pytest_twisted.ensureDeferred
async def test_badTokenAndMalformedQueriesGetErrors(reactor):
    """announce_peer with a forged token, a non-bencode datagram, a query without id and an unknown method get KRPC errors that say why."""
    nodes, ports = await _network(reactor, 2)
    addr = ("127.0.0.1", ports[0].getHost().port)
    try:
        bad = await defer.maybeDeferred(
            nodes[1].query, addr, b"announce_peer", {b"info_hash": bytes(20), b"port": 1, b"token": b"forged!!"}
        ).addErrback(lambda f: f.value)
        assert isinstance(bad, KRPCError) and bad.code == 203 and "bad token" in bad.message
        unknown = await nodes[1].query(addr, b"vote", {}).addErrback(lambda f: f.value)
        assert isinstance(unknown, KRPCError) and unknown.code == 204

        replies: list = []

        class Raw(DatagramProtocol):
            def datagramReceived(self, data, a):
                replies.append(bdecode(data))

        raw = reactor.listenUDP(0, Raw(), interface="127.0.0.1")
        raw.write(b"not bencode", addr)
        raw.write(bencode({b"t": b"aa", b"y": b"q", b"q": b"ping", b"a": {}}), addr)
        raw.write(b"d1:t2:bb1:y1:q1:q4:ping1:ad2:id20:" + bytes(20) + b"e" + b"x" * 2000 + b"e", addr)
        for _ in range(100):
            if len(replies) >= 2:
                break
            await task.deferLater(reactor, 0.02)
        await task.deferLater(reactor, 0.1)
        await raw.stopListening()
        assert [r[b"y"] for r in replies] == [b"e", b"e"]  # the oversized datagram is dropped
        assert b"not bencode" in replies[0][b"e"][1] and b"20-byte id" in replies[1][b"e"][1]
    finally:
        await _close(ports)


def test_routingTableBucketsHoldKAndReplaceOnlyFailedNodes():
    """A full bucket refuses a newcomer unless one of its contacts has failed twice."""
    own = bytes(20)
    table = RoutingTable(own)
    far = [bytes([0x80 | i]) + bytes(19) for i in range(K + 1)]  # all in the top bucket
    for i, nodeId in enumerate(far[:K]):
        assert table.add(Contact(nodeId, "127.0.0.1", 1000 + i, 0))
    assert not table.add(Contact(far[K], "127.0.0.1", 2000, 0))
    table.failed(far[2])
    table.failed(far[2])
    assert table.add(Contact(far[K], "127.0.0.1", 2000, 0))
    assert far[2] not in {c.nodeId for c in table.closest(far[2], 20)}


@pytest_twisted.ensureDeferred
async def test_downloadFindsSeederThroughDHTAlone(reactor, tmp_path):
    """With no tracker in the .torrent, a downloader finds the seeder through the DHT and gets the file intact."""
    nodes, ports = await _network(reactor, 8)
    data = writeData(str(tmp_path / "f.bin"), 600_000)
    _, meta = torrentFor(str(tmp_path / "f.bin"), None)
    assert meta.announce is None
    seeder, getter = Peer(reactor, dht=nodes[2]), Peer(reactor, dht=nodes[6])
    try:
        await seeder.listen()
        await seeder.add(meta, str(tmp_path / "f.bin"), download=False)
        await seeder.dhtAnnouncers[0].firstRound
        await getter.listen()
        torrent = await getter.add(meta, str(tmp_path / "out" / "f.bin"), download=True)
        await torrent.done
        assert (tmp_path / "out" / "f.bin").read_bytes() == data
    finally:
        await getter.stop()
        await seeder.stop()
        await _close(ports)
