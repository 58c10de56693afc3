"""
The swarm across network namespaces (L{swarm.testing.Star}, made and
always deleted here): `swarm get` fetches a 100 MB file from five `swarm
seed` processes, each in its own namespace, through `twistd swarm`'s
tracker in the hub, and the SHA-256 matches.
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
import pytest_twisted

from swarm.testing import HUB, Star
from tests.conftest import skipOrFail
from tests.swarm_support import finish, namespacesMissing, spawn, torrentFor, waitOutput

pytestmark = pytest.mark.privileged

BIN = os.path.dirname(sys.executable)
SEEDERS = 5
SIZE = 100_000_000


def _randomFile(path: str, size: int) -> str:
    """
    C{size} random bytes at C{path}, written 4 MiB at a time; their SHA-256.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


async def _end(reactor, procs) -> None:
    for proc in procs:
        if not proc.ended.called:
            proc.transport.signalProcess("TERM")
    for proc in procs:
        await finish(proc, 10, reactor)


@pytest_twisted.ensureDeferred
async def test_getHundredMegabytesFromFiveSeedersInNamespaces(reactor, tmp_path):
    """swarm get downloads 100 MB from five seeders, each in its own namespace, takes bytes from all five, and the SHA-256 matches."""
    why = namespacesMissing()
    if why is not None:
        skipOrFail(why)
    net = Star(SEEDERS + 1, f"sw5s{os.getpid()}")
    procs: list = []
    net.up()
    try:
        host = net.addresses[HUB]
        tracker = spawn(reactor, net.exec(HUB, [
            os.path.join(BIN, "twistd"), "-n", "--pidfile=", "swarm", "--tracker", f"tcp:6969:interface={host}",
            "--rate", "0", "--interval", "10",
        ]))
        procs.append(tracker)
        data = str(tmp_path / "seed" / "big.bin")
        digest = _randomFile(data, SIZE)
        torrentPath, meta = torrentFor(data, f"http://{host}:6969/announce", pieceLength=1 << 18)
        await waitOutput(reactor, tracker, b"Site starting on", 30)
        seeders = [f"p{i}" for i in range(SEEDERS)]
        for role in seeders:
            procs.append(spawn(reactor, net.exec(role, [
                os.path.join(BIN, "swarm"), "seed", torrentPath, "--data", data, "--host", net.addresses[role],
            ])))
        for proc in procs[1:]:
            await waitOutput(reactor, proc, b"seeding big.bin", 60)
        # Each seeder announces right after it prints "seeding"; wait for all five.
        for role in seeders:
            await waitOutput(reactor, tracker, f'"{net.addresses[role]}" - - '.encode(), 30)
        getter = f"p{SEEDERS}"
        get = spawn(reactor, net.exec(getter, [
            os.path.join(BIN, "swarm"), "get", torrentPath, "-o", str(tmp_path / "got"), "--host", net.addresses[getter],
        ]))
        procs.append(get)
        assert await finish(get, 120, reactor) == 0, get.output.decode(errors="replace")[-3000:]
        assert f"{SIZE} bytes from {SEEDERS} peers, sha256 {digest}".encode() in get.output, get.output[-2000:]
        h = hashlib.sha256()
        with open(tmp_path / "got" / "big.bin", "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        assert h.hexdigest() == digest
    finally:
        await _end(reactor, procs)
        net.down()
