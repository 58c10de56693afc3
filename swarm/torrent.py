"""
One torrent being seeded or downloaded: which pieces we have, which blocks
are on their way from whom, the piece picker and the choker.

Picking (seed 002's "request rarest chunks first"): the first
C{RANDOM_FIRST} pieces are picked at random among those a peer has (a
newcomer needs something to trade soon, and the rarest may be slow to
come); after that the piece fewest connected peers have, ties broken at
random.  Blocks of pieces already started are asked for first, so few
pieces are ever half-done.  Endgame: once every missing block has been
asked for, the ones still out are asked of other peers too, and cancelled
where they were not needed.

Every completed piece is hashed (SHA-1) before it is announced or served.
A piece that fails is thrown away and re-downloaded; each peer that sent
part of it gets a strike, and a peer that sent all of it alone, or has
C{MAX_STRIKES}, is disconnected and refused for the rest of the run: its
peer id and the address it listens on.  (Not its whole IP address: peers
behind one NAT, or on one test machine, share it.)

Choking (seed 003's tit-for-tat) is L{Choker}'s.
"""

from __future__ import annotations

import os
import random
import secrets
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from swarm import wire
from swarm.metainfo import Metainfo
from swarm.ratelimit import RateLimit
from swarm.storage import Storage

RANDOM_FIRST = 4
MAX_STRIKES = 2
MAX_PEERS = 50
#: Pieces started and not finished, at most this many plus one per peer.
MAX_ACTIVE = 8
#: Peer addresses whose bytes a download counts (L{Torrent.sources}).
MAX_SOURCES = 1000


def newPeerId() -> bytes:
    """
    An Azureus-style peer id: C{-CN0100-} and 12 random bytes.
    """
    return b"-CN0100-" + secrets.token_bytes(12)


class PieceState:
    """
    A piece being downloaded: its blocks, which have arrived (written to
    storage, not kept in memory), which are asked for and from whom.
    """

    def __init__(self, index: int, size: int) -> None:
        self.index = index
        self.blocks = [(b, min(wire.BLOCK, size - b)) for b in range(0, size, wire.BLOCK)] or [(0, 0)]
        #: Blocks asked of nobody (and not received), next first.
        self.pending = list(reversed(self.blocks))
        self.received: set[int] = set()
        self.requested: dict[int, set[Any]] = {}
        self.senders: set[Any] = set()

    def complete(self) -> bool:
        return len(self.received) == len(self.blocks)


class Choker:
    """
    Tit-for-tat as seed 003 says: every C{interval} seconds the
    C{slots} interested peers that gave us the most (while downloading;
    while seeding, those that took the most, so the fastest readers finish
    first) are unchoked and the rest choked; every C{optimisticInterval}
    seconds one more choked, interested peer is picked at random and
    unchoked (the optimistic unchoke), so newcomers get a start.

    Between rounds, a peer that becomes interested while a slot is free is
    unchoked at once rather than left waiting up to 10 s.  Every round is
    logged as one line a student can read.
    """

    _log = Logger()

    def __init__(self, torrent: Torrent, slots: int = 4, interval: float = 10.0, optimisticInterval: float = 30.0) -> None:
        self.torrent = torrent
        self.slots = slots
        self.interval = interval
        self.optimisticInterval = optimisticInterval
        self.optimistic: Any = None
        #: The round the current optimistic unchoke was drawn in.
        self.optimisticSince = 0
        self.rounds = 0
        self.decisions: list[str] = []
        self._call: Any = None

    def start(self) -> None:
        self._call = self.torrent.clock.callLater(self.interval, self.round)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()

    def unchoked(self) -> list[Any]:
        return [p for p in self.torrent.peers if not p.amChoking]

    def interestChanged(self, peer: Any) -> None:
        if peer.peerInterested and peer.amChoking and len(self.unchoked()) < self.slots + 1:
            peer.setChoking(False)
            self.record(f"unchoke {peer.address}: interested and a slot is free")
        elif not peer.peerInterested and not peer.amChoking and peer is not self.optimistic:
            peer.setChoking(True)
            self.record(f"choke {peer.address}: no longer interested")
            self.fillSlots(f"{peer.address} no longer interested")

    def fillSlots(self, why: str) -> None:
        """
        Between rounds, a slot that came free (its peer lost interest or
        left) goes at once to the waiting interested peer that gave (or,
        seeding, took) most last round, rather than idling until the next.
        """
        if self.torrent.stopped:
            return
        seeding = self.torrent.complete
        waiting = [p for p in self.torrent.peers if p.peerInterested and p.amChoking and p.torrent is not None]
        waiting.sort(key=lambda p: (getattr(p, "rateUp" if seeding else "rateDown", 0), random.random()), reverse=True)
        for p in waiting:
            if len(self.unchoked()) >= self.slots + 1:
                return
            p.setChoking(False)
            self.record(f"unchoke {p.address}: a slot came free ({why})")

    def record(self, line: str) -> None:
        self.decisions.append(line)
        del self.decisions[:-100]
        self._log.info("choker: {line}", line=line)

    def round(self) -> None:
        """
        One re-evaluation: rank, unchoke the best C{slots}, choke the rest;
        every third round (30 s at the default 10 s) a new optimistic pick.
        """
        seeding = self.torrent.complete
        peers = [p for p in self.torrent.peers if p.torrent is not None]
        for p in peers:
            p.rateDown, p.rateUp = p.downloadedBytes, p.uploadedBytes
            p.downloadedBytes = p.uploadedBytes = 0
        interested = [p for p in peers if p.peerInterested]
        key: Callable[[Any], int] = (lambda p: p.rateUp) if seeding else (lambda p: p.rateDown)
        ranked = sorted(interested, key=lambda p: (key(p), random.random()), reverse=True)
        drawn = self.rounds % max(1, round(self.optimisticInterval / self.interval)) == 0 or self.optimistic not in peers
        # The optimistic pick keeps its own slot for its 30 s: the 4 regular
        # slots go to the best of the others.
        best = [p for p in ranked if drawn or p is not self.optimistic][: self.slots]
        if drawn:
            rest = [p for p in interested if p not in best]
            self.optimistic = random.choice(rest) if rest else None
            self.optimisticSince = self.rounds + 1
        keep = set(best) | ({self.optimistic} if self.optimistic is not None else set())
        for p in peers:
            p.setChoking(p not in keep)
        self.rounds += 1
        self.record(
            f"round {self.rounds} ({'seeding: by bytes they took' if seeding else 'by bytes they gave'}):"
            f" unchoked {', '.join(f'{p.address} ({key(p)} B)' for p in best) or 'nobody'};"
            f" optimistic {self._optimisticText(drawn)};"
            f" choked {len([p for p in peers if p not in keep])}"
        )
        self._call = self.torrent.clock.callLater(self.interval, self.round)

    def _optimisticText(self, drawn: bool) -> str:
        if self.optimistic is None:
            return "none"
        if drawn:
            return f"{self.optimistic.address} (new pick, kept {self.optimisticInterval:g} s)"
        return f"{self.optimistic.address} (since round {self.optimisticSince})"


class Torrent:
    """
    The state of one torrent in this process.

    @ivar done: fires with the final path once every piece is here and
        verified (at once for a seeder).
    """

    _log = Logger()

    def __init__(
        self,
        meta: Metainfo,
        storage: Storage,
        have: list[bool],
        clock: Any,
        final: str | None = None,
        peerId: bytes | None = None,
        maxPeers: int = MAX_PEERS,
        connect: Callable[[Torrent, str, int], None] | None = None,
        uploadLimit: RateLimit | None = None,
        downloadLimit: RateLimit | None = None,
    ) -> None:
        self.meta = meta
        self.storage = storage
        self.have = have
        self.clock = clock
        self.final = final
        self.peerId = peerId or newPeerId()
        self.maxPeers = maxPeers
        self.peers: set[Any] = set()
        self.availability = [0] * meta.numPieces
        self.active: dict[int, PieceState] = {}
        self.strikes: dict[bytes, int] = {}
        self.banned: set[bytes] = set()
        self.bannedAddresses: set[tuple[str, int]] = set()
        self.uploaded = 0
        self.downloaded = 0
        self.wasted = 0
        self.hashFailures = 0
        #: Bytes written from each peer address (at most MAX_SOURCES kept).
        self.sources: dict[str, int] = {}
        self.connecting: set[tuple[str, int]] = set()
        self.known: dict[tuple[str, int], None] = {}
        self.ownAddresses: set[tuple[str, int]] = set()
        self._connect = connect
        #: Rate limits, shared with the other torrents of the same peer.
        self.uploadLimit = uploadLimit
        self.downloadLimit = downloadLimit
        self.choker = Choker(self)
        self.done: Deferred[str] = Deferred()
        self.stopped = False
        #: The download's .part is being moved into place: serving waits.
        self.finishing = False
        if self.complete:
            self.done.callback(final or storage.root)

    @property
    def complete(self) -> bool:
        return all(self.have)

    @property
    def left(self) -> int:
        return sum(self.meta.pieceSize(i) for i, h in enumerate(self.have) if not h)

    def start(self) -> None:
        self.choker.start()

    def stop(self) -> None:
        self.stopped = True
        self.choker.stop()
        for p in list(self.peers):
            p.close("torrent stopped")
        self.storage.close()

    # -- peers ----------------------------------------------------------------

    def addPeers(self, addresses: list[tuple[str, int]]) -> None:
        """
        Peers a tracker gave: connect to those not already known, up to the
        peer limit.
        """
        for addr in addresses:
            if addr in self.ownAddresses or addr in self.bannedAddresses:
                continue
            self.known[addr] = None
            while len(self.known) > 4 * self.maxPeers:
                del self.known[next(iter(self.known))]
        self.connectMore()

    def connectMore(self) -> None:
        # A seed connects out too (a leecher that announced before it
        # learns of it at once, not at its next announce); it hangs up on
        # the seeds among them (L{peerHas}).
        if self.stopped or self._connect is None:
            return
        connected = {(p.host, getattr(p, "remotePort", None)) for p in self.peers}
        for addr in list(self.known):
            if len(self.peers) + len(self.connecting) >= self.maxPeers:
                return
            if addr in self.connecting or addr in connected:
                continue
            self.connecting.add(addr)
            del self.known[addr]
            self._connect(self, *addr)

    def connectFailed(self, dest: Any) -> None:
        self.connecting.discard((dest.host, dest.port))

    def admitPeer(self, peer: Any) -> str | None:
        """
        Why C{peer}, whose handshake just came, may not join, or None.
        """
        if self.stopped:
            return "torrent stopped"
        if peer.peerId in self.banned:
            return f"peer {peer.peerId!r} sent bad data before"
        if len(self.peers) >= self.maxPeers:
            return f"torrent full ({self.maxPeers} peers)"
        if any(p.peerId == peer.peerId for p in self.peers):
            return "already connected to this peer id"
        return None

    def peerReady(self, peer: Any) -> None:
        if peer.initiator is not None:
            dest = peer.transport.getPeer()
            peer.remotePort = dest.port
            self.connecting.discard((dest.host, dest.port))
        self.peers.add(peer)
        self._log.debug("peer {peer} joined", peer=peer.address)

    def peerLost(self, peer: Any) -> None:
        if peer.initiator is not None:
            try:
                dest = peer.transport.getPeer()
                self.connecting.discard((dest.host, dest.port))
            except Exception:
                pass
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        for i, b in enumerate(peer.bits):
            if b:
                self.availability[i] -= 1
        self._unrequest(peer)
        if self.choker.optimistic is peer:
            self.choker.optimistic = None
        if not peer.amChoking:
            self.choker.fillSlots(f"{peer.address} left")
        self.connectMore()

    def peerHas(self, peer: Any, indexes: list[int]) -> None:
        for i in indexes:
            self.availability[i] += 1
        if self.complete and all(peer.bits):
            peer.close("both complete")
            return
        self.updateInterest(peer)
        self.fillRequests(peer)

    def peerChoked(self, peer: Any) -> None:
        self._unrequest(peer)

    def _unrequest(self, peer: Any) -> None:
        for (index, begin, length) in list(peer.outstanding):
            state = self.active.get(index)
            if state is not None:
                askedOf = state.requested.get(begin, set())
                askedOf.discard(peer)
                if not askedOf and begin not in state.received:
                    state.pending.append((begin, length))
        peer.outstanding.clear()

    def updateInterest(self, peer: Any) -> None:
        peer.setInterested(any(b and not h for b, h in zip(peer.bits, self.have)))

    # -- downloading ------------------------------------------------------------

    def fillRequests(self, peer: Any) -> None:
        """
        Keep C{peer.pipeline} requests out to C{peer} (as many as it
        delivers in half a second, L{swarm.protocol.PIPELINE} at most).
        """
        from swarm.protocol import PIPELINE

        if peer.peerChoking or self.complete or peer.closed:
            return
        depth = getattr(peer, "pipeline", PIPELINE)
        while len(peer.outstanding) < depth:
            block = self.nextBlock(peer)
            if block is None:
                return
            peer.sendRequest(*block)

    def nextBlock(self, peer: Any) -> tuple[int, int, int] | None:
        bits = peer.bits
        for state in self.active.values():
            if state.pending and bits[state.index]:
                begin, length = state.pending.pop()
                state.requested.setdefault(begin, set()).add(peer)
                return state.index, begin, length
        if len(self.active) < MAX_ACTIVE + 4 * len(self.peers):
            index = self.pick(peer)
            if index is not None:
                state = self.active[index] = PieceState(index, self.meta.pieceSize(index))
                begin, length = state.pending.pop()
                state.requested[begin] = {peer}
                return index, begin, length
        # Endgame: every missing block is asked for; ask this peer too.
        if any(not h and i not in self.active for i, h in enumerate(self.have)):
            return None
        for state in self.active.values():
            if bits[state.index]:
                for begin, length in state.blocks:
                    askedOf = state.requested.setdefault(begin, set())
                    if begin not in state.received and peer not in askedOf and len(askedOf) < 3:
                        askedOf.add(peer)
                        return state.index, begin, length
        return None

    def pick(self, peer: Any) -> int | None:
        """
        The next piece to start from C{peer}: random for the first
        L{RANDOM_FIRST}, then rarest first.
        """
        candidates = [
            i for i, b in enumerate(peer.bits) if b and not self.have[i] and i not in self.active
        ]
        if not candidates:
            return None
        if sum(self.have) < RANDOM_FIRST:
            return random.choice(candidates)
        return min(candidates, key=lambda i: (self.availability[i], random.random()))

    def blockReceived(self, peer: Any, index: int, begin: int, data: bytes) -> None:
        key = (index, begin, len(data))
        if key not in peer.outstanding:
            # Unasked (or cancelled and sent anyway): not written.
            self.wasted += len(data)
            if self.wasted > 64 * self.meta.pieceLength + (16 << 20):
                raise wire.WireError("too many blocks we did not ask for")
            return
        del peer.outstanding[key]
        state = self.active.get(index)
        if state is None or begin in state.received:
            self.wasted += len(data)
            self.fillRequests(peer)
            return
        self.storage.write(index, begin, data)
        self.downloaded += len(data)
        if peer.host in self.sources or len(self.sources) < MAX_SOURCES:
            self.sources[peer.host] = self.sources.get(peer.host, 0) + len(data)
        state.received.add(begin)
        state.senders.add(peer)
        for other in state.requested.pop(begin, set()):
            if other is not peer:
                other.sendCancel(index, begin, len(data))
        if state.complete():
            self.pieceDone(state)
        self.fillRequests(peer)

    def pieceDone(self, state: PieceState) -> None:
        index = state.index
        del self.active[index]
        if not self.storage.verify(index):
            self.hashFailures += 1
            self._log.warn(
                "piece {index} failed its SHA-1 check; discarded, a strike for {senders}",
                index=index, senders=sorted(p.address for p in state.senders),
            )
            for p in state.senders:
                self.strikes[p.peerId] = self.strikes.get(p.peerId, 0) + 1
                if self.strikes[p.peerId] >= MAX_STRIKES or len(state.senders) == 1:
                    self.banned.add(p.peerId)
                    if getattr(p, "remotePort", None):
                        self.bannedAddresses.add((p.host, p.remotePort))
                    p.close(f"sent piece {index}, which failed its hash check")
            for p in list(self.peers):
                self.fillRequests(p)
            return
        self.have[index] = True
        for p in list(self.peers):
            p.send(wire.have(index))
            if p.amInterested:
                self.updateInterest(p)
        if self.complete:
            self.finished()

    def finished(self) -> None:
        """
        Every piece is here: fsync and rename the .part off the reactor
        thread (serving waits meanwhile), then fire C{done}.
        """
        self._log.info("{name}: complete, {n} bytes", name=self.meta.name, n=self.meta.length)
        for p in list(self.peers):
            p.outstanding.clear()
            # Two seeds have nothing to say to each other.
            if all(p.bits):
                p.close("both complete")
        if self.final is None or self.storage.root == self.final:
            self.storage.flush()
            self._renamed(None)
            return
        self.finishing = True
        getPool = getattr(self.clock, "getThreadPool", None)
        if getPool is None:
            self.storage.renameTo(self.final)
            self._renamed(None)
            return
        d = deferToThreadPool(self.clock, getPool(), self.storage.renameTo, self.final)
        d.addBoth(self._renamed)

    def _renamed(self, result: Any) -> None:
        self.finishing = False
        if isinstance(result, Failure):
            self._log.failure("could not move {name} into place", result, name=self.meta.name)
            if not self.done.called:
                self.done.errback(result)
            return
        for p in list(self.peers):
            p.serve()
        if not self.done.called:
            self.done.callback(self.final or self.storage.root)


def openTorrent(meta: Metainfo, path: str, clock: Any, download: bool, **kw: Any) -> Torrent:
    """
    A torrent whose data is at C{path} (seeding, C{download} false: every
    piece is verified first and the bad ones offered to nobody), or is to
    be downloaded to C{path} through C{path}.part (resumed from what a
    .part already holds, re-verified).
    """
    if not download or os.path.exists(path):
        storage = Storage(meta, path, writable=False)
        have = storage.existing()
        if download and not all(have):
            raise FileExistsError(f"{path} exists and is not this torrent's data; move it away")
        return Torrent(meta, storage, have, clock, final=path, **kw)
    part = path + ".part"
    storage = Storage(meta, part, writable=True)
    have = storage.existing()
    storage.create()
    return Torrent(meta, storage, have, clock, final=path, **kw)
