"""
Chat benchmark: fan-out throughput (messages delivered per second) with 10,
100 and 1000 clients in one room, and server memory per idle connection
with 10,000 connections; our server through its course protocol and its
IRC front door, ngircd (Debian's C IRC server) through IRC, in the same
run.  Both servers run with their flood penalties off, so the figures are
capacity, not policy.

Then two nodes: two of our chat nodes sharing the room through one
redis-server (C{--bus}), against two ngircd servers linked as one IRC
network, 1000 IRC clients split between the two, the same burst: deliveries
per second and the p99 delivery latency (CHAT_BENCH_TWO=0 skips it).  On
one machine this measures what the link costs, not capacity gained.

Each server is a separate process; the load comes from this one (Twisted,
one reactor), the same load code for every server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import psutil
from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater, react

from coursenet.procs import freePort, stopProcess

SIZES = tuple(int(n) for n in os.environ.get("CHAT_BENCH_SIZES", "10,100,1000").split(",") if n)
#: Idle connections measured (CHAT_BENCH_IDLE=0 skips the measure).
IDLE = int(os.environ.get("CHAT_BENCH_IDLE", "10000"))
#: The two-node measure (CHAT_BENCH_TWO=0 skips it).
TWO = os.environ.get("CHAT_BENCH_TWO", "1") != "0"
SENDERS = 10
MESSAGES = 20
TIMEOUT = 120.0


class Dialect:
    """
    How a load client registers, joins and counts messages on one wire.
    """

    def __init__(self, irc: bool) -> None:
        self.irc = irc
        self.welcome = b" 001 " if irc else b"230 "
        self.joined = b" 366 " if irc else b"250 "
        self.message = b" PRIVMSG #" if irc else b"MESSAGE "

    def register(self, nick: str) -> bytes:
        if self.irc:
            return f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode()
        return f"NICK {nick}\r\n".encode()

    def join(self, room: str) -> bytes:
        return f"JOIN #{room}\r\n".encode() if self.irc else f"JOIN {room}\r\n".encode()

    def say(self, room: str, text: str) -> bytes:
        if self.irc:
            return f"PRIVMSG #{room} :{text}\r\n".encode()
        return f"SAY {room} {text}\r\n".encode()

    def pong(self, line: bytes) -> bytes:
        return b"PONG " + line.split(b" ", 1)[1].lstrip(b":") + b"\r\n"


class LoadClient(Protocol):
    def __init__(self, dialect: Dialect, nick: str, room: str | None) -> None:
        self.dialect = dialect
        self.nick = nick
        self.room = room
        self.ready: defer.Deferred = defer.Deferred()
        self.received = 0
        #: When set, (time, messages) for each read of the fan-out.
        self.stamps: list[tuple[float, int]] | None = None
        self._buf = b""
        self._state = "welcome"

    def connectionMade(self) -> None:
        self.transport.write(self.dialect.register(self.nick))

    def dataReceived(self, data: bytes) -> None:
        if self._state == "ready":
            # The fan-out: count whole lines' messages in C, so that this
            # one process can keep up with the server it measures.
            chunk = self._buf + data
            end = chunk.rfind(b"\n") + 1
            self._buf = chunk[end:]
            whole = chunk[:end]
            got = whole.count(self.dialect.message)
            self.received += got
            if self.stamps is not None and got:
                self.stamps.append((time.perf_counter(), got))
            if b"PING" in whole:
                for line in whole.split(b"\n"):
                    if line.startswith(b"PING"):
                        self.transport.write(self.dialect.pong(line))
            return
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        d = self.dialect
        for line in lines:
            if d.message in line:
                self.received += 1
            elif line.startswith(b"PING"):
                self.transport.write(d.pong(line))
            elif self._state == "welcome" and d.welcome in line:
                if self.room is None:
                    self._ready()
                else:
                    self._state = "join"
                    self.transport.write(d.join(self.room))
            elif self._state == "join" and d.joined in line:
                self._ready()

    def _ready(self) -> None:
        self._state = "ready"
        self.ready.callback(self)

    def connectionLost(self, reason=None) -> None:
        if not self.ready.called:
            self.ready.errback(reason)


def _factory(dialect: Dialect, nick: str, room: str | None) -> Factory:
    factory = Factory()
    factory.protocol = lambda: LoadClient(dialect, nick, room)
    return factory


async def crowd(reactor, port: int, dialect: Dialect, n: int, room: str | None, prefix: str,
                limit: float = TIMEOUT):
    """
    C{n} registered clients (in C{room} if given), connected 100 at a time.
    A client the server drops while joining is left out and reported.
    """
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
    clients: list[LoadClient] = []
    deadline = time.monotonic() + limit
    for start in range(0, n, 100):
        if time.monotonic() > deadline:
            print(f"   (stopped at {start} clients: the server took over {limit:.0f} s)", flush=True)
            break
        made = await defer.gatherResults(
            [endpoint.connect(_factory(dialect, f"{prefix}{i}", room)) for i in range(start, min(n, start + 100))]
        )
        remaining = max(1.0, deadline - time.monotonic())
        results = await defer.DeferredList(
            [c.ready.addTimeout(remaining, reactor) for c in made], consumeErrors=True
        )
        for c, (ok, _) in zip(made, results):
            if ok:
                clients.append(c)
            else:
                c.transport.abortConnection()
    if len(clients) < n:
        print(f"   ({n - len(clients)} of {n} clients not registered: dropped or too slow)", flush=True)
    return clients


async def hangUp(reactor, clients) -> None:
    for c in clients:
        c.transport.abortConnection()
    await deferLater(reactor, 0.5)


async def fanout(reactor, port: int, dialect: Dialect, n: int, pid: int) -> tuple[float, float]:
    """
    Messages delivered per second: SENDERS members each say MESSAGES lines
    at once to a room of C{n}; time until every member has every message.
    Also per second of the server's CPU time (user + system), which other
    load on the machine disturbs less than the wall clock.
    """
    server = psutil.Process(pid)
    room = f"bench{n}"
    clients = await crowd(reactor, port, dialect, n, room, f"f{n}x")
    await deferLater(reactor, 1.0)  # let the JOIN storm settle
    senders = clients[: min(SENDERS, n)]
    expected = len(senders) * MESSAGES * (len(clients) - 1)
    cpu = server.cpu_times()
    start = time.perf_counter()
    for s in senders:
        s.transport.write(b"".join(dialect.say(room, f"m{i} from {s.nick}") for i in range(MESSAGES)))
    deadline = start + TIMEOUT
    while sum(c.received for c in clients) < expected and time.perf_counter() < deadline:
        await deferLater(reactor, 0.01)
    elapsed = time.perf_counter() - start
    after = server.cpu_times()
    cpuSeconds = (after.user - cpu.user) + (after.system - cpu.system)
    got = sum(c.received for c in clients)
    await hangUp(reactor, clients)
    if got < expected:
        print(f"   (only {got} of {expected} delivered in {TIMEOUT:.0f} s)", flush=True)
    return got / elapsed, got / max(cpuSeconds, 0.01)


async def idle(reactor, port: int, dialect: Dialect, pid: int) -> float:
    """
    Server RSS growth per registered idle connection, in bytes.
    """
    proc = psutil.Process(pid)
    await deferLater(reactor, 0.5)
    before = proc.memory_info().rss
    clients = await crowd(reactor, port, dialect, IDLE, None, "i", limit=90)
    await deferLater(reactor, 1.0)
    after = proc.memory_info().rss
    await hangUp(reactor, clients)
    if not clients:
        return 0.0
    return (after - before) / len(clients)


class Server:
    def __init__(self, name: str, argv: list[str], ports: dict[str, int], cwd: str) -> None:
        self.name = name
        self.ports = ports
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self, reactor) -> None:
        deadline = time.monotonic() + 20
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name} does not listen on {port}")
                    await deferLater(reactor, 0.1)

    def stop(self) -> None:
        stopProcess(self.proc)


def ours(tmp: str, *extra: str) -> Server:
    chat, irc = freePort(), freePort()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [
        twistd, "-n", "--pidfile=", "--logfile", os.path.join(tmp, f"chat-{chat}.log"), "chat",
        "--listen", f"tcp:{chat}:interface=127.0.0.1", "--irc", f"tcp:{irc}:interface=127.0.0.1",
        "--history-db", os.path.join(tmp, f"history-{chat}.sqlite"),
        "--flood-rate", "0", "--idle-timeout", "600",
        # Every load client comes from 127.0.0.1.
        "--max-per-address", str(IDLE + 1000),
        *extra,
    ]
    return Server("coursenet chat", argv, {"chat": chat, "irc": irc}, tmp)


def ngircd(tmp: str, binary: str, port: int | None = None, name: str = "bench.ngircd", link: str = "") -> Server:
    port = port or freePort()
    conf = os.path.join(tmp, f"ngircd-{port}.conf")
    with open(conf, "w") as f:
        f.write(
            f"""[Global]
Name = {name}
Info = bench
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = bench
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 20
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
ConnectRetry = 5
[Options]
DNS = no
Ident = no
PAM = no
{link}"""
        )
    return Server("ngircd", [binary, "-n", "-f", conf], {"irc": port}, tmp)


def linkedNgircds(tmp: str, binary: str) -> list[Server]:
    """
    Two ngircd servers linked as one IRC network: the first connects to
    the second, each with the other's password.
    """
    a, b = freePort(), freePort()
    toB = f"[Server]\nName = b.bench\nHost = 127.0.0.1\nPort = {b}\nMyPassword = ab1\nPeerPassword = ba1\n"
    toA = f"[Server]\nName = a.bench\nHost = 127.0.0.1\nPassive = yes\nMyPassword = ba1\nPeerPassword = ab1\n"
    second = ngircd(tmp, binary, b, "b.bench", toA)
    return [ngircd(tmp, binary, a, "a.bench", toB), second]


class Redis(Server):
    def __init__(self, tmp: str) -> None:
        port = freePort()
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp]
        super().__init__("redis-server", argv, {"redis": port}, tmp)


async def linked(reactor, ports: list[int], dialect: Dialect, limit: float = 60.0) -> None:
    """
    Wait until a message said on the first server reaches a member on the
    second: the link (or the bus) is up and the nodes take nicknames.
    """
    deadline = time.monotonic() + limit
    while True:
        try:
            a, b = [(await crowd(reactor, port, dialect, 1, "probe", f"probe{n}x", limit=5))[0]
                    for n, port in enumerate(ports)]
        except (IndexError, defer.TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError("the two servers never linked")
            await deferLater(reactor, 1.0)
            continue
        while time.monotonic() < deadline:
            a.transport.write(dialect.say("probe", "ping"))
            await deferLater(reactor, 0.5)
            if b.received:
                await hangUp(reactor, [a, b])
                return
        raise RuntimeError("messages do not cross between the two servers")


_probes = 0


async def members(reactor, port: int, room: str) -> int:
    """
    How many members server C{port} lists in IRC channel C{room} (NAMES).
    """
    global _probes
    _probes += 1
    probe = (await crowd(reactor, port, Dialect(irc=True), 1, None, f"names{_probes}x", limit=10))[0]
    lines: list[bytes] = []
    probe.dataReceived = lambda data: lines.extend(data.split(b"\n"))  # type: ignore[method-assign]
    probe.transport.write(f"NAMES #{room}\r\n".encode())
    deadline = time.monotonic() + 10
    while not any(b" 366 " in line for line in lines) and time.monotonic() < deadline:
        await deferLater(reactor, 0.1)
    await hangUp(reactor, [probe])
    # A reply may be split across reads: count whole 353 lines only, at worst a few short.
    return sum(len(line.rsplit(b":", 1)[-1].split()) for line in lines if b" 353 " in line)


async def twoNodeFanout(reactor, ports: list[int], pids: list[int]) -> tuple[float, float, float]:
    """
    1000 IRC clients, half on each server, in one room; SENDERS of them
    (half on each) say MESSAGES lines at once.  Deliveries per second, the
    p99 of the time from the burst to each delivery, and deliveries per
    CPU second of the servers (and Redis) together.
    """
    dialect = Dialect(irc=True)
    await linked(reactor, ports, dialect)
    n = 1000
    halves = [await crowd(reactor, port, dialect, n // 2, "two", f"t{i}x") for i, port in enumerate(ports)]
    clients = halves[0] + halves[1]
    procs = [psutil.Process(pid) for pid in pids]
    # The JOINs cross to the other server: wait until each lists the whole
    # room (a link may pass them on slowly), then until both are quiet
    # (under 20 ms of CPU in half a second).
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if min([await members(reactor, port, "two") for port in ports]) >= len(halves[0]) + len(halves[1]) - 5:
            break
        await deferLater(reactor, 1.0)
    while time.monotonic() < deadline:
        before = sum(sum(p.cpu_times()[:2]) for p in procs)
        await deferLater(reactor, 0.5)
        if sum(sum(p.cpu_times()[:2]) for p in procs) - before < 0.02:
            break
    senders = halves[0][: SENDERS // 2] + halves[1][: SENDERS // 2]
    expected = len(senders) * MESSAGES * (len(clients) - 1)
    for c in clients:
        c.stamps = []
        c.received = 0
    cpu = [p.cpu_times() for p in procs]
    start = time.perf_counter()
    for s in senders:
        s.transport.write(b"".join(dialect.say("two", f"m{i} from {s.nick}") for i in range(MESSAGES)))
    deadline = start + TIMEOUT
    while sum(c.received for c in clients) < expected and time.perf_counter() < deadline:
        await deferLater(reactor, 0.01)
    elapsed = time.perf_counter() - start
    cpuSeconds = sum((p.cpu_times().user - c.user) + (p.cpu_times().system - c.system) for p, c in zip(procs, cpu))
    got = sum(c.received for c in clients)
    arrivals = sorted(t for c in clients for t, k in (c.stamps or []) for _ in range(k))
    p99 = (arrivals[int(0.99 * (len(arrivals) - 1))] - start) if arrivals else float("nan")
    await hangUp(reactor, clients)
    print(f"   ({len(halves[0])} + {len(halves[1])} clients, {got} of {expected} delivered in {elapsed:.2f} s)",
          flush=True)
    return got / elapsed, p99, got / max(cpuSeconds, 0.01)


async def twoNodes(reactor, tmp: str, binary: str, have: bool, results: dict) -> None:
    kinds = ["ours/bus"] + (["ngircd/link"] if have else [])
    for kind in kinds:
        if kind == "ours/bus":
            redis = Redis(tmp)
            await redis.ready(reactor)
            url = f"redis://127.0.0.1:{redis.ports['redis']}/0"
            servers = [ours(tmp, "--bus", url), ours(tmp, "--bus", url)]
            extra = [redis]
        else:
            servers, extra = linkedNgircds(tmp, binary), []
        try:
            for server in servers:
                await server.ready(reactor)
            rate, p99, perCPU = await twoNodeFanout(
                reactor, [s.ports["irc"] for s in servers], [s.proc.pid for s in servers + extra]
            )
            results[(kind, "two")] = (rate, p99, perCPU)
            print(f"{kind:11} two nodes, 1000 clients: {rate:12,.0f} msg/s, p99 {p99 * 1000:7.1f} ms,"
                  f" {perCPU:12,.0f} msg per CPU s", flush=True)
        finally:
            for server in servers + extra:
                server.stop()


async def run(reactor, results: dict) -> None:
    tmp = tempfile.mkdtemp(prefix="chat-bench-")
    binary = shutil.which("ngircd") or "/usr/sbin/ngircd"
    have = os.path.exists(binary)
    if not have:
        print("ngircd not found (apt-get install ngircd): ours only", flush=True)
    course, irc = Dialect(irc=False), Dialect(irc=True)
    kinds = [("ours/chat", "chat", course), ("ours/irc", "irc", irc)] + ([("ngircd", "irc", irc)] if have else [])

    def start(kind: str) -> Server:
        return ngircd(tmp, binary) if kind == "ngircd" else ours(tmp)

    for kind, wire, dialect in kinds if SIZES or IDLE else []:
        server = start(kind)
        try:
            await server.ready(reactor)
            for n in SIZES:
                rate, perCPU = await fanout(reactor, server.ports[wire], dialect, n, server.proc.pid)
                results[(kind, f"fanout {n}")] = rate
                results[(kind, f"cpu {n}")] = perCPU
                print(f"{kind:10} fan-out {n:5} clients: {rate:12,.0f} msg/s, {perCPU:12,.0f} msg per server CPU s",
                      flush=True)
        finally:
            server.stop()
        if not IDLE:
            continue
        server = start(kind)
        try:
            await server.ready(reactor)
            per = await idle(reactor, server.ports[wire], dialect, server.proc.pid)
            results[(kind, "idle")] = per
            print(f"{kind:10} idle connections: {per / 1024:8.1f} KiB each", flush=True)
        finally:
            server.stop()
    if TWO:
        await twoNodes(reactor, tmp, binary, have, results)
    shutil.rmtree(tmp, ignore_errors=True)


def table(results: dict) -> str:
    kinds = ["ours/chat", "ours/irc", "ngircd"]
    rows = ["| measure | ours (course protocol) | ours (IRC front door) | ngircd | ours IRC / ngircd |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for n in SIZES:
        vals = [results.get((k, f"fanout {n}")) for k in kinds]
        ratio = f"{vals[1] / vals[2]:.2f}" if vals[1] and vals[2] else "-"
        cells = [f"{v:,.0f}" if v else "-" for v in vals]
        rows.append(f"| fan-out, {n} clients (msg/s) | {' | '.join(cells)} | {ratio} |")
    for n in SIZES:
        vals = [results.get((k, f"cpu {n}")) for k in kinds]
        ratio = f"{vals[1] / vals[2]:.2f}" if vals[1] and vals[2] else "-"
        cells = [f"{v:,.0f}" if v else "-" for v in vals]
        rows.append(f"| fan-out, {n} clients (msg per server CPU s) | {' | '.join(cells)} | {ratio} |")
    if IDLE:
        vals = [results.get((k, "idle")) for k in kinds]
        ratio = f"{vals[1] / vals[2]:.2f}" if vals[1] and vals[2] else "-"
        cells = [f"{v / 1024:.1f}" if v else "-" for v in vals]
        rows.append(f"| {IDLE:,} idle connections (KiB each) | {' | '.join(cells)} | {ratio} |")
    ours2, theirs2 = results.get(("ours/bus", "two")), results.get(("ngircd/link", "two"))
    if ours2:
        rows += ["", "| two nodes, 1000 IRC clients split | ours: 2 nodes + Redis | ngircd: 2 linked servers | ours / ngircd |",
                 "| --- | ---: | ---: | ---: |"]
        for i, (what, fmt) in enumerate([("deliveries/s", "{:,.0f}"), ("p99 delivery latency (ms)", "{:.1f}"),
                                         ("deliveries per server CPU s", "{:,.0f}")]):
            scale = 1000 if i == 1 else 1
            a = ours2[i] * scale
            b = theirs2[i] * scale if theirs2 else None
            ratio = f"{a / b:.2f}" if b else "-"
            rows.append(f"| {what} | {fmt.format(a)} | {fmt.format(b) if b else '-'} | {ratio} |")
    return "\n".join(rows)


def measure() -> int:
    """
    Run every measurement in this process's reactor and print the table.
    """
    results: dict = {}
    status = 0
    try:
        react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, results)), [])
    except SystemExit as e:
        status = 1 if e.code else 0
    print(table(results), flush=True)
    return status


def main() -> int:
    """
    The reactor cannot be restarted, so the measurements run in a child
    process, whatever else C{python -m bench} runs.
    """
    return subprocess.call([sys.executable, "-m", "bench.chat_bench"], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


if __name__ == "__main__":
    sys.exit(measure())
