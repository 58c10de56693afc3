"""
C{concurrency-demo}: event-driven against threaded and forking servers,
measured (docs/event-vs-threads.md).

For a service (chat or bftp), each implementation (Twisted under the
epoll, poll and select reactors; the thread-per-connection and the
process-per-connection twins) runs in its own process on 127.0.0.1, and N
clients, spread over a few load processes, drive it for a bounded time.
Throughput, latency, errors, and the server's memory and CPU go to
C{DIR/results.csv}, and figures to C{DIR/*.png}.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from coursenet.procs import freePort, stopProcess, waitForPort

IMPLEMENTATIONS = ("twisted-epoll", "twisted-select", "twisted-poll", "threaded", "forking")
SERVICES = ("chat", "bftp")
COLUMNS = ("implementation", "clients", "throughput", "p50_ms", "p99_ms", "errors", "rss_mb", "cpu_s")
#: Load processes at most, and clients per load process at least.
MAX_LOADERS = 4
#: The size of the file BFTP clients fetch.
BFTP_FILE = 16 * 1024
#: Chat clients per room: every message goes to the others in its room.
ROOM_SIZE = 10
BIN = os.path.dirname(sys.executable)


def serverCommand(service: str, implementation: str, port: int, data: list[str]) -> list[str]:
    """
    The command line that runs C{service} as C{implementation} on
    127.0.0.1:C{port}, with the service's data options C{data}.
    """
    if implementation.startswith("twisted-"):
        reactor = implementation.split("-", 1)[1]
        return [
            os.path.join(BIN, "twistd"), "--reactor", reactor, "-n", "--pidfile=", "--logfile=-",
            service, "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024", *data,
        ]
    if implementation not in ("threaded", "forking"):
        raise ValueError(f"unknown implementation {implementation!r}; choose from {', '.join(IMPLEMENTATIONS)}")
    forking = ["--forking"] if implementation == "forking" else []
    return [sys.executable, "-m", f"{service}.threaded", "--listen", f"127.0.0.1:{port}", *forking, *data]


class RunningServer:
    """
    One implementation of a service in a process of its own, on 127.0.0.1.
    """

    def __init__(self, service: str, implementation: str, data: list[str], log) -> None:
        self.port = freePort()
        self.proc = subprocess.Popen(
            serverCommand(service, implementation, self.port, data),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            waitForPort(self.port, self.proc, timeout=30)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        stopProcess(self.proc, timeout=10)


# -- the load processes -------------------------------------------------------


@dataclass
class LoadResult:
    ops: int
    errors: int
    latencies: list[float]


_FAILURES = (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError)


async def _replyLine(reader: asyncio.StreamReader) -> bytes:
    """
    The next line that starts with a reply code (chat events skipped).
    """
    while True:
        line = await reader.readuntil(b"\r\n")
        if line[:3].isdigit():
            return line


async def _chatStart(reader, writer, index: int) -> str:
    """
    A nickname and a room of L{ROOM_SIZE}: every SAY goes to 9 others.
    """
    room = f"r{index // ROOM_SIZE}"
    writer.write(f"NICK c{index}\r\nJOIN {room}\r\n".encode())
    for expect in (b"220", b"230", b"250"):
        if not (await _replyLine(reader)).startswith(expect):
            raise ConnectionError("refused")
    return room


async def _chatRequest(reader, writer, room: str) -> bool:
    """
    One SAY, until its 200.
    """
    writer.write(f"SAY {room} a message for the room\r\n".encode())
    return (await _replyLine(reader)).startswith(b"200")


async def _bftpStart(reader, writer, index: int) -> None:
    writer.write(b"HELLO BFTP/1\r\nUSER anonymous\r\nPASS load\r\n")
    for expect in (b"220", b"200", b"331", b"230"):
        if not (await _replyLine(reader)).startswith(expect):
            raise ConnectionError("refused")


async def _bftpRequest(reader, writer, _) -> bool:
    """
    One GET of the small file, until its 226.
    """
    writer.write(b"GET /file.bin\r\n")
    if not (await _replyLine(reader)).startswith(b"150"):
        return False
    got = 0
    while n := int(await reader.readexactly(8), 16):
        got += len(await reader.readexactly(n))
    return (await _replyLine(reader)).startswith(b"226") and got == BFTP_FILE


#: Each service's login and one request; what the login returns (a room,
#: or nothing) is given to every request of the same client.
_WORKLOADS: dict[str, tuple[Callable[[Any, Any, int], Awaitable[Any]], Callable[[Any, Any, Any], Awaitable[bool]]]] = {
    "chat": (_chatStart, _chatRequest),
    "bftp": (_bftpStart, _bftpRequest),
}


async def _client(service: str, port: int, index: int, go: asyncio.Event, stop: list, result: LoadResult, ready, writers: list) -> None:
    """
    One client: connect and log in, say it is ready, then from C{go} until
    C{stop} one request after another, each timed until its answer.  The
    connection stays open (in C{writers}) for the caller to close.
    """
    start, request = _WORKLOADS[service]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        context = await start(reader, writer, index)
    except _FAILURES:
        result.errors += 1
        return
    finally:
        ready()
    writers.append(writer)
    await go.wait()
    try:
        while not stop:
            t = time.perf_counter()
            if await request(reader, writer, context):
                result.latencies.append((time.perf_counter() - t) * 1000)
                result.ops += 1
            else:
                result.errors += 1
    except _FAILURES:
        result.errors += 1


async def _load(service: str, port: int, first: int, count: int, seconds: float, connectTimeout: float) -> LoadResult:
    import json

    result = LoadResult(0, 0, [])
    go = asyncio.Event()
    stop: list[bool] = []
    writers: list[asyncio.StreamWriter] = []
    left = [count]
    allReady = asyncio.Event()

    def ready():
        left[0] -= 1
        if not left[0]:
            allReady.set()

    tasks = []
    for i in range(first, first + count):
        tasks.append(asyncio.create_task(_client(service, port, i, go, stop, result, ready, writers)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.01)  # a gentle ramp: the listen backlog is finite
    try:
        await asyncio.wait_for(allReady.wait(), connectTimeout)
    except asyncio.TimeoutError:
        pass
    print(json.dumps({"ready": count - left[0]}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    go.set()
    await asyncio.sleep(seconds)
    stop.append(True)
    done, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    result.errors += left[0]  # neither ready nor failed in time
    print(json.dumps({"ops": result.ops, "errors": result.errors, "latencies": result.latencies}), flush=True)
    # The connections stay open until the server's memory is measured.
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), 60)
    except asyncio.TimeoutError:
        pass
    for writer in writers:
        writer.close()
    return result


def _loaderMain(spec: str) -> int:
    import json
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    service, port, first, count, seconds, connectTimeout = json.loads(spec)
    asyncio.run(_load(service, port, first, count, seconds, connectTimeout))
    return 0


# -- the measurements ---------------------------------------------------------------


def _tree(pid: int):
    import psutil

    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpuSeconds(pid: int) -> dict[int, float]:
    """
    CPU seconds used so far by each of the server's processes.

    From C{/proc/PID/task/*/schedstat}, in nanoseconds, where Linux has it
    (threads that end meanwhile are missed): the
    clock-tick counts of C{/proc/PID/stat} (10 ms) round a thousand forked
    children that each ran a few milliseconds down to nothing.
    """
    import psutil

    times = {}
    for p in _tree(pid):
        try:
            total = 0
            for task in os.listdir(f"/proc/{p.pid}/task"):
                with open(f"/proc/{p.pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            times[p.pid] = total / 1e9
        except (OSError, ValueError, IndexError):
            try:
                t = p.cpu_times()
                times[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return times


def _memoryMB(pid: int) -> float:
    """
    The server's memory: the proportional set size summed over its
    processes, so that pages forked children share count once.
    """
    import psutil

    total = 0
    for p in _tree(pid):
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _dataOptions(service: str, workdir: str) -> list[str]:
    if service == "chat":
        # Every load client comes from 127.0.0.1: lift the per-address cap.
        return ["--history-db", ":memory:", "--flood-rate", "0", "--idle-timeout", "600",
                "--max-per-address", "100000", "--max-connections", "100000"]
    root = os.path.join(workdir, "root")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "file.bin"), "wb") as f:
        f.write(hashlib.sha256(b"demo").digest() * (BFTP_FILE // 32))
    return [
        "--root", root, "--anonymous", "--max-per-address", "100000",
        "--max-connections", "100000", "--idle-timeout", "600",
    ]


def measure(service: str, implementation: str, clients: int, seconds: float, workdir: str, log) -> dict:
    """
    One point: start the server, connect C{clients} clients from a few load
    processes, let them work C{seconds}, stop everything.

    @return: a row of L{COLUMNS}.
    """
    import json

    data = _dataOptions(service, workdir)
    server = RunningServer(service, implementation, data, log)
    loaders: list[subprocess.Popen] = []
    try:
        n = min(MAX_LOADERS, clients)
        shares = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
        first = 0
        connectTimeout = 10 + clients / 50
        for share in shares:
            spec = json.dumps([service, server.port, first, share, seconds, connectTimeout])
            loaders.append(subprocess.Popen(
                [sys.executable, "-m", "coursenet.demo", "--loader", spec],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            ))
            first += share
        for loader in loaders:
            assert loader.stdout is not None  # stdin and stdout are PIPEs
            loader.stdout.readline()  # ready (bounded by the loader's connect timeout)
        before = _cpuSeconds(server.proc.pid)
        for loader in loaders:
            assert loader.stdin is not None
            loader.stdin.write("go\n")
            loader.stdin.flush()
        time.sleep(seconds)
        after = _cpuSeconds(server.proc.pid)
        ops, errors, latencies = 0, 0, []
        for loader, share in zip(loaders, shares):
            assert loader.stdout is not None
            try:
                result = json.loads(loader.stdout.readline())
            except ValueError:
                errors += share
                continue
            ops += result["ops"]
            errors += result["errors"]
            latencies += result["latencies"]
        # Measured with every client still connected.
        memory = _memoryMB(server.proc.pid)
        alive = server.proc.poll() is None
        for loader in loaders:
            try:
                loader.communicate("close\n", timeout=30)
            except subprocess.TimeoutExpired:
                pass  # stopped below
    finally:
        for loader in loaders:
            stopProcess(loader, timeout=5)
        server.stop()
    return {
        "implementation": implementation,
        "clients": clients,
        "throughput": round(ops / seconds, 1),
        "p50_ms": round(_percentile(latencies, 0.50), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
        "errors": errors + (0 if alive else clients),
        "rss_mb": round(memory, 1),
        "cpu_s": round(sum(after.get(pid, 0) - before.get(pid, 0) for pid in after), 3),
    }


# -- the figures ----------------------------------------------------------------------


FIGURES = (
    ("throughput", "throughput.png", "requests answered per second"),
    ("p99_ms", "latency_p99.png", "99th percentile latency (ms)"),
    ("rss_mb", "memory.png", "server memory, PSS (MB)"),
)
#: One look per implementation, the same in every figure: colour, marker
#: and line style all differ, so the lines stay apart in grey print too.
STYLES = {
    "twisted-epoll": ("#1f77b4", "o", "-"),
    "twisted-poll": ("#2ca02c", "s", "--"),
    "twisted-select": ("#9467bd", "D", ":"),
    "threaded": ("#d62728", "^", "-."),
    "forking": ("#ff7f0e", "v", (0, (5, 1, 1, 1))),
}
#: Slide size: 1600 x 1000 pixels.
SIZE, DPI = (16, 10), 100


def runInfo(seconds: float, clients: list[int]) -> dict:
    """
    What a caption says about the run that made a figure: the load, the
    duration, the machine and the commit.
    """
    import platform

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "seconds": seconds, "clients": clients, "cpus": os.cpu_count(), "cpu": model,
        "python": platform.python_version(), "commit": commit, "date": time.strftime("%Y-%m-%d"),
    }


def caption(info: dict) -> str:
    clients = ", ".join(str(c) for c in info["clients"])
    return (
        f"{clients} concurrent clients, {info['seconds']:g} s a point; {info['cpus']} CPUs ({info['cpu']}),"
        f" Python {info['python']}; commit {info['commit']}, {info['date']}. Reproduce: concurrency-demo (docs/event-vs-threads.md)"
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    pyplot.rcParams.update({"font.size": 20, "axes.titlesize": 26, "axes.labelsize": 22,
                            "legend.fontsize": 18, "xtick.labelsize": 18, "ytick.labelsize": 18})
    return pyplot


#: A line this many times under the tallest one gets the zoomed inset.
ZOOM_RATIO = 5
#: Where the inset goes, in axes fractions (left, bottom, width, height):
#: below the legend, left of the tallest line's rise.
INSET_BOX = (0.1, 0.25, 0.42, 0.38)


def _drawMeasure(ax, rows: list[dict], column: str, label: str, clients: list[int]) -> None:
    from matplotlib.ticker import FuncFormatter

    implementations = list(dict.fromkeys(r["implementation"] for r in rows))
    # The load levels are evenly spaced and labelled with their counts (10,
    # 100 and 1000 would crowd the left of a linear axis); the measure is
    # on a linear axis from zero, so heights compare as they are.
    where = {n: i for i, n in enumerate(clients)}
    series = {impl: sorted((r["clients"], r[column]) for r in rows if r["implementation"] == impl)
              for impl in implementations}

    def draw(axes, impls, size: float) -> None:
        for impl in impls:
            colour, marker, style = STYLES.get(impl, (None, "o", "-"))
            points = series[impl]
            axes.plot([where[p[0]] for p in points], [p[1] for p in points], color=colour, marker=marker,
                      linestyle=style, linewidth=size / 4, markersize=size, label=impl)
        axes.set_xlim(-0.3, len(clients) - 0.7)
        axes.set_ylim(bottom=0)
        axes.set_xticks(range(len(clients)), [f"{n:,}" for n in clients])
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        axes.grid(True, alpha=0.3)

    draw(ax, implementations, 12)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(label)
    # When one implementation dwarfs the others (the forking server's
    # memory), their lines lie on top of each other along zero: an inset
    # shows them again on their own linear scale.
    peaks = {impl: max((p[1] for p in series[impl]), default=0) for impl in implementations}
    top = max(peaks.values(), default=0)
    small = [impl for impl in implementations if peaks[impl] * ZOOM_RATIO < top]
    if small and len(small) < len(implementations):
        inset = ax.inset_axes(INSET_BOX)
        draw(inset, small, 7)
        inset.tick_params(labelsize=13)
        big = ", ".join(impl for impl in implementations if impl not in small)
        inset.set_title(f"zoomed in, without {big}", fontsize=14)


def plot(rows: list[dict], out: str, service: str, info: dict | None = None) -> list[str]:
    """
    The slide figures, 1600 x 1000 pixels: one PNG per measure against the
    number of clients (one line per implementation, linear axes from
    zero), and C{summary.png} with the three side by side; each with a
    caption line saying how the run was made.

    @param info: L{runInfo} of the run (from C{run.json} when replotting).
    @return: the paths written.
    """
    pyplot = _pyplot()
    clients = sorted({r["clients"] for r in rows})
    note = caption(info) if info else ""
    paths = []
    for column, name, label in FIGURES:
        fig, ax = pyplot.subplots(figsize=SIZE, dpi=DPI)
        _drawMeasure(ax, rows, column, label, clients)
        ax.set_title(f"{service}: {label}")
        ax.legend(loc="upper left")
        fig.text(0.01, 0.01, note, fontsize=13, color="#444444")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        path = os.path.join(out, name)
        fig.savefig(path)
        pyplot.close(fig)
        paths.append(path)
    fig, axes = pyplot.subplots(1, 3, figsize=(24, 10), dpi=DPI)
    for ax, (column, _, label) in zip(axes, FIGURES):
        _drawMeasure(ax, rows, column, label, clients)
        ax.set_title(label, fontsize=22)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f"{service}: one event loop against a thread or a process per client", y=0.985, fontsize=26)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.93), ncol=len(labels), fontsize=18)
    fig.text(0.01, 0.01, note, fontsize=13, color="#444444")
    fig.tight_layout(rect=(0, 0.04, 1, 0.86))
    path = os.path.join(out, "summary.png")
    fig.savefig(path)
    pyplot.close(fig)
    paths.append(path)
    return paths


def readCSV(path: str) -> list[dict]:
    """
    The rows L{writeCSV} wrote, with numbers as numbers.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key != "implementation":
                row[key] = float(value) if "." in value else int(value)
    return rows


def writeCSV(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _list(text: str, allowed=None, kind=str) -> list:
    items = [kind(x) for x in text.split(",") if x]
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(map(str, bad))}; choose from {', '.join(allowed)}")
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="concurrency-demo",
        description="Measure the Twisted servers (epoll, select, poll reactors) against their"
        " thread-per-connection and process-per-connection twins, on 127.0.0.1.",
    )
    parser.add_argument("--service", type=lambda t: _list(t, SERVICES), default=list(SERVICES),
                        help="chat, bftp or both, comma-separated (default: both; with both,"
                        " each gets a subdirectory of --out)")
    parser.add_argument("--clients", type=lambda t: _list(t, kind=int), default=[10, 100, 1000],
                        help="concurrency levels, comma-separated (default 10,100,1000)")
    parser.add_argument("--impl", type=lambda t: _list(t, IMPLEMENTATIONS), default=list(IMPLEMENTATIONS),
                        help=f"implementations, comma-separated (default: {','.join(IMPLEMENTATIONS)})")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point (0.5-30, default 3)")
    parser.add_argument("--out", help="directory for results.csv and the PNG figures")
    parser.add_argument("--replot", action="store_true",
                        help="only draw the figures again from --out's results.csv and run.json")
    parser.add_argument("--loader", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loader:
        return _loaderMain(args.loader)
    if args.replot:
        return _replot(args, parser)
    if not args.out:
        parser.error("--out DIR is required")
    if not 0.5 <= args.seconds <= 30:
        parser.error("--seconds must be between 0.5 and 30")
    if any(not 1 <= n <= 5000 for n in args.clients):
        parser.error("--clients must be between 1 and 5000")
    from coursenet.blocking import raiseFileLimit

    raiseFileLimit()
    started = time.monotonic()
    for service in args.service:
        out = args.out if len(args.service) == 1 else os.path.join(args.out, service)
        os.makedirs(out, exist_ok=True)
        rows = []
        workdir = tempfile.mkdtemp(prefix="concurrency-demo-")
        try:
            with open(os.path.join(workdir, "servers.log"), "wb") as log:
                for impl in args.impl:
                    for clients in args.clients:
                        row = measure(service, impl, clients, args.seconds, workdir, log)
                        rows.append(row)
                        print(f"{service:5} {impl:15} {clients:5} clients: {row['throughput']:9.1f}/s"
                              f" p50 {row['p50_ms']:8.2f} ms p99 {row['p99_ms']:8.2f} ms"
                              f" errors {row['errors']:4} {row['rss_mb']:8.1f} MB cpu {row['cpu_s']:6.2f} s",
                              flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        writeCSV(rows, os.path.join(out, "results.csv"))
        info = runInfo(args.seconds, args.clients)
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump(info, f, indent=1)
        print(f"wrote {os.path.join(out, 'results.csv')} and run.json")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("no figures: they need matplotlib (pip install 'coursenet[figures]')", file=sys.stderr)
            continue
        for path in plot(rows, out, service, info):
            print(f"wrote {path}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


def _replot(args, parser) -> int:
    import json

    if not args.out:
        parser.error("--out DIR is required")
    for service in args.service:
        out = args.out if len(args.service) == 1 else os.path.join(args.out, service)
        try:
            rows = readCSV(os.path.join(out, "results.csv"))
        except OSError as e:
            parser.error(f"--replot needs {out}/results.csv: {e.strerror}")
        try:
            with open(os.path.join(out, "run.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = None
        for path in plot(rows, out, service, info):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
