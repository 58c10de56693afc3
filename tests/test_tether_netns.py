"""
The tether end to end, as root, in network namespaces this module makes and
always deletes (L{tether.testing.Topology}): a laptop whose only way out is
the tunnel, a phone, the tether server with NAT, and an "internet" web
server.  Real TUN devices, nftables, ping, curl and headless Chromium.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from coursenet.procs import stopProcess
from tests.conftest import skipOrFail
from tether.testing import ADDRESSES, INTERNET, LAPTOP, PHONE, POOL, SERVER, SERVER_OUT, Topology

pytestmark = pytest.mark.privileged

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
WEB = f"http://{ADDRESSES[INTERNET]}:8000/hello.txt"
PAGE = b"hello through the tether\n"
SERVER_URL = f"ws://{ADDRESSES[SERVER]}:8780/tether/v1"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def privilegesMissing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("ip", "nft", "ping", "curl", "ss"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"needs {tool}"
    probe = f"tlprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "needs ip netns"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def waitFor(path: str, text: str, timeout: float = 20, proc: subprocess.Popen | None = None,
            count: int = 1) -> str:
    """
    Wait until the file at C{path} holds C{text} C{count} times.
    """
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                content = f.read()
        except FileNotFoundError:
            pass
        if content.count(text) >= count:
            return content
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} x{count} not in {path} after {timeout} s:\n{content[-3000:]}")


class Net:
    """
    The topology with its web server, and every process started in it.
    """

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.topology = Topology()
        self.procs: list[subprocess.Popen] = []

    def start(self, role: str, argv: list[str], log: str | None = None) -> subprocess.Popen:
        out = open(os.path.join(self.tmp, log), "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(self.topology.exec(role, argv), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                proc.kill()
                proc.wait(10)
            else:
                stopProcess(proc, 15)

    def twistd(self, role: str, name: str, args: list[str]) -> tuple[subprocess.Popen, str]:
        log = os.path.join(self.tmp, f"{name}.log")
        if os.path.exists(log):
            os.unlink(log)
        proc = self.start(role, [TWISTD, "-n", "--pidfile=", "--logfile", log, "tether", *args])
        return proc, log

    def run(self, role: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return self.topology.run(role, argv, timeout=timeout)

    def curl(self, timeout: int = 5) -> subprocess.CompletedProcess:
        return self.run(LAPTOP, ["curl", "-sS", "-m", str(timeout), WEB], timeout=timeout + 5)

    def ping(self, count: int = 2) -> subprocess.CompletedProcess:
        return self.run(LAPTOP, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", ADDRESSES[INTERNET]])

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.topology.down()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    reason = privilegesMissing()
    if reason:
        skipOrFail(reason)
    tmp = str(tmp_path_factory.mktemp("tether"))
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    with open(os.path.join(www, "hello.txt"), "wb") as f:
        f.write(PAGE)
    net = Net(tmp)
    try:
        net.topology.up()
        net.start(INTERNET, [sys.executable, "-u", "-m", "http.server", "--bind", ADDRESSES[INTERNET],
                             "--directory", www, "8000"], log="www.log")
        net.tokens = os.path.join(tmp, "tokens")
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "coursenet-passwd"), net.tokens,
                        "lap", "--password-env", "TOKEN"], env={**os.environ, "TOKEN": "s3cret"},
                       check=True, capture_output=True)
        net.server, net.serverLog = net.twistd(SERVER, "server", [
            "server", "--listen", f"tcp:8780:interface={ADDRESSES[SERVER]}", "--pool", POOL,
            "--token-file", net.tokens, "--allow-plain", "--keepalive", "1", "--timeout", "4",
            "--stats-interval", "0",
        ])
        waitFor(net.serverLog, "tether server up", proc=net.server)
        yield net
    finally:
        net.close()
        assert net.topology.exists() == []


def tokenFile(net: Net, line: str) -> str:
    path = os.path.join(net.tmp, f"token-{abs(hash(line))}")
    with open(path, "w") as f:
        f.write(line + "\n")
    return path


@pytest.fixture
def client(net):
    """
    Start a direct client in the laptop namespace: C{client(*extra)} gives
    C{(process, log path)}; every client is stopped after the test.
    """
    started = []

    def start(*extra: str, token: str = "lap:s3cret", wait: bool = True):
        proc, log = net.twistd(LAPTOP, f"client{len(started)}", [
            "client", "--server", SERVER_URL, "--token-file", tokenFile(net, token), "--allow-plain", *extra,
        ])
        started.append(proc)
        if wait:
            waitFor(log, "ran ip route replace 128.0.0.0/1", proc=proc)
        return proc, log

    yield start
    for proc in started:
        net.stop(proc)


def laptopRoutes(net: Net) -> str:
    return net.run(LAPTOP, ["ip", "route"]).stdout


def test_directPingAndCurlOnlyThroughTunnel(net, client):
    """From the laptop, ping and curl reach the internet namespace only while the tunnel is up, NATed to the server's address."""
    before = laptopRoutes(net)
    assert net.curl(2).returncode != 0
    proc, log = client()
    assert "offload gso" in waitFor(log, "tunnel up")
    assert "TUN offloads (GSO super-packets): on" in waitFor(net.serverLog, "TUN offloads")
    ping = net.ping(3)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    fetched = net.curl()
    assert fetched.stdout.encode() == PAGE, fetched.stderr
    assert f'{SERVER_OUT} - - ' in waitFor(os.path.join(net.tmp, "www.log"), "GET /hello.txt")
    net.stop(proc)
    assert "tether0" not in net.run(LAPTOP, ["ip", "link"]).stdout
    assert laptopRoutes(net) == before
    assert net.curl(2).returncode != 0


SINK = """
import hashlib, socket
s = socket.create_server(("{host}", 9100))
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while data := c.recv(1 << 16):
    h.update(data)
    n += len(data)
print(n, h.hexdigest(), flush=True)
"""

SEND = """
import socket, sys
data = open(sys.argv[1], "rb").read()
c = socket.create_connection(("{host}", 9100), timeout=20)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
"""


@pytest.mark.parametrize("extra", [(), ("--no-offload",)], ids=["gso", "no-offload"])
def test_bulkBothWaysIntact(net, client, extra):
    """Four MiB each way cross the tunnel byte-exact, with GSO super-packets (gso) and with plain packets the server segments itself (--no-offload)."""
    blob = os.urandom(4 << 20)
    digest = hashlib.sha256(blob).hexdigest()
    with open(os.path.join(net.tmp, "www", "blob.bin"), "wb") as f:
        f.write(blob)
    path = os.path.join(net.tmp, "upload.bin")
    with open(path, "wb") as f:
        f.write(blob)
    proc, log = client(*extra)
    assert ("offload none" if extra else "offload gso") in waitFor(log, "tunnel up")
    down = net.run(LAPTOP, ["sh", "-c", f"curl -sS -m 20 {WEB.replace('hello.txt', 'blob.bin')} | sha256sum"],
                   timeout=30)
    assert down.stdout.split()[:1] == [digest], down.stderr
    sinkLog = f"sink{len(extra)}.log"
    sink = net.start(INTERNET, [sys.executable, "-c", SINK.format(host=ADDRESSES[INTERNET])], log=sinkLog)
    deadline = time.monotonic() + 10
    while ":9100" not in net.run(INTERNET, ["ss", "-ltn"]).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sent = net.run(LAPTOP, [sys.executable, "-c", SEND.format(host=ADDRESSES[INTERNET]), path], timeout=30)
    assert sent.returncode == 0, sent.stderr
    sink.wait(20)
    assert waitFor(os.path.join(net.tmp, sinkLog), digest).split() == [str(len(blob)), digest]


def rawUDP(src: str, dst: str, port: int) -> bytes:
    payload = b"probe"
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, 64, socket.IPPROTO_UDP, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + udp


def test_spoofedSourceDropped(net, client):
    """A packet from the laptop with a source other than its tunnel address is dropped by the server and logged; a genuine one passes."""
    client()
    net.run(INTERNET, ["nft", "add table ip probe ; add chain ip probe in { type filter hook input priority 0 ; } ;"
                                " add rule ip probe in udp dport 9999 counter"])
    try:
        spoofed = rawUDP("198.18.100.77", ADDRESSES[INTERNET], 9999).hex()
        send = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n"
            f"s.sendto(bytes.fromhex('{spoofed}'),('{ADDRESSES[INTERNET]}',0))\n"
            "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"u.sendto(b'genuine',('{ADDRESSES[INTERNET]}',9999))\n"
        )
        assert net.run(LAPTOP, [sys.executable, "-c", send]).returncode == 0
        waitFor(net.serverLog, "spoofed source: 198.18.100.77")
        deadline = time.monotonic() + 5
        while "packets 1 " not in (rules := net.run(INTERNET, ["nft", "list", "table", "ip", "probe"]).stdout):
            assert time.monotonic() < deadline, rules
            time.sleep(0.1)
        time.sleep(0.3)
        assert "packets 1 " in net.run(INTERNET, ["nft", "list", "table", "ip", "probe"]).stdout
    finally:
        net.run(INTERNET, ["nft", "delete", "table", "ip", "probe"])


def test_wrongTokenRefused(net, client):
    """A client with a wrong token is refused with a logged reason on both sides and stops instead of retrying."""
    proc, log = client(token="lap:wrong", wait=False)
    proc.wait(20)
    assert "refused by the server: authentication failed: wrong name or token" in waitFor(log, "refused by the server")
    assert "authentication failed: wrong name or token" in waitFor(net.serverLog, "refused 198.18.0.1")
    assert "tether0" not in net.run(LAPTOP, ["ip", "link"]).stdout


def test_directReconnectKeepsAddress(net, client):
    """When the client's TCP connection is killed, it reconnects with backoff, resumes its address, and traffic flows again."""
    proc, log = client()
    assert net.ping(1).returncode == 0
    net.run(LAPTOP, ["ss", "-K", "dst", ADDRESSES[SERVER], "dport", "=", "8780"])
    content = waitFor(log, "tunnel up: address", count=2, proc=proc)
    addresses = [line.split("address ")[1].split("/")[0] for line in content.splitlines() if "tunnel up" in line]
    assert len(set(addresses)) == 1
    ping = net.ping(2)
    assert ping.returncode == 0, ping.stdout


def test_clientCrashRestartLeavesNothing(net, client):
    """A client killed with SIGKILL, restarted and stopped leaves the laptop's links and routes as they were."""
    before = laptopRoutes(net)
    proc, _ = client()
    net.stop(proc, signal.SIGKILL)
    again, _ = client()
    assert net.curl().stdout.encode() == PAGE
    net.stop(again)
    assert laptopRoutes(net) == before
    assert "tether0" not in net.run(LAPTOP, ["ip", "link"]).stdout


def test_serverStopAndCrashRestartLeaveNothing(net):
    """The server's nftables table and TUN exist while it runs and are gone after a stop, also after a crash and restart."""
    args = ["server", "--listen", f"tcp:8781:interface={ADDRESSES[SERVER]}", "--pool", "198.18.101.0/24",
            "--tun", "tether1", "--token-file", net.tokens, "--allow-plain"]
    proc, log = net.twistd(SERVER, "server2", args)
    waitFor(log, "tether server up", proc=proc)
    assert "table ip tether_tether1" in net.run(SERVER, ["nft", "list", "tables"]).stdout
    net.stop(proc, signal.SIGKILL)
    proc, log = net.twistd(SERVER, "server3", args)
    waitFor(log, "tether server up", proc=proc)
    assert net.run(SERVER, ["nft", "list", "tables"]).stdout.count("tether_tether1") == 1
    net.stop(proc)
    assert "tether_tether1" not in net.run(SERVER, ["nft", "list", "tables"]).stdout
    assert "tether1" not in net.run(SERVER, ["ip", "link"]).stdout
    assert "tether_tether0" in net.run(SERVER, ["nft", "list", "tables"]).stdout


def tunnelAddress(log: str, proc: subprocess.Popen | None = None) -> str:
    """
    The address a client's log says its tunnel got.
    """
    line = next(l for l in waitFor(log, "tunnel up: address", proc=proc).splitlines() if "tunnel up" in l)
    return line.split("address ")[1].split("/")[0]


HOST_SERVICE = 9300


@pytest.fixture
def hostService(net):
    """
    A web server in the tether server's namespace on every address, port
    L{HOST_SERVICE}: one of the host's own services.
    """
    proc = net.start(SERVER, [sys.executable, "-u", "-m", "http.server", "--bind", "0.0.0.0",
                              "--directory", os.path.join(net.tmp, "www"), str(HOST_SERVICE)], log="host.log")
    deadline = time.monotonic() + 10
    while f":{HOST_SERVICE}" not in net.run(SERVER, ["ss", "-ltn"]).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield
    net.stop(proc)


@pytest.mark.parametrize("n, extra, reachable", [
    (2, ["--no-nat"], False), (3, [], False), (4, ["--no-nat", "--allow-client-to-server"], True),
], ids=["no-nat", "nat", "no-nat-allowed"])
def test_clientsKeptFromTheServersOwnServices(net, client, hostService, n, extra, reachable):
    """Through the tunnel a client reaches none of the server host's own services, at the gateway address or the host's other addresses, with or without NAT (ping still answers); --allow-client-to-server opens them."""
    port, pool = 8782 + n, f"198.18.{104 + n}.0/24"
    proc, log = net.twistd(SERVER, f"hostserver{n}", [
        "server", "--listen", f"tcp:{port}:interface={ADDRESSES[SERVER]}", "--pool", pool, "--tun", f"tether{n}",
        "--token-file", net.tokens, "--allow-plain", "--stats-interval", "0", *extra,
    ])
    try:
        waitFor(log, "tether server up", proc=proc)
        client("--server", f"ws://{ADDRESSES[SERVER]}:{port}/tether/v1")
        gateway = pool.replace(".0/24", ".1")
        assert net.run(LAPTOP, ["ping", "-c", "1", "-W", "2", gateway]).returncode == 0
        for address in (gateway, SERVER_OUT):
            # A dropped SYN is only ever a timeout: a short one will do.
            got = net.run(LAPTOP, ["curl", "-sS", "-m", "5" if reachable else "1",
                                   f"http://{address}:{HOST_SERVICE}/hello.txt"])
            assert (got.stdout.encode() == PAGE) is reachable, (address, got.stdout, got.stderr)
    finally:
        net.stop(proc)


@pytest.mark.parametrize("extra", [[], ["--no-nat"]], ids=["nat", "no-nat"])
def test_clientToClientWhenAllowed(net, client, extra):
    """With --allow-client-to-client, the laptop pings a second client (in the phone's namespace) at its tunnel address, with NAT as without."""
    n = 5 + len(extra)
    port, pool = 8782 + n, f"198.18.{104 + n}.0/24"
    server, log = net.twistd(SERVER, f"c2cserver{n}", [
        "server", "--listen", f"tcp:{port}:interface={ADDRESSES[SERVER]}", "--pool", pool, "--route", pool,
        "--tun", f"tether{n}", "--token-file", net.tokens, "--allow-plain", "--stats-interval", "0",
        "--max-leases-per-token", "2", "--allow-client-to-client", *extra,
    ])
    phone = None
    try:
        waitFor(log, "tether server up", proc=server)
        url = f"ws://{ADDRESSES[SERVER]}:{port}/tether/v1"
        _, laptopLog = client("--server", url, wait=False)
        waitFor(laptopLog, f"ran ip route replace {pool}")
        phone, phoneLog = net.twistd(PHONE, f"c2cphone{n}", [
            "client", "--server", url, "--token-file", tokenFile(net, "lap:s3cret"), "--allow-plain",
        ])
        other = tunnelAddress(phoneLog, phone)
        waitFor(phoneLog, f"ran ip route replace {pool}", proc=phone)
        ping = net.run(LAPTOP, ["ping", "-c", "2", "-i", "0.2", "-W", "2", other])
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        if phone is not None:
            net.stop(phone)
        net.stop(server)


@pytest.fixture
def relay(net):
    """
    A relay-mode client in the laptop namespace and headless Chromium in the
    phone namespace with the relay page open: C{(client log, chromium)}.
    """
    if shutil.which("chromium") is None:
        skipOrFail("needs chromium (Debian package chromium)")
    proc, log = net.twistd(LAPTOP, "relayclient", [
        "client", "--server", SERVER_URL, "--token-file", tokenFile(net, "lap:s3cret"), "--allow-plain",
        "--relay", f"tcp:8088:interface={ADDRESSES[LAPTOP]}", "--relay-key", "k3y",
    ])
    profile = tempfile.mkdtemp(dir=net.tmp)
    browser = None
    hostRoute = [f"{ADDRESSES[SERVER]}/32", "via", "198.18.0.2"]
    net.run(LAPTOP, ["ip", "route", "del", *hostRoute])
    try:
        waitFor(log, "relay page: open", proc=proc)
        browser = net.start(PHONE, ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                    f"http://{ADDRESSES[LAPTOP]}:8088/?key=k3y"], log="chromium.log")
        waitFor(log, "ran ip route replace 128.0.0.0/1", timeout=60, proc=proc)
        yield log, browser
    finally:
        if browser is not None:
            net.stop(browser)
        net.stop(proc)
        net.run(LAPTOP, ["ip", "route", "add", *hostRoute])


def test_relayPageInChromiumCarriesTheTunnel(net, relay):
    """Through the relay page in headless Chromium (the laptop cannot reach the server itself), ping and curl reach the internet namespace."""
    log, _ = relay
    assert "relay page connected from 198.18.0.2" in waitFor(log, "relay page connected")
    direct = net.run(LAPTOP, ["curl", "-sS", "-m", "2", f"http://{ADDRESSES[SERVER]}:8780/"])
    assert direct.returncode != 0, "the laptop reached the server's port without the relay"
    ping = net.ping(3)
    assert ping.returncode == 0, ping.stdout
    assert net.curl().stdout.encode() == PAGE


def test_relayRecoversAfterServerSocketCut(net, relay):
    """After the relay page's WebSocket to the server is cut, the page reconnects both sides and the laptop resumes its address."""
    log, _ = relay
    assert net.ping(1).returncode == 0
    net.run(SERVER, ["ss", "-K", "dst", ADDRESSES[PHONE], "sport", "=", "8780"])
    content = waitFor(log, "tunnel up: address", count=2, timeout=30)
    assert content.count("relay page connected") >= 2
    addresses = {line.split("address ")[1].split("/")[0] for line in content.splitlines() if "tunnel up" in line}
    assert len(addresses) == 1
    fetched = net.curl(10)
    assert fetched.stdout.encode() == PAGE, fetched.stderr


class Namespace:
    """
    One network namespace of its own (loopback only, C{ip_forward} 0 as in
    any new namespace), and the twistd servers started in it.
    """

    def __init__(self, tmp: str, tag: str) -> None:
        self.tmp = tmp
        self.name = f"{tag}{os.getpid()}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.run(["ip", "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            stopProcess(proc, 15)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def run(self, argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=30, check=check)

    def server(self, n: int, tokens: str, *extra: str) -> subprocess.Popen:
        """
        Start tether server C{n} (its own TUN and pool) and wait until it is up.
        """
        log = os.path.join(self.tmp, f"{self.name}-server{n}-{len(self.procs)}.log")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, TWISTD, "-n", "--pidfile=", "--logfile", log, "tether",
             "server", "--listen", "tcp:0:interface=127.0.0.1", "--pool", f"198.18.{110 + n}.0/24",
             "--tun", f"tfw{n}", "--token-file", tokens, "--allow-plain", "--stats-interval", "0", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        waitFor(log, "tether server up", proc=proc)
        return proc

    def forwarding(self) -> str:
        return self.run(["cat", "/proc/sys/net/ipv4/ip_forward"], check=True).stdout.strip()


def test_forwardingSharedByTwoServersAndRestoredAfterSigkill(tmp_path):
    """In one namespace: the first of two NAT servers to stop leaves ip_forward on for the other, the last restores 0; after a SIGKILL, the restarted server restores 0, not the 1 the killed one set."""
    reason = privilegesMissing()
    if reason:
        skipOrFail(reason)
    tokens = str(tmp_path / "tokens")
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "coursenet-passwd"), tokens,
                    "lap", "--password-env", "TOKEN"], env={**os.environ, "TOKEN": "s3cret"},
                   check=True, capture_output=True)
    with Namespace(str(tmp_path), "tlfw") as ns:
        assert ns.forwarding() == "0"
        first, second = ns.server(0, tokens), ns.server(1, tokens)
        assert ns.forwarding() == "1"
        stopProcess(first, 15)
        assert ns.forwarding() == "1", "the first server's stop turned forwarding off under the second"
        stopProcess(second, 15)
        assert ns.forwarding() == "0"
        killed = ns.server(0, tokens)
        killed.kill()
        killed.wait(10)
        assert ns.forwarding() == "1"
        restarted = ns.server(0, tokens)
        stopProcess(restarted, 15)
        assert ns.forwarding() == "0", "the restarted server restored the value the killed one had set"
