"""
Interoperability with aria2c, a real BitTorrent client, on 127.0.0.1 only
(aria2c runs with DHT, local peer discovery and peer exchange off, and
knows only our tracker): it downloads from our seeder, we download from it
seeding, and it fetches what `twistd swarm` seeds.  Files are compared by
SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest_twisted
from twisted.internet import task

from swarm.client import Peer
from swarm.metainfo import readMetainfo
from tests.conftest import skipOrFail
from tests.swarm_support import (
    ARIA2_SAFE, aria2c, finish, freePort, sha256, spawn, startTracker, stop, torrentFor, writeData,
)


def _aria2c() -> str:
    path = aria2c()
    if path is None:
        skipOrFail("aria2c not installed (Debian package aria2, in the Makefile's APT_PACKAGES)")
    assert path is not None
    return path


def _treeSha256(root) -> str:
    h = hashlib.sha256()
    for d, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            h.update(os.path.relpath(os.path.join(d, n), root).encode() + b"\0")
            with open(os.path.join(d, n), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest_twisted.ensureDeferred
async def test_aria2cDownloadsFromOurSeeder(reactor, tmp_path):
    """aria2c, given our .torrent, finds our seeder through our tracker and downloads a file and a directory intact."""
    aria = _aria2c()
    url, tport, swarms = await startTracker(reactor)
    single = str(tmp_path / "seed" / "movie.bin")
    writeData(single, 3_000_001)
    tree = tmp_path / "seed" / "course"
    writeData(str(tree / "slides.pdf"), 500_000, 2)
    writeData(str(tree / "week1" / "notes.txt"), 70_000, 3)
    seeder = Peer(reactor)
    try:
        await seeder.listen()
        for path in (single, str(tree)):
            torrentPath, meta = torrentFor(path, url)
            await seeder.add(meta, path, download=False)
            proc = spawn(reactor, [aria, *ARIA2_SAFE, "--seed-time=0", f"--listen-port={freePort()}",
                                   "-d", str(tmp_path / "aria"), torrentPath])
            code = await finish(proc, 90, reactor)
            assert code == 0, proc.output.decode(errors="replace")[-2000:]
        assert sha256(str(tmp_path / "aria" / "movie.bin")) == sha256(single)
        assert _treeSha256(tmp_path / "aria" / "course") == _treeSha256(tree)
        assert seeder.torrents[0].uploaded >= 3_000_001
    finally:
        await seeder.stop()
        await tport.stopListening()


@pytest_twisted.ensureDeferred
async def test_weDownloadFromAria2cSeeding(reactor, tmp_path):
    """Our peer downloads from aria2c seeding (found through our tracker) and the SHA-256 matches."""
    aria = _aria2c()
    url, tport, swarms = await startTracker(reactor)
    data = str(tmp_path / "seed" / "lecture.mp4")
    writeData(data, 2_500_000)
    torrentPath, meta = torrentFor(data, url)
    proc = spawn(reactor, [aria, *ARIA2_SAFE, "-V", "--seed-ratio=0.0", "--seed-time=5",
                           f"--listen-port={freePort()}", "-d", str(tmp_path / "seed"), torrentPath])
    getter = Peer(reactor)
    try:
        for _ in range(400):
            if swarms.torrents.get(meta.infoHash) or proc.ended.called:
                break
            await task.deferLater(reactor, 0.05)
        assert swarms.torrents.get(meta.infoHash), proc.output.decode(errors="replace")[-2000:]
        await getter.listen()
        torrent = await getter.add(meta, str(tmp_path / "ours" / "lecture.mp4"), download=True)
        path = await torrent.done
        assert sha256(path) == sha256(data)
        assert torrent.hashFailures == 0
    finally:
        await getter.stop()
        await stop(proc)
        await tport.stopListening()


@pytest_twisted.ensureDeferred
async def test_twistdSwarmSeedsForAria2cAndSwarmGet(reactor, tmp_path):
    """`twistd swarm` runs a tracker and seeds a demo file; aria2c and `swarm get` both fetch it intact from its .torrent."""
    aria = _aria2c()
    trackerPort = freePort()
    demo = tmp_path / "var" / "demo.bin"
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    server = spawn(reactor, [twistd, "-n", "--pidfile=", "swarm", "--tracker", f"tcp:{trackerPort}:interface=127.0.0.1",
                             "--seed", str(demo), "--demo-bytes", "1500000", "--interval", "60"], cwd=str(tmp_path))
    try:
        for _ in range(400):
            if b"seeding " in server.output or server.ended.called:
                break
            await task.deferLater(reactor, 0.05)
        assert b"seeding " in server.output, server.output.decode(errors="replace")[-3000:]
        torrentPath = str(demo) + ".torrent"
        assert readMetainfo(torrentPath).announce == f"http://127.0.0.1:{trackerPort}/announce"
        proc = spawn(reactor, [aria, *ARIA2_SAFE, "--seed-time=0", f"--listen-port={freePort()}",
                               "-d", str(tmp_path / "aria"), torrentPath])
        assert await finish(proc, 90, reactor) == 0, proc.output.decode(errors="replace")[-2000:]
        assert sha256(str(tmp_path / "aria" / "demo.bin")) == sha256(str(demo))
        swarmScript = os.path.join(os.path.dirname(sys.executable), "swarm")
        get = spawn(reactor, [swarmScript, "get", torrentPath, "-o", str(tmp_path / "ours")])
        assert await finish(get, 90, reactor) == 0, get.output.decode(errors="replace")[-2000:]
        assert f"sha256 {sha256(str(demo))}".encode() in get.output
        assert sha256(str(tmp_path / "ours" / "demo.bin")) == sha256(str(demo))
    finally:
        await stop(server)
