"""
A DHT node (BEP 5: Kademlia over UDP, KRPC messages in bencode): ping,
find_node, get_peers, announce_peer with tokens, a routing table of
k-buckets, and iterative lookups.

It bootstraps only from the nodes it is given (there is no built-in public
bootstrap): C{await node.bootstrap([("127.0.0.1", port)])}.

Bounds: datagrams over C{MAX_DATAGRAM} bytes are dropped; each bucket holds
C{K} nodes; at most C{MAX_HASHES} info hashes with C{MAX_PEERS_PER_HASH}
peers each are stored (oldest first out), peers expire after
C{PEER_TTL}; queries from one address are rate-limited; outstanding
queries time out.  A malformed query gets a KRPC error (203, "Protocol
Error", saying what was wrong); an unknown method gets 204.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from fastbencode import bdecode, bencode
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

K = 8
ALPHA = 3
MAX_DATAGRAM = 1500
MAX_HASHES = 1000
MAX_PEERS_PER_HASH = 100
PEER_TTL = 30 * 60.0
TOKEN_ROTATION = 5 * 60.0
QUERY_TIMEOUT = 2.0
#: Queries a second one address may send us (burst 4x).
QUERY_RATE = 20.0


def distance(a: bytes, b: bytes) -> int:
    """
    Kademlia's metric: the XOR of two 160-bit ids, as an integer.
    """
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def compactNode(nodeId: bytes, host: str, port: int) -> bytes:
    return nodeId + socket.inet_aton(host) + struct.pack(">H", port)


def parseNodes(data: bytes) -> list[tuple[bytes, str, int]]:
    """
    C{(id, host, port)} of a compact node list (26 bytes a node).
    """
    return [
        (data[i:i + 20], socket.inet_ntoa(data[i + 20:i + 24]), struct.unpack(">H", data[i + 24:i + 26])[0])
        for i in range(0, len(data) - len(data) % 26, 26)
    ]


def compactPeer(host: str, port: int) -> bytes:
    return socket.inet_aton(host) + struct.pack(">H", port)


class KRPCError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


@dataclass
class Contact:
    nodeId: bytes
    host: str
    port: int
    seen: float
    failures: int = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


class RoutingTable:
    """
    160 buckets by the length of the common prefix with our id; each keeps
    at most C{K} contacts, least recently seen first.  A full bucket takes
    a newcomer only in place of a contact that has failed to answer.
    """

    def __init__(self, ownId: bytes) -> None:
        self.ownId = ownId
        self.buckets: list[collections.OrderedDict[bytes, Contact]] = [collections.OrderedDict() for _ in range(161)]

    def _bucket(self, nodeId: bytes) -> collections.OrderedDict[bytes, Contact]:
        return self.buckets[distance(self.ownId, nodeId).bit_length()]

    def add(self, contact: Contact) -> bool:
        if contact.nodeId == self.ownId:
            return False
        bucket = self._bucket(contact.nodeId)
        if contact.nodeId in bucket:
            old = bucket.pop(contact.nodeId)
            old.host, old.port, old.seen, old.failures = contact.host, contact.port, contact.seen, 0
            bucket[contact.nodeId] = old
            return True
        if len(bucket) >= K:
            stale = next((c for c in bucket.values() if c.failures >= 2), None)
            if stale is None:
                return False
            del bucket[stale.nodeId]
        bucket[contact.nodeId] = contact
        return True

    def failed(self, nodeId: bytes) -> None:
        contact = self._bucket(nodeId).get(nodeId)
        if contact is not None:
            contact.failures += 1

    def closest(self, target: bytes, count: int = K) -> list[Contact]:
        everyone = [c for b in self.buckets for c in b.values() if c.failures < 2]
        return sorted(everyone, key=lambda c: distance(c.nodeId, target))[:count]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)


@dataclass
class LookupResult:
    """
    What an iterative lookup found: the closest nodes that answered (with
    the token each gave, for get_peers), peers, and how many queries it
    sent and answers it got.
    """

    closest: list[tuple[Contact, bytes]] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)
    queries: int = 0
    rounds: int = 0


class DHTNode(DatagramProtocol):
    """
    One DHT node on a UDP port.
    """

    _log = Logger()

    def __init__(self, clock: Any, nodeId: bytes | None = None) -> None:
        self.clock = clock
        self.nodeId = nodeId or os.urandom(20)
        self.table = RoutingTable(self.nodeId)
        self.peers: collections.OrderedDict[bytes, collections.OrderedDict[tuple[str, int], float]] = (
            collections.OrderedDict()
        )
        self._secrets = [os.urandom(16), os.urandom(16)]
        self._pending: dict[bytes, tuple[Deferred[dict], Any, bytes | None]] = {}
        self._next = 0
        self._rates: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._rotation: Any = None
        self.queriesReceived = 0

    # -- lifecycle ----------------------------------------------------------

    def startProtocol(self) -> None:
        self._rotation = self.clock.callLater(TOKEN_ROTATION, self._rotate)

    def stopProtocol(self) -> None:
        if self._rotation is not None and self._rotation.active():
            self._rotation.cancel()
        for d, call, _ in list(self._pending.values()):
            if call.active():
                call.cancel()
        self._pending.clear()

    def _rotate(self) -> None:
        self._secrets = [os.urandom(16), self._secrets[0]]
        self._rotation = self.clock.callLater(TOKEN_ROTATION, self._rotate)

    def token(self, host: str, secret: bytes | None = None) -> bytes:
        """
        The token for C{host}: an HMAC of its address under a secret that
        changes every 5 minutes (the previous one is still accepted).
        """
        return hmac.new(secret or self._secrets[0], socket.inet_aton(host), hashlib.sha1).digest()[:8]

    def validToken(self, host: str, token: bytes) -> bool:
        return any(hmac.compare_digest(self.token(host, s), token) for s in self._secrets)

    # -- receiving ------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        try:
            msg = bdecode(data)
        except Exception:
            self._error(addr, b"", 203, "Protocol Error: not bencode")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get(b"t"), bytes):
            self._error(addr, b"", 203, "Protocol Error: not a dictionary with a transaction id")
            return
        kind = msg.get(b"y")
        if kind == b"q":
            if not self._allow(addr[0]):
                return  # no answer: answering a flood is what a flood wants
            try:
                reply = self.handleQuery(msg, addr)
            except KRPCError as e:
                self._error(addr, msg[b"t"], e.code, e.message)
                return
            self.transport.write(bencode({b"t": msg[b"t"], b"y": b"r", b"r": reply}), addr)  # type: ignore[union-attr]
        elif kind in (b"r", b"e"):
            pending = self._pending.pop(msg[b"t"], None)
            if pending is None:
                return
            d, call, expected = pending
            if call.active():
                call.cancel()
            if kind == b"e":
                err = msg.get(b"e")
                code, text = (err[0], err[1]) if isinstance(err, list) and len(err) == 2 else (201, b"?")
                d.errback(KRPCError(code if isinstance(code, int) else 201,
                                    text.decode("utf-8", "replace") if isinstance(text, bytes) else "?"))
                return
            r = msg.get(b"r")
            if not isinstance(r, dict) or not isinstance(r.get(b"id"), bytes) or len(r[b"id"]) != 20:
                d.errback(KRPCError(203, "reply without a node id"))
                return
            self.table.add(Contact(r[b"id"], addr[0], addr[1], self.clock.seconds()))
            d.callback(r)

    def _allow(self, host: str) -> bool:
        now = self.clock.seconds()
        tokens, last = self._rates.pop(host, (QUERY_RATE * 4, now))
        tokens = min(QUERY_RATE * 4, tokens + (now - last) * QUERY_RATE)
        ok = tokens >= 1
        self._rates[host] = (tokens - 1 if ok else tokens, now)
        while len(self._rates) > 10_000:
            self._rates.popitem(last=False)
        return ok

    def _error(self, addr: tuple[str, int], t: bytes, code: int, text: str) -> None:
        self.transport.write(bencode({b"t": t, b"y": b"e", b"e": [code, text.encode()]}), addr)  # type: ignore[union-attr]

    def handleQuery(self, msg: dict, addr: tuple[str, int]) -> dict:
        """
        The reply to a query, or L{KRPCError}.
        """
        self.queriesReceived += 1
        method, args = msg.get(b"q"), msg.get(b"a")
        if not isinstance(args, dict) or not isinstance(args.get(b"id"), bytes) or len(args[b"id"]) != 20:
            raise KRPCError(203, "Protocol Error: a needs a 20-byte id")
        host, port = addr
        self.table.add(Contact(args[b"id"], host, port, self.clock.seconds()))
        if method == b"ping":
            return {b"id": self.nodeId}
        if method == b"find_node":
            target = self._hash(args, b"target")
            return {b"id": self.nodeId, b"nodes": self._nodes(target)}
        if method == b"get_peers":
            infoHash = self._hash(args, b"info_hash")
            reply: dict[bytes, Any] = {b"id": self.nodeId, b"token": self.token(host)}
            stored = self._livePeers(infoHash)
            if stored:
                reply[b"values"] = [compactPeer(h, p) for h, p in stored[:50]]
            else:
                reply[b"nodes"] = self._nodes(infoHash)
            return reply
        if method == b"announce_peer":
            infoHash = self._hash(args, b"info_hash")
            token = args.get(b"token")
            if not isinstance(token, bytes) or not self.validToken(host, token):
                raise KRPCError(203, "Protocol Error: bad token (get_peers first)")
            peerPort = port if args.get(b"implied_port") == 1 else args.get(b"port")
            if not isinstance(peerPort, int) or not 0 < peerPort < 65536:
                raise KRPCError(203, "Protocol Error: port missing or out of range")
            self.store(infoHash, host, peerPort)
            return {b"id": self.nodeId}
        raise KRPCError(204, "Method Unknown")

    @staticmethod
    def _hash(args: dict, key: bytes) -> bytes:
        value = args.get(key)
        if not isinstance(value, bytes) or len(value) != 20:
            raise KRPCError(203, f"Protocol Error: {key.decode()} must be 20 bytes")
        return value

    def _nodes(self, target: bytes) -> bytes:
        return b"".join(compactNode(c.nodeId, c.host, c.port) for c in self.table.closest(target))

    def store(self, infoHash: bytes, host: str, port: int) -> None:
        peers = self.peers.pop(infoHash, None)
        if peers is None:
            peers = collections.OrderedDict()
            while len(self.peers) >= MAX_HASHES:
                self.peers.popitem(last=False)
        self.peers[infoHash] = peers
        peers.pop((host, port), None)
        peers[(host, port)] = self.clock.seconds()
        while len(peers) > MAX_PEERS_PER_HASH:
            peers.popitem(last=False)

    def _livePeers(self, infoHash: bytes) -> list[tuple[str, int]]:
        peers = self.peers.get(infoHash)
        if not peers:
            return []
        limit = self.clock.seconds() - PEER_TTL
        for addr in [a for a, t in peers.items() if t < limit]:
            del peers[addr]
        return list(peers)

    # -- querying -------------------------------------------------------------

    def query(self, addr: tuple[str, int], method: bytes, args: dict, nodeId: bytes | None = None) -> Deferred[dict]:
        """
        Send a query; fires with the reply's C{r} dictionary, or fails
        (timeout after C{QUERY_TIMEOUT} s, or the KRPC error).
        """
        self._next = (self._next + 1) % 65536
        t = struct.pack(">H", self._next)
        d: Deferred[dict] = Deferred()
        call = self.clock.callLater(QUERY_TIMEOUT, self._timeout, t, nodeId)
        self._pending[t] = (d, call, nodeId)
        message = {b"t": t, b"y": b"q", b"q": method, b"a": {b"id": self.nodeId, **args}}
        self.transport.write(bencode(message), addr)  # type: ignore[union-attr]
        return d

    def _timeout(self, t: bytes, nodeId: bytes | None) -> None:
        pending = self._pending.pop(t, None)
        if pending is not None:
            if nodeId is not None:
                self.table.failed(nodeId)
            pending[0].errback(KRPCError(0, "timed out"))

    async def bootstrap(self, addresses: list[tuple[str, int]]) -> int:
        """
        Learn the network from C{addresses} (ours to give: there is no
        public default): ask each for nodes near our own id, then look our
        id up.  The size of the routing table.
        """
        for addr in addresses:
            try:
                r = await self.query(addr, b"find_node", {b"target": self.nodeId})
                for nodeId, host, port in parseNodes(r.get(b"nodes", b"")):
                    self.table.add(Contact(nodeId, host, port, self.clock.seconds()))
            except KRPCError as why:
                self._log.info("bootstrap node {addr} did not answer: {why}", addr=addr, why=why)
        await self.lookup(self.nodeId, b"find_node")
        return len(self.table)

    async def lookup(self, target: bytes, method: bytes) -> LookupResult:
        """
        Kademlia's iterative lookup: ask the C{ALPHA} closest not yet asked,
        add the nodes they name, until the C{K} closest known have all
        answered.  C{method} is find_node or get_peers (which also
        collects peers and tokens).
        """
        key = b"target" if method == b"find_node" else b"info_hash"
        result = LookupResult()
        known: dict[bytes, Contact] = {c.nodeId: c for c in self.table.closest(target, K * 2)}
        asked: set[bytes] = set()
        answered: dict[bytes, bytes] = {}
        while True:
            ranked = sorted(known.values(), key=lambda c: distance(c.nodeId, target))
            best = ranked[:K]
            batch = [c for c in best if c.nodeId not in asked][:ALPHA]
            if not batch:
                break
            result.rounds += 1
            asked.update(c.nodeId for c in batch)
            result.queries += len(batch)
            replies = await DeferredList(
                [self.query(c.address, method, {key: target}, c.nodeId) for c in batch], consumeErrors=True
            )
            for contact, (ok, r) in zip(batch, replies):
                if not ok:
                    continue
                answered[contact.nodeId] = r.get(b"token", b"") if isinstance(r.get(b"token"), bytes) else b""
                nodes = r.get(b"nodes")
                if isinstance(nodes, bytes):
                    for nodeId, host, port in parseNodes(nodes)[: K * 2]:
                        if nodeId != self.nodeId and nodeId not in known:
                            known[nodeId] = Contact(nodeId, host, port, self.clock.seconds())
                values = r.get(b"values")
                if isinstance(values, list):
                    for v in values[:100]:
                        if isinstance(v, bytes) and len(v) == 6:
                            result.peers.add((socket.inet_ntoa(v[:4]), struct.unpack(">H", v[4:])[0]))
        ranked = sorted((known[n] for n in answered), key=lambda c: distance(c.nodeId, target))
        result.closest = [(c, answered[c.nodeId]) for c in ranked[:K]]
        return result

    async def getPeers(self, infoHash: bytes) -> LookupResult:
        return await self.lookup(infoHash, b"get_peers")

    async def announce(self, infoHash: bytes, port: int) -> LookupResult:
        """
        Find the C{K} nodes closest to C{infoHash} and announce to each
        that gave a token that we serve it on C{port}.
        """
        result = await self.getPeers(infoHash)
        # Kept here too: in a network of few nodes this one is among the
        # closest, and a node that has just bootstrapped from it asks it.
        host = getattr(self.transport.getHost(), "host", "") if self.transport is not None else ""
        if host and host not in ("0.0.0.0", "::", ""):
            self.store(infoHash, host, port)
        await DeferredList(
            [
                self.query(c.address, b"announce_peer", {b"info_hash": infoHash, b"port": port, b"token": token}, c.nodeId)
                for c, token in result.closest
                if token
            ],
            consumeErrors=True,
        )
        return result
