"""
Swarm benchmark: download throughput of one file from 1 and from 3
seeders on 127.0.0.1, our peer (`swarm get` / `swarm seed`) against
aria2c, every pairing of downloader and seeders, in one run.

Each peer is its own process; the tracker is `twistd swarm --tracker`.
A download is timed from the downloader's start to its exit with the file
complete (so it includes starting up, the announce and, for aria2c, its
encrypted handshake attempt that our seeder refuses); the file is checked
by SHA-256.  aria2c runs with DHT, LPD and peer exchange off.

Then DHT lookups between N of our nodes on 127.0.0.1 (N = 8 .. 256, in
a child process, `python -m bench.swarm_bench dht`): queries and rounds a
find_node lookup takes, against N, and whether it found the true 8
closest.

C{python -m bench swarm}
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from fastbencode import bdecode

from coursenet.procs import freePort, stopProcess

BIN = os.path.dirname(sys.executable)
SIZE = int(os.environ.get("SWARM_BENCH_MIB", "64")) << 20
TIMEOUT = 120
ARIA2 = [
    "--no-conf=true", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
    "--enable-peer-exchange=false", "--disable-ipv6=true", "--summary-interval=0",
    "--console-log-level=warn", "--file-allocation=none",
]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seeders(trackerPort: int, infoHash: bytes) -> int:
    url = f"http://127.0.0.1:{trackerPort}/scrape?info_hash={urllib.parse.quote_from_bytes(infoHash)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        reply = bdecode(r.read())
    return reply.get(b"files", {}).get(infoHash, {}).get(b"complete", 0)


def startSeeder(kind: str, torrent: str, data: str, log) -> subprocess.Popen:
    if kind == "swarm":
        argv = [os.path.join(BIN, "swarm"), "seed", torrent, "--data", data]
    else:
        argv = ["aria2c", *ARIA2, "-V", "--seed-ratio=0.0", f"--listen-port={freePort()}",
                "-d", os.path.dirname(data), torrent]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def download(kind: str, torrent: str, out: str, log) -> float:
    if kind == "swarm":
        argv = [os.path.join(BIN, "swarm"), "get", torrent, "-o", out]
    else:
        argv = ["aria2c", *ARIA2, "--seed-time=0", f"--listen-port={freePort()}", "-d", out, torrent]
    start = time.monotonic()
    subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=TIMEOUT, check=True)
    return time.monotonic() - start


async def dhtLookups(reactor) -> None:
    import random

    from swarm.dht import K, DHTNode, distance

    print(f"{'nodes':>6} {'queries':>8} {'rounds':>7} {'exact':>6}   (mean of 30 find_node lookups)")
    for n in (8, 32, 128, 256):
        nodes, ports = [], []
        for _ in range(n):
            node = DHTNode(reactor)
            ports.append(reactor.listenUDP(0, node, interface="127.0.0.1"))
            nodes.append(node)
        first = ("127.0.0.1", ports[0].getHost().port)
        for node in nodes[1:]:
            await node.bootstrap([first])
        rng = random.Random(n)
        queries = rounds = exact = 0
        for _ in range(30):
            target, asker = rng.randbytes(20), rng.choice(nodes)
            result = await asker.lookup(target, b"find_node")
            truth = sorted((x for x in nodes if x is not asker), key=lambda x: distance(x.nodeId, target))[:K]
            queries += result.queries
            rounds += result.rounds
            exact += [c.nodeId for c, _ in result.closest] == [x.nodeId for x in truth]
        print(f"{n:>6} {queries / 30:>8.1f} {rounds / 30:>7.1f} {exact / 30:>6.0%}", flush=True)
        for p in ports:
            await p.stopListening()


def main() -> int:
    if shutil.which("aria2c") is None:
        print("aria2c not installed (apt-get install aria2)")
        return 1
    from swarm.metainfo import makeMetainfo, parseMetainfo

    tmp = tempfile.mkdtemp(prefix="swarm-bench-")
    log = open(os.path.join(tmp, "log.txt"), "w")
    trackerPort = freePort()
    tracker = subprocess.Popen(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "swarm", "--tracker",
         f"tcp:{trackerPort}:interface=127.0.0.1", "--rate", "0"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
    )
    procs: list[subprocess.Popen] = [tracker]
    results: dict[tuple[str, str, int], float] = {}
    failed = True
    try:
        source = os.path.join(tmp, "src", "file.bin")
        os.makedirs(os.path.dirname(source))
        with open(source, "wb") as f:
            for _ in range(SIZE >> 20):
                f.write(os.urandom(1 << 20))
        want = sha256(source)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", trackerPort), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        print(f"file: {SIZE >> 20} MiB, pieces of 256 KiB; each download timed from start to exit")
        print(f"{'downloader':>10} {'seeders':>14} {'seconds':>8} {'MiB/s':>8}")
        for count in (1, 3):
            for seederKind in ("swarm", "aria2c"):
                # Every case has the same info hash: the seeders of the last
                # case have announced "stopped" (both kinds do on SIGTERM).
                torrent = os.path.join(tmp, "file.torrent")
                if not os.path.exists(torrent):
                    with open(torrent, "wb") as f:
                        f.write(makeMetainfo(source, f"http://127.0.0.1:{trackerPort}/announce"))
                with open(torrent, "rb") as f:
                    meta = parseMetainfo(f.read())
                seeds = []
                for i in range(count):
                    copy = os.path.join(tmp, f"seed-{seederKind}{count}-{i}", "file.bin")
                    os.makedirs(os.path.dirname(copy))
                    os.link(source, copy)
                    seeds.append(startSeeder(seederKind, torrent, copy, log))
                procs += seeds
                deadline = time.monotonic() + 60
                while seeders(trackerPort, meta.infoHash) != count:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{count} {seederKind} seeders did not announce (tracker counts {seeders(trackerPort, meta.infoHash)}); log {log.name}")
                    time.sleep(0.2)
                for getter in ("swarm", "aria2c"):
                    out = os.path.join(tmp, f"get-{getter}-{seederKind}{count}")
                    seconds = download(getter, torrent, out, log)
                    if sha256(os.path.join(out, "file.bin")) != want:
                        raise RuntimeError(f"{getter} from {seederKind}: wrong data")
                    results[(getter, seederKind, count)] = seconds
                    print(f"{getter:>10} {f'{count} x {seederKind}':>14} {seconds:8.2f} {SIZE / seconds / (1 << 20):8.1f}",
                          flush=True)
                    shutil.rmtree(out)
                for p in seeds:
                    # aria2c announces "stopped" on SIGINT (graceful), not on SIGTERM.
                    p.send_signal(signal.SIGINT)
                for p in seeds:
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        stopProcess(p)
        for count in (1, 3):
            ours, theirs = results[("swarm", "swarm", count)], results[("aria2c", "aria2c", count)]
            print(f"from {count} seeder(s): swarm->swarm {SIZE / ours / (1 << 20):.1f} MiB/s,"
                  f" aria2c->aria2c {SIZE / theirs / (1 << 20):.1f} MiB/s, ratio ours/aria2c {theirs / ours:.2f}")
        failed = False
        subprocess.run([sys.executable, "-m", "bench.swarm_bench", "dht"], timeout=600, check=True)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                stopProcess(p)
        log.close()
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["dht"]:
        from twisted.internet import task
        from twisted.internet.defer import Deferred

        task.react(lambda reactor: Deferred.fromCoroutine(dhtLookups(reactor)))
    sys.exit(main())
