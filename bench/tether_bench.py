"""
Tether benchmark: iperf3 TCP throughput and ping RTT from the laptop
namespace through the tunnel (direct, and through the relay page in
headless Chromium), against the plain veth path and against websockify
carrying the same iperf3 stream (TCP over WebSocket), all in one run in
the namespaces of L{tether.testing.Topology}.  Needs root.

Also profiles the server during the direct run (cProfile) and prints
where its time goes.

C{python -m bench tether}; C{python -m bench.tether_bench bridge PORT URL}
is the laptop side of the websockify case.
"""

from __future__ import annotations

import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from coursenet.procs import stopProcess
from tether.testing import ADDRESSES, INTERNET, LAPTOP, PHONE, POOL, SERVER, Topology

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
SECONDS = 5
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def waitLog(path: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and text in open(path, errors="replace").read():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} not in {path}")


class Bench:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.net = Topology(f"tb{os.getpid()}")
        self.procs: list[subprocess.Popen] = []

    def start(self, role: str, argv: list[str], name: str) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        proc = subprocess.Popen(self.net.exec(role, argv), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def twistd(self, role: str, name: str, args: list[str], extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
        log = os.path.join(self.tmp, f"{name}.twistd.log")
        return self.start(role, [TWISTD, "-n", "--pidfile=", "--logfile", log, *extra, "tether", *args], name), log

    def stop(self, proc: subprocess.Popen) -> None:
        stopProcess(proc, 15)

    def measure(self, target: str, port: int = 5201) -> tuple[float, float | None]:
        """
        iperf3 Mbit/s from the laptop to C{target}, and ping RTT in ms
        (L{None} where ICMP does not apply).
        """
        out = self.net.run(LAPTOP, ["iperf3", "-c", target, "-p", str(port), "-t", str(SECONDS), "-J"],
                           timeout=SECONDS + 30)
        result = json.loads(out.stdout)
        if "error" in result:
            raise RuntimeError(result["error"])
        mbits = result["end"]["sum_received"]["bits_per_second"] / 1e6
        rtt = None
        if target != "127.0.0.1":
            ping = self.net.run(LAPTOP, ["ping", "-c", "50", "-i", "0.02", "-q", target]).stdout
            rtt = float(ping.rsplit("=", 1)[1].split("/")[1])
        return mbits, rtt

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.net.down()


def run(tmp: str) -> list[tuple[str, float, float | None]]:
    b = Bench(tmp)
    rows = []
    try:
        b.net.up()
        tokens = os.path.join(tmp, "token")
        with open(tokens, "w") as f:
            f.write("lap:s3cret\n")
        b.start(INTERNET, ["iperf3", "-s", "-B", ADDRESSES[INTERNET]], "iperf-internet")
        b.start(SERVER, ["iperf3", "-s", "-B", ADDRESSES[SERVER]], "iperf-server")
        time.sleep(0.5)
        rows.append(("plain veth (laptop -> phone -> server)", *b.measure(ADDRESSES[SERVER])))

        serverArgs = [
            "server", "--listen", f"tcp:8780:interface={ADDRESSES[SERVER]}", "--pool", POOL,
            "--user", "lap:s3cret", "--allow-plain", "--stats-interval", "0",
        ]
        server, slog = b.twistd(SERVER, "server", serverArgs)
        waitLog(slog, "tether server up")
        url = f"ws://{ADDRESSES[SERVER]}:8780/tether/v1"
        client, clog = b.twistd(LAPTOP, "client", ["client", "--server", url, "--token-file", tokens, "--allow-plain"])
        waitLog(clog, "ran ip route replace 128.0.0.0/1")
        rows.append(("tether direct", *b.measure(ADDRESSES[INTERNET])))
        b.stop(client)

        hostRoute = [f"{ADDRESSES[SERVER]}/32", "via", "198.18.0.2"]
        b.net.run(LAPTOP, ["ip", "route", "del", *hostRoute])
        relay, rlog = b.twistd(LAPTOP, "relay", [
            "client", "--server", url, "--token-file", tokens, "--allow-plain",
            "--relay", f"tcp:8088:interface={ADDRESSES[LAPTOP]}", "--relay-key", "k",
        ])
        waitLog(rlog, "relay page: open")
        browser = b.start(PHONE, ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp)}",
                                  f"http://{ADDRESSES[LAPTOP]}:8088/?key=k"], "chromium")
        waitLog(rlog, "ran ip route replace 128.0.0.0/1", 60)
        rows.append(("tether via relay page (Chromium)", *b.measure(ADDRESSES[INTERNET])))
        b.stop(browser)
        b.stop(relay)
        b.net.run(LAPTOP, ["ip", "route", "add", *hostRoute])
        b.stop(server)

        # The same direct run again, the server under cProfile: not timed.
        profile = os.path.join(tmp, "server.prof")
        server, slog = b.twistd(SERVER, "profiled", serverArgs,
                                extra=["--profile", profile, "--profiler", "cprofile", "--savestats"])
        waitLog(slog, "tether server up")
        client, clog = b.twistd(LAPTOP, "client2", ["client", "--server", url, "--token-file", tokens, "--allow-plain"])
        waitLog(clog, "ran ip route replace 128.0.0.0/1")
        b.measure(ADDRESSES[INTERNET])
        b.stop(server)
        b.stop(client)

        websockify = shutil.which("websockify", path=os.path.dirname(sys.executable))
        b.start(SERVER, [websockify, f"{ADDRESSES[SERVER]}:8790", f"{ADDRESSES[INTERNET]}:5201"], "websockify")
        b.start(LAPTOP, [sys.executable, "-m", "bench.tether_bench", "bridge", "5201",
                         f"ws://{ADDRESSES[SERVER]}:8790/"], "bridge")
        time.sleep(1.5)
        rows.append(("websockify (TCP over WebSocket)", *b.measure("127.0.0.1")))
        if os.path.exists(profile):
            print("where the server's time goes (direct run, cProfile, top 12 by own time):")
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    finally:
        b.close()
    return rows


def table(rows) -> str:
    plain = rows[0][1]
    websockify = next(m for name, m, _ in rows if name.startswith("websockify"))
    lines = [
        "| path | Mbit/s | ping RTT ms | vs websockify | vs plain veth |",
        "|------|--------|-------------|---------------|---------------|",
    ]
    for name, mbits, rtt in rows:
        lines.append(f"| {name} | {mbits:.0f} | {'-' if rtt is None else f'{rtt:.3f}'} |"
                     f" {mbits / websockify:.2f} | {mbits / plain:.3f} |")
    return "\n".join(lines)


def bridge(port: int, url: str) -> None:
    """
    The laptop side of websockify: each TCP connection on 127.0.0.1:C{port}
    becomes a WebSocket to C{url}, bytes both ways, with back-pressure.
    """
    from twisted.internet import endpoints, reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory, Protocol
    from twisted.web.websocket import WebSocketClientEndpoint

    class Side:
        def __init__(self, tcp) -> None:
            self.tcp = tcp

        def negotiationStarted(self, transport) -> None:
            self.ws = transport

        def negotiationFinished(self) -> None:
            self.ws.transport.registerProducer(self.tcp.transport, True)
            self.tcp.transport.registerProducer(self.ws.transport, True)
            self.tcp.ws = self.ws
            for chunk in self.tcp.pending:
                self.ws.sendBytesMessage(chunk)
            self.tcp.transport.resumeProducing()

        def bytesMessageReceived(self, data) -> None:
            self.tcp.transport.write(bytes(data))

        def textMessageReceived(self, text) -> None:
            pass

        def pongReceived(self, payload) -> None:
            pass

        def connectionLost(self, reason) -> None:
            self.tcp.transport.loseConnection()

    class TCP(Protocol):
        ws = None

        def connectionMade(self) -> None:
            self.pending = []
            self.transport.pauseProducing()
            side = Side(self)
            endpoint = WebSocketClientEndpoint.new(reactor, url)
            Deferred.fromCoroutine(endpoint.connect(type("F", (), {"buildProtocol": lambda s, u: side})()))

        def dataReceived(self, data: bytes) -> None:
            if self.ws is None:
                self.pending.append(data)
            else:
                self.ws.sendBytesMessage(data)

        def connectionLost(self, reason) -> None:
            if self.ws is not None:
                self.ws.loseConnection()

    endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(Factory.forProtocol(TCP))
    reactor.run()


def main() -> int:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("tether bench skipped: needs root and /dev/net/tun")
        return 0
    for tool in ("iperf3", "chromium", "nft"):
        if shutil.which(tool) is None:
            print(f"tether bench skipped: needs {tool}")
            return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(tmp)
    print(f"iperf3 TCP, one stream, {SECONDS} s each, laptop namespace as the client; ping: 50 x 20 ms")
    print(table(rows))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["bridge"]:
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
        bridge(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
