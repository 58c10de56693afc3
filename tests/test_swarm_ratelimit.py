"""
The peer's upload and download rate limits (swarm.ratelimit): over real
sockets on 127.0.0.1, with the limit's bucket on a fake clock (exact
block counts), and one short real-clock run that asserts a lower bound.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import task

from swarm import wire
from swarm.client import Peer
from swarm.ratelimit import RateLimit, parseRate
from tests.swarm_support import startTracker, torrentFor, writeData

RATE = 4 * wire.BLOCK  # 64 KiB/s: burst 2 blocks


async def _until(reactor, predicate, timeout=20.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02)
    raise AssertionError("condition not reached in time")


async def _settled(reactor, value, seconds=0.3):
    """
    C{value()} once it has not changed for C{seconds} of real time.
    """
    last = value()
    while True:
        await task.deferLater(reactor, seconds)
        now = value()
        if now == last:
            return now
        last = now


async def _pair(reactor, tmp_path, size, seeder, getter):
    url, tport, _ = await startTracker(reactor)
    writeData(str(tmp_path / "f.bin"), size)
    _, meta = torrentFor(str(tmp_path / "f.bin"), url)
    await seeder.listen()
    await seeder.add(meta, str(tmp_path / "f.bin"), download=False)
    await getter.listen()
    torrent = await getter.add(meta, str(tmp_path / "out" / "f.bin"), download=True)
    return tport, meta, torrent


def test_parseRate():
    """Rates are bytes a second with K/M/G = 1024-multiples; anything else is refused with the text it got."""
    assert [parseRate(t) for t in ("500K", "4M", "1.5m", "65536", "4MiB/s", "0")] == [
        512000, 4 << 20, 3 << 19, 65536, 4 << 20, 0]
    for bad in ("fast", "-1K", "4Q", ""):
        with pytest.raises(ValueError, match="is not a rate"):
            parseRate(bad)


def test_twistdSwarmTakesRates():
    """twistd swarm's --max-upload-rate/--max-download-rate take the same rates and refuse a bad one with its reason."""
    from twisted.python.usage import UsageError

    from swarm.tap import Options

    o = Options()
    o.parseOptions(["--tracker", "tcp:0", "--max-upload-rate", "500K", "--max-download-rate", "4M"])
    assert (o["max-upload-rate"], o["max-download-rate"]) == (512000, 4 << 20)
    with pytest.raises(UsageError, match="'fast' is not a rate"):
        Options().parseOptions(["--tracker", "tcp:0", "--max-upload-rate", "fast"])


@pytest_twisted.ensureDeferred
async def test_uploadLimitPacesBlocks(reactor, tmp_path):
    """A seeder limited to 64 KiB/s sends its burst plus one block, then exactly one 16 KiB block per 1/4 s of its clock."""
    clock = task.Clock()
    seeder, getter = Peer(reactor), Peer(reactor)
    seeder.uploadLimit = RateLimit(RATE, clock)
    tport, meta, torrent = await _pair(reactor, tmp_path, 1 << 20, seeder, getter)
    try:
        await _until(reactor, lambda: torrent.downloaded >= 3 * wire.BLOCK)
        # The burst (2 blocks) and the block that overdraws it.
        assert await _settled(reactor, lambda: torrent.downloaded) == 3 * wire.BLOCK
        for step in range(1, 5):
            clock.advance(0.25)
            await _until(reactor, lambda: torrent.downloaded >= (3 + step) * wire.BLOCK)
            assert await _settled(reactor, lambda: torrent.downloaded, 0.1) == (3 + step) * wire.BLOCK
        assert not torrent.done.called
    finally:
        for p in (getter, seeder):
            await p.stop()
        await tport.stopListening()


@pytest_twisted.ensureDeferred
async def test_downloadLimitStopsReading(reactor, tmp_path):
    """A getter limited to 64 KiB/s stops reading once over its bucket (the sender is held by TCP) and reads on as its clock moves."""
    clock = task.Clock()
    seeder, getter = Peer(reactor), Peer(reactor)
    getter.downloadLimit = RateLimit(RATE, clock)
    tport, meta, torrent = await _pair(reactor, tmp_path, 4 << 20, seeder, getter)
    try:
        await _until(reactor, lambda: torrent.downloaded >= 3 * wire.BLOCK)
        held = await _settled(reactor, lambda: torrent.downloaded)
        # The burst, the block that overdrew it, and the rest of the read
        # it came in (at most the requests kept out: 8 blocks).
        assert 3 * wire.BLOCK <= held <= 8 * wire.BLOCK
        [p] = [p for p in torrent.peers]
        assert p._readPaused is not None
        clock.advance(1.0)
        await _until(reactor, lambda: torrent.downloaded > held)
        again = await _settled(reactor, lambda: torrent.downloaded)
        assert again <= held + 8 * wire.BLOCK and not torrent.done.called
    finally:
        for p in (getter, seeder):
            await p.stop()
        await tport.stopListening()


@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest_twisted.ensureDeferred
async def test_limitHoldsOnTheRealClock(reactor, tmp_path, direction):
    """2 MiB through a 1 MiB/s limit (either side) takes at least 1.5 s on the real clock, and arrives intact."""
    kw = {f"max{direction.capitalize()}Rate": 1 << 20}
    seeder = Peer(reactor, **(kw if direction == "upload" else {}))
    getter = Peer(reactor, **(kw if direction == "download" else {}))
    started = time.monotonic()
    tport, meta, torrent = await _pair(reactor, tmp_path, 2 << 20, seeder, getter)
    try:
        await torrent.done
        elapsed = time.monotonic() - started
        assert elapsed >= 1.5, f"2 MiB at 1 MiB/s in {elapsed:.2f} s"
        assert torrent.hashFailures == 0 and torrent.downloaded == meta.length
    finally:
        for p in (getter, seeder):
            await p.stop()
        await tport.stopListening()
