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
from contextlib import contextmanager
from typing import Any, Iterator

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


class _Collect:
    """
    A process protocol keeping the last 64 KiB of a child's output and
    firing C{ended} with its exit code.
    """

    def __new__(cls):
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import ProcessProtocol

        class P(ProcessProtocol):
            def __init__(self):
                self.output = bytearray()
                self.ended = Deferred()

            def outReceived(self, data):
                self.output += data
                del self.output[:-65536]

            errReceived = outReceived

            def processEnded(self, reason):
                self.ended.callback(reason.value.exitCode)

        return P()


def spawn(reactor: Any, argv: list[str], cwd: str | None = None) -> Any:
    """
    Start C{argv} (no shell) with its output collected; the protocol, with
    C{transport.pid} to stop it by and C{ended} to wait on.
    """
    proto = _Collect()
    reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ), path=cwd)
    return proto


async def finish(proc: Any, timeout: float, reactor: Any) -> int:
    """
    Wait for C{proc} to exit, killing it (by its PID) after C{timeout}
    seconds; its exit code.
    """
    from twisted.internet import defer

    if not proc.ended.called:
        call = reactor.callLater(timeout, lambda: proc.transport.signalProcess("KILL"))
        try:
            return await proc.ended
        finally:
            if call.active():
                call.cancel()
    return await defer.succeed(proc.ended.result)


async def stop(proc: Any) -> None:
    """
    Stop C{proc} with SIGTERM (by its PID) and wait for it.
    """
    if not proc.ended.called:
        proc.transport.signalProcess("TERM")
    try:
        await proc.ended
    except Exception:
        pass


def namespacesMissing() -> str | None:
    """
    Why the namespace tests cannot run here, or None: they need root,
    C{ip netns} and C{tc}.
    """
    import subprocess

    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"needs {tool} (Debian package iproute2)"
    probe = f"swprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "needs ip netns"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextmanager
def runningStar(peers: int, tag: str, missing: str | None = None) -> Iterator[Any]:
    """
    A L{swarm.testing.Star} of C{peers} namespaces named after C{tag} and
    this process, up for the block and deleted after it; skipped (failed
    under C{COURSENET_REQUIRE_ALL}) when namespaces cannot be made here or
    C{missing} says what else is missing.
    """
    from swarm.testing import Star
    from tests.conftest import skipOrFail

    why = namespacesMissing() or missing
    if why is not None:
        skipOrFail(why)
    net = Star(peers, f"{tag}{os.getpid()}")
    net.up()
    try:
        yield net
    finally:
        net.down()


async def waitOutput(reactor: Any, proc: Any, text: bytes, timeout: float = 30) -> None:
    """
    Wait until C{proc} has printed C{text}; fail with its output if it
    exits first or C{timeout} seconds pass.
    """
    from twisted.internet import task

    for _ in range(int(timeout * 20)):
        if text in proc.output:
            return
        if proc.ended.called:
            break
        await task.deferLater(reactor, 0.05)
    raise AssertionError(f"{text!r} not printed:\n{proc.output.decode(errors='replace')[-3000:]}")


async def trackerIn(reactor: Any, net: Any, port: int = 6969) -> tuple[Any, str]:
    """
    C{twistd swarm --tracker} in the hub namespace of C{net} (a
    L{swarm.testing.Star}), once it listens; the process and its URL.
    """
    import sys

    from swarm.testing import HUB

    host = net.addresses[HUB]
    proc = spawn(reactor, net.exec(HUB, [
        os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "swarm", "--tracker",
        f"tcp:{port}:interface={host}", "--rate", "0", "--interval", "10",
    ]))
    await waitOutput(reactor, proc, b"Site starting on", 30)
    return proc, f"http://{host}:{port}/announce"


async def announced(reactor: Any, tracker: Any, address: str, seeding: bool) -> None:
    """
    Wait until the tracker has logged an announce from C{address} (a
    complete one when C{seeding}).
    """
    import re

    from twisted.internet import task

    pattern = re.compile(rb'"' + re.escape(address.encode()) + rb'" - - [^\n]*GET /announce[^\n]*'
                         + (rb"left=0\D" if seeding else b""))
    for _ in range(600):
        if pattern.search(tracker.output):
            return
        await task.deferLater(reactor, 0.05)
    raise AssertionError(f"no announce from {address}:\n{tracker.output.decode(errors='replace')[-3000:]}")


async def swarmGet(reactor: Any, net: Any, role: str, torrentPath: str, out: str, data: str, *extra: str,
                   timeout: float = 60, others: tuple = ()) -> None:
    """
    Run C{swarm get} in C{role}'s namespace of C{net} into C{out} and
    check it exits 0 having printed, and written, the SHA-256 of C{data}
    (the file the torrent describes).  C{others}: processes whose output
    helps explain a failure.
    """
    import sys

    get = spawn(reactor, net.exec(role, [
        os.path.join(os.path.dirname(sys.executable), "swarm"), "get", torrentPath, "-o", out,
        "--host", net.addresses[role], *extra,
    ]))
    code = await finish(get, timeout, reactor)
    assert code == 0, "".join(p.output.decode(errors="replace")[-2000:] for p in (get, *others))
    digest = sha256(data)
    assert f"sha256 {digest}".encode() in get.output
    assert sha256(os.path.join(out, os.path.basename(data))) == digest


async def end(reactor: Any, *procs: Any) -> None:
    """
    SIGTERM each process (by its PID), SIGKILL after 10 s.
    """
    for proc in procs:
        if proc is not None and not proc.ended.called:
            proc.transport.signalProcess("TERM")
            await finish(proc, 10, reactor)
