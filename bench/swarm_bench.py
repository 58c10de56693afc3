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

Then the course's experiment (C{python -m bench.swarm_bench curve}, see
L{curve}): the time to distribute one file to N peers in network
namespaces with C{tc}-shaped uploads, from a BFTP server, through our
swarm and through an aria2c swarm, drawn over D_cs and D_P2P in
docs/swarm-distribution.png; and the DHT lookups against N in
docs/swarm-dht.png.  Needs root.

C{python -m bench swarm} runs all three (SWARM_BENCH_PARTS=curve,dht
picks some).  The experiment's knobs: SWARM_CURVE_MIB (file size, 16),
SWARM_CURVE_MBIT (u, 4; u_s is 10u), SWARM_CURVE_NS (1,5,10,20,30),
SWARM_CURVE_PIECE_KIB (64), SWARM_CURVE_ARMS (bftp,swarm,aria2c) and
SWARM_CURVE_KEEP=1 (keep the temporary folder and its log).
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
DHT_SIZES = (4, 8, 16, 32, 64, 128, 256)
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
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


async def dhtLookups(reactor, out: str | None = None) -> None:
    import json
    import random

    from swarm.dht import K, DHTNode, distance

    rows = []
    print(f"{'nodes':>6} {'queries':>8} {'rounds':>7} {'exact':>6}   (mean of 30 find_node lookups)")
    for n in DHT_SIZES:
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
        rows.append({"nodes": n, "queries": queries / 30, "rounds": rounds / 30, "exact": exact / 30})
        for p in ports:
            await p.stopListening()
    if out:
        with open(out, "w") as f:
            json.dump(rows, f)


def throughput() -> int:
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
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                stopProcess(p)
        log.close()
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)


# -- the course's experiment: client-server against P2P distribution time ------

#: File size, peer upload u (bits/s), peer counts; the server uploads 10u.
CURVE_MIB = float(os.environ.get("SWARM_CURVE_MIB", "16"))
CURVE_U = int(float(os.environ.get("SWARM_CURVE_MBIT", "4")) * 1e6)
CURVE_NS = tuple(int(n) for n in os.environ.get("SWARM_CURVE_NS", "1,5,10,20,30").split(","))
CURVE_PIECE = int(os.environ.get("SWARM_CURVE_PIECE_KIB", "64")) << 10
#: Which arms run (a dry run may leave some out).
CURVE_ARMS = os.environ.get("SWARM_CURVE_ARMS", "bftp,swarm,aria2c").split(",")
BFTP_USER, BFTP_PASSWORD = "bench", "bench-secret"


def dcs(n: int, f: float, us: float) -> float:
    """
    Client-server distribution time (seed 002), with no download limit:
    max(NF/u_s, F/d_min) = NF/u_s.
    """
    return n * f / us


def dp2p(n: int, f: float, us: float, u: float) -> float:
    """
    P2P distribution time, no download limit: max(F/u_s, NF/(u_s + N u)).
    """
    return max(f / us, n * f / (us + n * u))


class Child:
    """
    A process in a namespace whose output lines a thread collects, each
    with the wall-clock time it was read.
    """

    def __init__(self, argv: list[str], log) -> None:
        import threading

        self.lines: list[tuple[float, str]] = []
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, text=True, errors="replace")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line))
            del self.lines[:-5000]
            self.log.write(line)

    def first(self, text: str) -> float | None:
        for t, line in list(self.lines):
            if text in line:
                return t
        return None

    def wait(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.first(text)
            if t is not None:
                return t
            if self.proc.poll() is not None:
                self.thread.join(2)
                t = self.first(text)
                if t is not None:
                    return t
                break
            time.sleep(0.02)
        tail = "".join(line for _, line in self.lines[-30:])
        raise RuntimeError(f"{text!r} not printed by {self.proc.args!r} in {timeout} s:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def bftpClients(specJSON: str) -> int:
    """
    (In the clients' namespace.)  N BFTP clients log in, then all fetch
    the file at once; prints the seconds from the first GET to the last
    file verified.
    """
    import json

    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.task import react

    from bftp.client import connect

    spec = json.loads(specJSON)

    async def run(reactor):
        clients = []
        for _ in range(spec["n"]):
            c = await connect(reactor, spec["host"], spec["port"], timeout=60)
            await c.login(BFTP_USER, BFTP_PASSWORD)
            clients.append(c)
        t0 = time.time()
        ends: list[float] = []

        async def one(i: int, c) -> None:
            await c.get(spec["remote"], os.path.join(spec["out"], f"{i}.bin"), resume=False)
            ends.append(time.time())

        await gatherResults([Deferred.fromCoroutine(one(i, c)) for i, c in enumerate(clients)])
        print(json.dumps({"seconds": max(ends) - t0}), flush=True)
        for c in clients:
            await c.quit()

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    return 0


class Experiment:
    """
    One star of namespaces for the whole run: p0 is the server (BFTP) or
    the first seeder, uploading u_s = 10u; p1..pN are the peers, each
    uploading u; the tracker is in the hub.
    """

    def __init__(self, top: str, log) -> None:
        from swarm.testing import Star

        self.top, self.log = top, log
        self.net = Star(max(CURVE_NS) + 1, f"swc{os.getpid()}")
        self.data = os.path.join(top, "data", "course.bin")
        os.makedirs(os.path.dirname(self.data))
        with open(self.data, "wb") as f:
            f.write(os.urandom(int(CURVE_MIB * (1 << 20))))
        self.size = os.path.getsize(self.data)
        self.digest = sha256(self.data)
        self.children: list[Child] = []

    def up(self) -> None:
        self.net.up()
        self.net.shape("p0", 10 * CURVE_U)
        for p in self.net.peers[1:]:
            self.net.shape(p, CURVE_U)

    def down(self) -> None:
        self.stopAll()
        self.net.down()

    def start(self, role: str, argv: list[str]) -> Child:
        c = Child(self.net.exec(role, argv), self.log)
        self.children.append(c)
        return c

    def stopAll(self) -> None:
        for c in self.children:
            c.stop()
        self.children = []

    def tracker(self) -> tuple[Child, str]:
        host = self.net.addresses["hub"]
        t = self.start("hub", [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "swarm", "--tracker",
                               f"tcp:6969:interface={host}", "--rate", "0", "--interval", "10",
                               "--numwant", "50"])
        t.wait("Site starting on", 60)
        return t, f"http://{host}:6969/announce"

    def bftp(self, n: int) -> float:
        root = os.path.dirname(self.data)
        host = self.net.addresses["p0"]
        server = self.start("p0", [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "bftp", "--root", root,
                                   "--user", f"{BFTP_USER}:{BFTP_PASSWORD}", "--listen",
                                   f"tcp:2121:interface={host}", "--max-per-address", "400"])
        server.wait("starting on 2121", 60)
        out = os.path.join(self.top, "bftp-out")
        os.makedirs(out)
        import json

        spec = {"n": n, "host": host, "port": 2121, "remote": os.path.basename(self.data), "out": out}
        clients = self.start("p1", [sys.executable, "-m", "bench.swarm_bench", "bftp-clients", json.dumps(spec)])
        clients.wait('{"seconds"', 60 + 3 * dcs(n, self.size * 8, 10 * CURVE_U))
        line = next(line for _, line in clients.lines if line.startswith('{"seconds"'))
        seconds = json.loads(line)["seconds"]
        for i in range(n):
            if sha256(os.path.join(out, f"{i}.bin")) != self.digest:
                raise RuntimeError(f"BFTP client {i}: wrong data")
        self.stopAll()
        shutil.rmtree(out)
        return seconds

    def swarm(self, kind: str, n: int) -> float:
        """
        N leechers of C{kind} start and announce; then the seeder starts
        in p0, and the time runs from the tracker's first sight of it to
        the last leecher's complete file.
        """
        from swarm.metainfo import makeMetainfo

        tracker, url = self.tracker()
        torrent = os.path.join(self.top, f"course-{kind}-{n}.torrent")
        with open(torrent, "wb") as f:
            f.write(makeMetainfo(self.data, url, CURVE_PIECE))
        outs, leechers = [], []
        hook = os.path.join(self.top, "aria2-done.sh")
        done = os.path.join(self.top, f"aria2-done-{n}.txt")
        with open(hook, "w") as f:
            f.write(f'#!/bin/sh\necho "$(date +%s.%N) $3" >> {done}\n')
        os.chmod(hook, 0o755)
        for p in self.net.peers[1:n + 1]:
            out = os.path.join(self.top, f"get-{kind}-{p}")
            outs.append(out)
            host = self.net.addresses[p]
            if kind == "swarm":
                argv = [os.path.join(BIN, "swarm"), "get", torrent, "-o", out, "--seed", "--host", host,
                        "--port", "6881"]
            else:
                argv = ["aria2c", *ARIA2, "--seed-ratio=0.0", "--seed-time=30", "--listen-port=6881",
                        "--bt-tracker-interval=0", f"--on-bt-download-complete={hook}", "-d", out, torrent]
            leechers.append(self.start(p, argv))
        for p in self.net.peers[1:n + 1]:
            tracker.wait(f'"{self.net.addresses[p]}" - - ', 120)
        seedDir = os.path.dirname(self.data)
        if kind == "swarm":
            argv = [os.path.join(BIN, "swarm"), "seed", torrent, "--data", self.data,
                    "--host", self.net.addresses["p0"], "--port", "6881"]
        else:
            argv = ["aria2c", *ARIA2, "-V", "--seed-ratio=0.0", "--seed-time=30", "--listen-port=6881",
                    "-d", seedDir, torrent]
        self.start("p0", argv)
        t0 = tracker.wait(f'"{self.net.addresses["p0"]}" - - ', 60)
        budget = 60 + 4 * dcs(n, self.size * 8, 10 * CURVE_U)
        if kind == "swarm":
            ends = [c.wait(" complete: ", budget) for c in leechers]
        else:
            deadline = time.monotonic() + budget
            lines: list[str] = []
            while time.monotonic() < deadline:
                if os.path.exists(done):
                    with open(done) as f:
                        lines = f.read().splitlines()
                    if len(lines) >= n:
                        break
                time.sleep(0.05)
            if len(lines) < n:
                raise RuntimeError(f"aria2c: {len(lines)} of {n} leechers complete after {budget:.0f} s")
            ends = [float(line.split()[0]) for line in lines]
        seconds = max(ends) - t0
        ends.sort()
        #: When the first, the median and the last leecher completed.
        self.spread = (ends[0] - t0, ends[len(ends) // 2] - t0, seconds)
        self.stopAll()
        for out in outs:
            if sha256(os.path.join(out, os.path.basename(self.data))) != self.digest:
                raise RuntimeError(f"{kind} leecher {out}: wrong data")
            shutil.rmtree(out)
        return seconds


def curve() -> int:
    """
    The course's experiment: distribution time of one file to N peers,
    client-server (BFTP) against P2P (our swarm, aria2c's), in namespaces
    with tc-shaped uploads; the figure is docs/swarm-distribution.png.
    """
    import json

    if os.geteuid() != 0 or shutil.which("aria2c") is None:
        print("the swarm curve needs root (network namespaces, tc) and aria2c")
        return 1
    top = tempfile.mkdtemp(prefix="swarm-curve-")
    log = open(os.path.join(top, "log.txt"), "w")
    exp = Experiment(top, log)
    f, u, us = exp.size * 8, CURVE_U, 10 * CURVE_U
    print(f"file F = {exp.size / (1 << 20):.1f} MiB, u = {u / 1e6:g} Mbit/s per peer, u_s = {us / 1e6:g} Mbit/s"
          f" (tc tbf on each namespace's link); pieces of {CURVE_PIECE >> 10} KiB; log {log.name}")
    print(f"{'N':>3} {'D_cs':>7} {'BFTP':>7} {'D_P2P':>7} {'swarm':>7} {'aria2c':>7} {'swarm/aria2c':>13} {'swarm/D_P2P':>12}")
    rows = []
    failed = True
    try:
        exp.up()
        for n in CURVE_NS:
            row = {"n": n, "dcs": dcs(n, f, us), "dp2p": dp2p(n, f, us, u)}
            nan = float("nan")
            row["bftp"] = exp.bftp(n) if "bftp" in CURVE_ARMS else nan
            row["swarm"] = exp.swarm("swarm", n) if "swarm" in CURVE_ARMS else nan
            if "swarm" in CURVE_ARMS:
                print(f"    our swarm, N = {n}: first, median, last complete at"
                      f" {', '.join(f'{t:.2f}' for t in exp.spread)} s", flush=True)
            row["aria2c"] = exp.swarm("aria2c", n) if "aria2c" in CURVE_ARMS else nan
            rows.append(row)
            print(f"{n:>3} {row['dcs']:7.2f} {row['bftp']:7.2f} {row['dp2p']:7.2f} {row['swarm']:7.2f}"
                  f" {row['aria2c']:7.2f} {row['swarm'] / row['aria2c']:13.2f} {row['swarm'] / row['dp2p']:12.2f}",
                  flush=True)
        failed = False
    finally:
        exp.down()
        log.close()
        if not failed and not os.environ.get("SWARM_CURVE_KEEP"):
            shutil.rmtree(top, ignore_errors=True)
    print(json.dumps({"F_bytes": exp.size, "u": u, "us": us, "rows": rows}))
    drawCurve(rows, exp.size, u, us, os.path.join(DOCS, "swarm-distribution.png"))
    return 0


def drawCurve(rows: list[dict], size: int, u: float, us: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = size * 8
    ns = list(range(1, max(r["n"] for r in rows) + 1))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.plot(ns, [dcs(n, f, us) for n in ns], color="tab:red", label="D_cs = NF/u_s (client-server bound)")
    ax.plot(ns, [dp2p(n, f, us, u) for n in ns], color="tab:blue",
            label="D_P2P = max(F/u_s, NF/(u_s + Nu)) (P2P bound)")
    xs = [r["n"] for r in rows]
    ax.plot(xs, [r["bftp"] for r in rows], "s", color="tab:red", label="BFTP server, measured")
    ax.plot(xs, [r["swarm"] for r in rows], "o", color="tab:blue", label="our swarm, measured")
    ax.plot(xs, [r["aria2c"] for r in rows], "^", color="tab:green", label="aria2c swarm, measured")
    ax.set_xlabel("N (peers receiving the file)")
    ax.set_ylabel("distribution time (s)")
    ax.set_title(f"F = {size / (1 << 20):.0f} MiB, u = {u / 1e6:g} Mbit/s, u_s = 10u = {us / 1e6:g} Mbit/s"
                 " (namespaces, tc tbf)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def drawDHT(rows: list[dict], path: str) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["nodes"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.plot(ns, [r["queries"] for r in rows], "o-", label="queries per find_node lookup (measured)")
    ax.plot(ns, [r["rounds"] for r in rows], "s-", label="rounds (hops) per lookup (measured)")
    ax.plot(ns, [n / 2 for n in ns], "--", color="grey", label="N/2: the seed's ring without shortcuts")
    ax.plot(ns, [math.log2(n) for n in ns], ":", color="black", label="log2 N")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("N (DHT nodes)")
    ax.set_ylabel("messages / hops")
    ax.set_title("BEP 5 lookups among N of our nodes (mean of 30)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def dht() -> int:
    """
    The DHT lookups in a child process (its own reactor), then their figure.
    """
    import json

    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        subprocess.run([sys.executable, "-m", "bench.swarm_bench", "dht", out], timeout=600, check=True)
        with open(out) as f:
            rows = json.load(f)
    finally:
        os.unlink(out)
    drawDHT(rows, os.path.join(DOCS, "swarm-dht.png"))
    return 0


def main() -> int:
    parts = os.environ.get("SWARM_BENCH_PARTS", "throughput,dht,curve").split(",")
    status = 0
    for part in parts:
        print(f"--- swarm: {part} ---", flush=True)
        status |= {"throughput": throughput, "dht": dht, "curve": curve}[part.strip()]()
    return status


if __name__ == "__main__":
    if sys.argv[1:2] == ["dht"]:
        from twisted.internet import task
        from twisted.internet.defer import Deferred

        task.react(lambda reactor: Deferred.fromCoroutine(dhtLookups(reactor, sys.argv[2] if len(sys.argv) > 2 else None)))
    if sys.argv[1:2] == ["bftp-clients"]:
        sys.exit(bftpClients(sys.argv[2]))
    if sys.argv[1:] == ["curve"]:
        sys.exit(curve())
    sys.exit(main())
