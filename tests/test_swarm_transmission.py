"""
Interoperability with transmission-cli (Debian's transmission 3.00), in
network namespaces this module makes and always deletes
(L{swarm.testing.Star}): our tracker (C{twistd swarm}) in the hub, our peer
(the C{swarm} command) in one namespace and transmission-cli in another.
transmission-cli downloads from our seeder, and our peer downloads from
transmission-cli seeding; files are compared by SHA-256.

transmission-cli runs with its own config directory (C{-g}) holding a
settings.json that turns off its DHT, local peer discovery, peer exchange,
uTP and port mapping; the namespaces have no route out in any case.
transmission decides whether it is interested in a peer only every 10 s
(libtransmission's rechoke period), so each download takes 10-15 s.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import pytest_twisted
from twisted.internet import task

from tests.swarm_support import (
    announced, end, runningStar, sha256, swarmGet, spawn, torrentFor, trackerIn, waitOutput, writeData,
)

pytestmark = pytest.mark.privileged

BIN = os.path.dirname(sys.executable)
OURS, THEIRS = "p0", "p1"


@pytest.fixture(scope="module")
def star():
    missing = None
    if shutil.which("transmission-cli") is None:
        missing = "transmission-cli not installed (Debian package transmission-cli, in the Makefile's APT_PACKAGES)"
    with runningStar(2, "swtx", missing) as net:
        yield net


def _transmission(net, tmp_path, torrentPath: str, directory: str, verify: bool = False) -> tuple[list[str], str]:
    """
    transmission-cli's command line in its namespace, with a config
    directory of its own; and the file its finish script creates.
    """
    config = tmp_path / "transmission"
    config.mkdir()
    (config / "settings.json").write_text(json.dumps({
        "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False, "utp-enabled": False,
        "port-forwarding-enabled": False, "blocklist-enabled": False, "encryption": 0,
        "bind-address-ipv4": net.addresses[THEIRS], "rpc-enabled": False,
    }))
    marker = str(tmp_path / "transmission-finished")
    script = config / "finished.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    argv = ["transmission-cli", "-g", str(config), "-w", directory, "-p", "51413", "-f", str(script),
            *(["-v"] if verify else []), torrentPath]
    return net.exec(THEIRS, argv), marker


@pytest_twisted.ensureDeferred
async def test_transmissionDownloadsFromOurSeeder(reactor, star, tmp_path):
    """transmission-cli, given our .torrent, finds our seeder through our tracker (in namespaces) and downloads the file intact."""
    tracker, url = await trackerIn(reactor, star)
    seeder = transmission = None
    try:
        data = str(tmp_path / "seed" / "lecture.bin")
        writeData(data, 3_000_001)
        torrentPath, meta = torrentFor(data, url)
        seeder = spawn(reactor, star.exec(OURS, [
            os.path.join(BIN, "swarm"), "seed", torrentPath, "--data", data,
            "--host", star.addresses[OURS], "--port", "6881",
        ]))
        await waitOutput(reactor, seeder, b"seeding lecture.bin")
        await announced(reactor, tracker, star.addresses[OURS], seeding=True)
        argv, marker = _transmission(star, tmp_path, torrentPath, str(tmp_path / "theirs"))
        transmission = spawn(reactor, argv)
        for _ in range(1200):
            if os.path.exists(marker) or transmission.ended.called:
                break
            await task.deferLater(reactor, 0.05)
        assert os.path.exists(marker), transmission.output.decode(errors="replace")[-3000:]
        assert sha256(str(tmp_path / "theirs" / "lecture.bin")) == sha256(data)
    finally:
        await end(reactor, transmission, seeder, tracker)


@pytest_twisted.ensureDeferred
async def test_weDownloadFromTransmissionSeeding(reactor, star, tmp_path):
    """`swarm get` finds transmission-cli seeding through our tracker (in namespaces) and downloads the file intact."""
    tracker, url = await trackerIn(reactor, star)
    transmission = None
    try:
        data = str(tmp_path / "theirs" / "notes.bin")
        writeData(data, 2_500_000, 5)
        torrentPath, meta = torrentFor(data, url)
        argv, marker = _transmission(star, tmp_path, torrentPath, str(tmp_path / "theirs"), verify=True)
        transmission = spawn(reactor, argv)
        await announced(reactor, tracker, star.addresses[THEIRS], seeding=True)
        await swarmGet(reactor, star, OURS, torrentPath, str(tmp_path / "ours"), data, others=(transmission,))
    finally:
        await end(reactor, transmission, tracker)
