"""
Helpers for the swarm tests: a tracker on 127.0.0.1 port 0, data files
and their .torrent, and aria2c with every feature that could reach beyond
this machine turned off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from typing import Any

from twisted.internet import endpoints
from twisted.web.server import Site

from swarm.metainfo import Metainfo, makeMetainfo, parseMetainfo
from swarm.tracker import Swarms, TrackerRoot

#: aria2c talks only to what the test started: no DHT (and so no DHT
#: bootstrap), no local peer discovery, no peer exchange, IPv4 only.
ARIA2_SAFE = [
    "--no-conf=true", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
    "--enable-peer-exchange=false", "--disable-ipv6=true", "--summary-interval=0",
    "--console-log-level=warn", "--file-allocation=none", "--bt-stop-timeout=60",
    "--bt-tracker-connect-timeout=10", "--bt-tracker-timeout=10",
]


def aria2c() -> str | None:
    return shutil.which("aria2c")


def freePort() -> int:
    """
    A TCP port free on 127.0.0.1 just now (aria2c cannot listen on 0).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def startTracker(reactor: Any, **kw: Any) -> tuple[str, Any, Swarms]:
    """
    A tracker on 127.0.0.1 port 0: its announce URL, its port, its state.
    """
    kw.setdefault("rate", 0)
    swarms = Swarms(reactor, **kw)
    port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(TrackerRoot(swarms)))
    return f"http://127.0.0.1:{port.getHost().port}/announce", port, swarms


def writeData(path: str, size: int, seed: int = 1) -> bytes:
    """
    C{size} pseudo-random bytes written to C{path}.
    """
    import random

    data = random.Random(seed).randbytes(size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


def torrentFor(path: str, url: str | None, pieceLength: int = 1 << 16) -> tuple[str, Metainfo]:
    """
    Write C{path}.torrent for C{path}; its path and parsed metainfo.
    """
    out = path.rstrip("/") + ".torrent"
    data = makeMetainfo(path, url, pieceLength)
    with open(out, "wb") as f:
        f.write(data)
    return out, parseMetainfo(data)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
