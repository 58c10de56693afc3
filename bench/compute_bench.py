"""
Compute benchmark (docs/benchmarks.md, "Compute"), in one run:

1. The same job (Leibniz, COMPUTE_BENCH_TERMS terms, default 40 million, in
   chunks of 500,000, 60 digits) by the seed's parallel C{bc} pipes (on a
   tenth of the terms, its time multiplied by ten),
   C{multiprocessing.Pool}, our coordinator with 1 and 2 local workers, and
   our coordinator on Dask with 2 workers: wall time, speed-up over one
   process, overhead per chunk; every engine's digits checked against the
   others'.  Each case is run COMPUTE_BENCH_REPEATS times (default 2),
   interleaved, and the fastest run counts: the machine is shared.
2. Wall time against chunk size (a smaller job) for Pool, our workers and
   Dask: docs/compute-chunks.png, where RPC overhead takes over.
3. No-op RPC calls a second, one client calling in turn: XML-RPC on
   twisted.web and on the stdlib's server (client: xmlrpc.client), AMP and
   Perspective Broker (Twisted clients).

Every server and worker is a process of its own on 127.0.0.1.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xmlrpc.client

from compute.series import formatScaled, leibnizChunk
from coursenet.procs import freePort, stopProcess, waitForPort
from coursenet.tls import ensureDevCertificate

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERMS = int(os.environ.get("COMPUTE_BENCH_TERMS", 40_000_000))
CHUNK = 500_000
DIGITS = 60
PROCS = 2
#: bc runs a tenth of the job (it computes about 0.25M terms a second a
#: core), stopped after this many seconds.
BC_LIMIT = float(os.environ.get("COMPUTE_BENCH_BC_LIMIT", 400))
SWEEP_TERMS = 2_000_000
SWEEP_CHUNKS = (1_000, 4_000, 16_000, 64_000, 250_000, 1_000_000)
NOOP_CALLS = 2_000
REPEATS = int(os.environ.get("COMPUTE_BENCH_REPEATS", 2))
PNG = os.path.join(TOP, "docs", "compute-chunks.png")


def chunks(terms: int, chunk: int) -> list[tuple[int, int, int]]:
    return [(a, min(a + chunk, terms), DIGITS) for a in range(0, terms, chunk)]


def _chunk(args: tuple[int, int, int]) -> int:
    return leibnizChunk(*args)


def treeCPU(pids: list[int]) -> float:
    """
    CPU seconds (user and system) used so far by these processes and their
    living descendants.
    """
    import psutil

    total = 0.0
    for pid in pids:
        try:
            top = psutil.Process(pid)
            tree = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def oneProcess(terms: int) -> tuple[float, float, str]:
    start, cpu = time.perf_counter(), time.process_time()
    value = sum(leibnizChunk(a, b, d) for a, b, d in chunks(terms, CHUNK))
    return time.perf_counter() - start, time.process_time() - cpu, formatScaled(value, DIGITS)


def pool(terms: int, chunk: int) -> tuple[float, float, str]:
    import psutil

    ctx = multiprocessing.get_context("spawn")
    before = {c.pid for c in psutil.Process().children()}
    with ctx.Pool(PROCS) as p:
        p.map(_chunk, [(0, 10, DIGITS)] * PROCS)  # started, imports done
        workers = [c.pid for c in psutil.Process().children() if c.pid not in before]
        start, cpu, used = time.perf_counter(), time.process_time(), treeCPU(workers)
        value = sum(p.map(_chunk, chunks(terms, chunk), chunksize=1))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu + treeCPU(workers) - used
        return wall, cpu, formatScaled(value, DIGITS)


def bcPipes(terms: int) -> tuple[float, float, str]:
    import resource

    from tests.compute_support import bcPipes as run

    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        digits = run(terms, CHUNK, DIGITS, timeout=BC_LIMIT)
    except subprocess.TimeoutExpired:
        return float("inf"), float("inf"), "stopped"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return time.perf_counter() - start, cpu, digits


class Site:
    """
    A coordinator (twistd compute) with local workers, or on Dask.
    """

    def __init__(self, tmp: str, workers: list[int], engine: str | None = None, others: list[int] = ()) -> None:
        """
        @param others: more processes that work for this site (a Dask
            cluster's), counted in its CPU time.
        """
        self.others = list(others)
        cert, key = ensureDevCertificate(os.path.join(tmp, "tls"))
        self.rpc, wport = freePort(), freePort()
        token = os.path.join(tmp, "w.token")
        with open(token, "w") as f:
            f.write("w1:bench-token\n")
        args = [
            os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
            "--logfile", os.path.join(tmp, "coordinator.log"), "compute",
            "--rpc", f"tcp:{self.rpc}:interface=127.0.0.1", "--db", ":memory:",
            "--workers", f"tcp:{wport}:interface=127.0.0.1", "--tls-cert", cert, "--tls-key", key,
            "--user", "w1:bench-token",
        ]
        if engine:
            args += ["--engine", engine]
        self.proc = subprocess.Popen(args, cwd=tmp)
        waitForPort(self.rpc, self.proc)
        self.workers = [
            subprocess.Popen(
                [os.path.join(os.path.dirname(sys.executable), "compute-worker"), "--connect", f"127.0.0.1:{wport}",
                 "--cafile", cert, "--token-file", token, "--procs", str(n)],
                stderr=subprocess.DEVNULL, start_new_session=True)
            for n in workers
        ]
        self.server = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.rpc}/")
        # Warm up: every worker process started and connected.
        for _ in range(3):
            self.run(4 * sum(workers or [4]), 1)

    def run(self, terms: int, chunk: int) -> tuple[float, float, str]:
        pids = [self.proc.pid, *(p.pid for p in self.workers), *self.others]
        start, cpu, used = time.perf_counter(), time.process_time(), treeCPU(pids)
        job = self.server.submit("leibniz", terms, chunk, DIGITS)
        # wait() answers when the job finishes: no polling load on the coordinator.
        while self.server.wait(job, 300)["state"] not in ("done", "failed", "cancelled"):
            pass
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu + treeCPU(pids) - used
        return wall, cpu, str(self.server.result(job))

    def stop(self) -> None:
        from tests.compute_support import killGroup

        for p in self.workers:
            killGroup(p)
        stopProcess(self.proc)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in rows])


def jobTable(tmp: str) -> None:
    from tests.compute_support import DaskCluster

    n = len(chunks(TERMS, CHUNK))
    print(f"Job: Leibniz, {TERMS:,} terms in {n} chunks of {CHUNK:,}, {DIGITS} digits; {PROCS} processes"
          f" where parallel; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; best of {REPEATS}",
          flush=True)
    base, baseCPU, reference = min(oneProcess(TERMS) for _ in range(REPEATS))
    print(f"  one process: {base:.2f} s", flush=True)
    small = TERMS // 10
    bcWall, bcCPU, bcDigits = bcPipes(small)
    bcOk = bcDigits == oneProcess(small)[2]
    print(f"  bc pipes, {small:,} terms: {bcWall:.2f} s", flush=True)
    cluster = DaskCluster(tmp, workers=PROCS)
    daskPids = [p.pid for p in (cluster.scheduler, *cluster.workers)]
    sites = {
        "coordinator + 1 worker --procs 1": (Site(tmp, [1]), 1),
        "coordinator + 1 worker --procs 2": (Site(tmp, [2]), 2),
        "coordinator + 2 workers --procs 1": (Site(tmp, [1, 1]), 2),
        "coordinator on Dask, 2 workers x 1 thread":
            (Site(tmp, [], engine=f"dask://127.0.0.1:{cluster.port}", others=daskPids), 2),
    }
    best: dict[str, tuple[float, float, str]] = {}
    try:
        for _ in range(REPEATS):
            runs = [("multiprocessing.Pool(2).map", lambda: pool(TERMS, CHUNK))]
            runs += [(label, lambda site=site: site.run(TERMS, CHUNK)) for label, (site, _) in sites.items()]
            for label, run in runs:
                result = run()
                print(f"  {label}: {result[0]:.2f} s, CPU {result[1]:.2f} s", flush=True)
                best[label] = min(best.get(label, result), result)
    finally:
        for site, _ in sites.values():
            site.stop()
        cluster.stop()
    results = [("one Python process (baseline)", base, baseCPU, reference),
               (f"seed: parallel bc pipes (measured on {small:,} terms, x10)", bcWall * 10, bcCPU * 10,
                reference if bcOk else "different")]
    results.append(("multiprocessing.Pool(2).map", *best["multiprocessing.Pool(2).map"]))
    results += [(label, *best[label]) for label in sites]
    rows = []
    poolTime = best["multiprocessing.Pool(2).map"][0]
    for label, wall, cpu, digits in results:
        ok = "same" if digits == reference else ("stopped" if digits == "stopped" else "DIFFERENT")
        overhead = "-" if label.startswith("seed") else f"{(cpu - baseCPU) / n * 1000:.1f}"
        rows.append([label, f"{wall:.2f}", f"{cpu:.2f}", f"{base / wall:.2f}", f"{wall / poolTime:.2f}", overhead, ok])
    print(table(rows, ["engine", "wall s", "CPU s", "speed-up", "vs Pool", "overhead CPU ms/chunk", "digits"]))
    print(f"digits: {reference}; load average now {os.getloadavg()[0]:.1f}")
    if any(r[-1] == "DIFFERENT" for r in rows):
        raise SystemExit("an engine gave different digits")


def sweep(tmp: str) -> None:
    from tests.compute_support import DaskCluster

    print(f"\nChunk size sweep: {SWEEP_TERMS:,} terms, {PROCS} processes, best of {REPEATS}", flush=True)
    cluster = DaskCluster(tmp, workers=PROCS)
    ours = Site(tmp, [1, 1])
    dask = Site(tmp, [], engine=f"dask://127.0.0.1:{cluster.port}",
                others=[p.pid for p in (cluster.scheduler, *cluster.workers)])
    runs = {
        "multiprocessing.Pool(2)": lambda chunk: pool(SWEEP_TERMS, chunk),
        "coordinator + 2 workers": lambda chunk: ours.run(SWEEP_TERMS, chunk),
        "coordinator on Dask (2 workers)": lambda chunk: dask.run(SWEEP_TERMS, chunk),
    }
    series: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for chunk in SWEEP_CHUNKS:
            for name, run in runs.items():
                wall, cpu, _ = min(run(chunk) for _ in range(REPEATS))
                series[name].append(wall)
                cpus[name].append(cpu)
    finally:
        ours.stop()
        dask.stop()
        cluster.stop()
    rows = [[f"{c:,}", f"{-(-SWEEP_TERMS // c):,}", *(f"{series[k][i]:.2f} / {cpus[k][i]:.2f}" for k in series)]
            for i, c in enumerate(SWEEP_CHUNKS)]
    print("wall s / CPU s")
    print(table(rows, ["chunk", "chunks", *series]))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, times in series.items():
        ax.plot(SWEEP_CHUNKS, times, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("chunk size (terms)")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"Leibniz, {SWEEP_TERMS:,} terms at {DIGITS} digits, {PROCS} processes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PNG, dpi=100)
    print(f"figure: {os.path.relpath(PNG, TOP)}")


# No-op RPC servers and clients, each run as `python -m bench.compute_bench serve|call KIND PORT`.

def serve(kind: str, port: int) -> None:
    if kind == "stdlib":
        from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

        class Handler(SimpleXMLRPCRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as twisted.web

            def log_message(self, *args) -> None:
                pass

        server = SimpleXMLRPCServer(("127.0.0.1", port), Handler, logRequests=False)
        server.register_function(lambda: 0, "noop")
        server.serve_forever()
        return
    from twisted.internet import endpoints, reactor

    if kind == "twisted":
        from twisted.web import server as web
        from twisted.web import xmlrpc

        class NoOp(xmlrpc.XMLRPC):
            def xmlrpc_noop(self) -> int:
                return 0

        site = web.Site(NoOp())
        site.noisy = False
        factory = site
    elif kind == "amp":
        from twisted.internet.protocol import Factory
        from twisted.protocols import amp

        class Server(amp.AMP):
            @NoOpCommand.responder
            def noop(self) -> dict:
                return {}

        factory = Factory.forProtocol(Server)
    else:
        from twisted.spread import pb

        class Root(pb.Root):
            def remote_noop(self) -> int:
                return 0

        factory = pb.PBServerFactory(Root())
    endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    reactor.run()


def _noOpCommand():
    from twisted.protocols import amp

    class NoOp(amp.Command):
        commandName = b"NoOp"
        arguments: list = []
        response: list = []

    return NoOp


NoOpCommand = _noOpCommand()


def call(kind: str, port: int, count: int) -> None:
    """
    C{count} calls one after another; prints calls a second.
    """
    if kind in ("stdlib", "twisted"):
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/")
        proxy.noop()
        start = time.perf_counter()
        for _ in range(count):
            proxy.noop()
        print(count / (time.perf_counter() - start))
        return
    from twisted.internet import endpoints
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    async def run(reactor) -> None:
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        if kind == "amp":
            from twisted.internet.protocol import Factory
            from twisted.protocols import amp

            proto = await ep.connect(Factory.forProtocol(amp.AMP))
            once = lambda: proto.callRemote(NoOpCommand)  # noqa: E731
        else:
            from twisted.spread import pb

            factory = pb.PBClientFactory()
            await ep.connect(factory)
            root = await factory.getRootObject()
            once = lambda: root.callRemote("noop")  # noqa: E731
        await once()
        start = time.perf_counter()
        for _ in range(count):
            await once()
        print(count / (time.perf_counter() - start))

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


def noOpTable() -> None:
    print(f"\nNo-op RPC: {NOOP_CALLS:,} calls one after another, server and client each a process", flush=True)
    rows = []
    for label, kind in [("XML-RPC, twisted.web server", "twisted"), ("XML-RPC, stdlib SimpleXMLRPCServer", "stdlib"),
                        ("AMP (Twisted)", "amp"), ("Perspective Broker (Twisted)", "pb")]:
        port = freePort()
        server = subprocess.Popen([sys.executable, "-m", "bench.compute_bench", "serve", kind, str(port)], cwd=TOP)
        try:
            waitForPort(port, server)
            out = subprocess.run([sys.executable, "-m", "bench.compute_bench", "call", kind, str(port), str(NOOP_CALLS)],
                                 cwd=TOP, capture_output=True, text=True, timeout=300, check=True)
            rate = float(out.stdout.strip().splitlines()[-1])
        finally:
            stopProcess(server)
        rows.append([label, f"{rate:,.0f}", f"{1e6 / rate:.0f}"])
    base = float(rows[0][1].replace(",", ""))
    for r in rows:
        r.append(f"{float(r[1].replace(',', '')) / base:.2f}")
    print(table(rows, ["RPC", "calls/s", "us/call", "vs twisted.web XML-RPC"]))


def main() -> int:
    if not shutil.which("bc"):
        print("compute bench: bc is not installed (Debian package bc)", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="compute-bench-")
    try:
        jobTable(tmp)
        sweep(tmp)
        noOpTable()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "call":
        call(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
