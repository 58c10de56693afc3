"""
The HTTP tracker over a real socket: compact and dictionary peer lists,
scrape, and its limits, each refusal a bencoded failure reason.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from fastbencode import bdecode
from twisted.internet import task
from twisted.web.client import Agent, readBody

from swarm.client import announceURL
from swarm.tracker import Swarms, parseCompact
from tests.swarm_support import startTracker

H1, H2 = b"\x01" * 20, b"\x02" * 20


def _pid(n: int) -> bytes:
    return b"-TT0000-" + b"%012d" % n


async def _get(reactor, url: bytes) -> dict:
    response = await Agent(reactor).request(b"GET", url)
    assert response.code == 200
    return bdecode(await readBody(response))


async def _announce(reactor, base, infoHash=H1, n=1, **kw) -> dict:
    params = {"info_hash": infoHash, "peer_id": _pid(n), "port": 6000 + n, "uploaded": 0, "downloaded": 0, "left": 10}
    params.update(kw)
    return await _get(reactor, announceURL(base, params))


@pytest_twisted.ensureDeferred
async def test_compactPeersAndScrape(reactor):
    """A second announcer gets the first as a 6-byte compact entry; scrape counts seeders, leechers and completions."""
    url, port, swarms = await startTracker(reactor)
    try:
        first = await _announce(reactor, url, n=1, left=0, compact=1)
        assert first[b"peers"] == b"" and first[b"interval"] == swarms.interval
        second = await _announce(reactor, url, n=2, compact=1, event="started")
        assert parseCompact(second[b"peers"]) == [("127.0.0.1", 6001)]
        assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
        await _announce(reactor, url, n=2, left=0, event="completed")
        scrape = await _get(reactor, announceURL(url.replace("announce", "scrape"), {"info_hash": H1}))
        assert scrape[b"files"][H1] == {b"complete": 2, b"downloaded": 1, b"incomplete": 0}
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_dictionaryPeersAndIpParameterIgnored(reactor):
    """compact=0 gives dictionaries with peer ids (none with no_peer_id=1), and an ip parameter cannot name a third party."""
    url, port, _ = await startTracker(reactor)
    try:
        await _announce(reactor, url, n=1, ip="192.0.2.7")
        reply = await _announce(reactor, url, n=2, compact=0)
        assert reply[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 6001, b"peer id": _pid(1)}]
        reply = await _announce(reactor, url, n=2, compact=0, no_peer_id=1)
        assert reply[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 6001}]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_stoppedPeerIsForgotten(reactor):
    """A peer that announces stopped is no longer handed out."""
    url, port, _ = await startTracker(reactor)
    try:
        await _announce(reactor, url, n=1)
        await _announce(reactor, url, n=1, event="stopped")
        assert (await _announce(reactor, url, n=2))[b"peers"] == b""
    finally:
        await port.stopListening()


@pytest.mark.parametrize("params,reason", [
    ({"info_hash": b"short"}, b"info_hash: not 20 bytes"),
    ({"port": 0}, b"port: 0 is not a port"),
    ({"port": 70000}, b"port: out of range"),
    ({"left": "x"}, b"left: not an integer"),
    ({"event": "dance"}, b"event: 'dance' is not"),
])
@pytest_twisted.ensureDeferred
async def test_badAnnounceGetsFailureReason(reactor, params, reason):
    """A malformed announce is answered with a failure reason naming the bad parameter."""
    url, port, swarms = await startTracker(reactor)
    try:
        reply = await _announce(reactor, url, **params)
        assert reply[b"failure reason"].startswith(reason)
        assert not any(swarms.torrents.values())
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_missingParameterAndBareScrapeRefused(reactor):
    """An announce without peer_id, and a scrape without info_hash, are refused with reasons."""
    url, port, _ = await startTracker(reactor)
    try:
        reply = await _get(reactor, announceURL(url, {"info_hash": H1, "port": 1}))
        assert reply[b"failure reason"] == b"missing peer_id"
        reply = await _get(reactor, url.replace("announce", "scrape").encode())
        assert b"needs info_hash" in reply[b"failure reason"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_limits(reactor):
    """Torrents, peers a torrent and peers a reply are capped; a full tracker says so."""
    url, port, swarms = await startTracker(reactor, maxTorrents=1, maxPeers=3, maxNumwant=1)
    try:
        for n in range(5):
            await _announce(reactor, url, n=n)
        assert len(swarms.torrents[H1]) == 3
        assert len(parseCompact((await _announce(reactor, url, n=9, numwant=50))[b"peers"])) == 1
        reply = await _announce(reactor, url, infoHash=H2)
        assert b"tracker full (1 torrents)" in reply[b"failure reason"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_perAddressRateLimit(reactor):
    """Past its burst, an address's requests are refused with a reason until tokens come back."""
    url, port, _ = await startTracker(reactor, rate=0.001, burst=2)
    try:
        assert b"failure reason" not in await _announce(reactor, url, n=1)
        assert b"failure reason" not in await _announce(reactor, url, n=2)
        reply = await _announce(reactor, url, n=3)
        assert b"too many requests from 127.0.0.1" in reply[b"failure reason"]
    finally:
        await port.stopListening()


def test_silentPeersExpire():
    """A peer that has not announced for twice the interval is no longer handed out."""
    clock = task.Clock()
    swarms = Swarms(clock, interval=100)
    swarms.announce(H1, _pid(1), "127.0.0.1", 1, 0, "started", 50)
    clock.advance(150)
    swarms.announce(H1, _pid(2), "127.0.0.1", 2, 0, "started", 50)
    clock.advance(60)
    peers, _, _ = swarms.announce(H1, _pid(3), "127.0.0.1", 3, 0, "started", 50)
    assert [p.port for p in peers] == [2]
