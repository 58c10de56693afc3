"""
The tether against WebSocket clients that send and never read (issue 9):
pings before the hello, or a logged-in client that never reads the
packets the server's TUN device has for it.  The server's memory stays
bounded, the client is cut off within the documented deadline, and
another client's round trips stay prompt.

The server runs in this process; the clients (wsproto over blocking
sockets) run in another one, started as C{python -m tests.test_flood_tether},
so that they compete with the server for neither the GIL nor its memory.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import psutil
import pytest
import pytest_twisted
from twisted.internet.task import LoopingCall
from twisted.internet.utils import getProcessOutputAndValue
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, Ping, Request, TextMessage

from tests.flood_support import MiB, FloodResult
from tests.tether_support import ip4, makeServer
from tether.protocol import OutputLimits
from tether.wire import Hello

#: The drain deadline the tests give the server, so that they are quick.
DRAIN = 3.0
#: The largest control frame payload RFC 6455 allows.
PING_PAYLOAD = 125
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the clients, in their own process ------------------------------------------------


class Client:
    """
    A tether client over a blocking socket: wsproto frames, nothing more.
    """

    def __init__(self, port: int, receiveBuffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receiveBuffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list = []
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target="/tether/v1")))
        self.expect(AcceptConnection)

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def expect(self, kind, test=lambda event: True):
        """
        Read until an event of C{kind} passing C{test} arrives; return it.
        """
        while True:
            while self.events:
                event = self.events.pop(0)
                if isinstance(event, kind) and test(event):
                    return event
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed while waiting for {kind.__name__}")
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())

    def hello(self, name: str, token: str) -> dict:
        self.send(TextMessage(Hello(name, token).encode()))
        return json.loads(self.expect(TextMessage, lambda e: '"welcome"' in e.data).data)

    def roundTrip(self, n: int) -> None:
        """
        A tether ping, and the wait for its pong.
        """
        self.send(TextMessage(json.dumps({"type": "ping", "id": n})))
        pong = json.dumps({"type": "pong", "id": n}, separators=(",", ":"))
        self.expect(TextMessage, lambda e: e.data == pong)


def pingFrame(kind: str) -> bytes:
    """
    One ping that asks the server for an answer as long as itself: a
    WebSocket ping frame, or the tether's own ping message, whose pong
    echoes its C{id}.
    """
    if kind == "websocket-ping":
        event = Ping(b"p" * PING_PAYLOAD)
    else:
        event = TextMessage(json.dumps({"type": "ping", "id": "p" * PING_PAYLOAD}))
    return bytes(Connection(ConnectionType.CLIENT).send(event))


def hostile(port: int, loggedIn: bool, ping: bytes, total: int, limit: float) -> dict:
    """
    Connect, log in if C{loggedIn}, then send C{ping} over and over:
    C{total} bytes as fast as the server takes them, then one every 50 ms,
    for at most C{limit} seconds, never reading.  Its receive buffer is
    small, so that the server's output fills early and the time until it
    is cut off is mostly the server's drain deadline.

    @return: C{sent}, the bytes sent, and C{cutAfter}, the seconds from
        the first byte until the server cut the connection (L{None} if it
        did not).
    """
    client = Client(port, receiveBuffer=16 * 1024)
    if loggedIn:
        client.hello("other", "pw")
    client.sock.settimeout(limit)
    block = ping * (65536 // len(ping))
    sent, start = 0, time.monotonic()
    try:
        while sent < total and time.monotonic() - start < limit:
            client.sock.sendall(block)
            sent += len(block)
        while time.monotonic() - start < limit:
            client.sock.sendall(ping)
            time.sleep(0.05)
    except socket.timeout:
        pass
    except OSError:
        return {"sent": sent, "cutAfter": time.monotonic() - start}
    finally:
        client.sock.close()
    return {"sent": sent, "cutAfter": None}


def probe(client: Client, stop: threading.Event, latencies: list[float]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        t0 = time.monotonic()
        client.roundTrip(n)
        latencies.append(time.monotonic() - t0)
        time.sleep(0.01)


def clients(port: int, loggedIn: bool, kind: str, total: int, limit: float) -> dict:
    """
    The probe logs in (it gets the pool's first address), then the hostile
    client floods while the probe measures its round trips.
    """
    prober = Client(port)
    prober.hello("lap", "secret")
    stop, latencies = threading.Event(), []
    probing = threading.Thread(target=probe, args=(prober, stop, latencies), daemon=True)
    probing.start()
    try:
        result = hostile(port, loggedIn, pingFrame(kind), total, limit)
    finally:
        stop.set()
        probing.join(15)
        prober.sock.close()
    return {**result, "latencies": latencies}


# -- the server, here ------------------------------------------------------------------


async def flood(reactor, loggedIn: bool, kind: str, total: int, limit: float = 30.0) -> FloodResult:
    """
    Run a server on 127.0.0.1 and the clients against it; while they run,
    feed the server's TUN side with packets for the hostile client's
    address (the pool's second) as fast as the reactor takes them, 256
    KiB per turn as a TUN port reads.
    """
    server = makeServer(reactor, allowPlain=True, limits=OutputLimits(drainTimeout=DRAIN))
    port = reactor.listenTCP(0, server.site(), interface="127.0.0.1")
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            if peak - base > 4 * 32 * MiB:
                # Broken already: stop feeding before the machine suffers.
                reactor.callFromThread(stopFeeding)
            time.sleep(0.05)

    def stopFeeding() -> None:
        if feeding.running:
            feeding.stop()

    packet = ip4("198.18.2.2", "198.18.100.3", b"t" * 1372)
    burst = (256 * 1024) // len(packet)

    def feed() -> None:
        for _ in range(burst):
            server.fromTun(packet)

    feeding = LoopingCall(feed)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if loggedIn:
            feeding.start(0)
        args = ["-m", "tests.test_flood_tether", str(port.getHost().port), str(int(loggedIn)), kind,
                str(total), str(limit)]
        out, err, code = await getProcessOutputAndValue(sys.executable, args, env=os.environ, path=ROOT)
    finally:
        stop.set()
        stopFeeding()
        sampler.join()
        server.stop()
        await port.stopListening()
    assert code == 0, err.decode(errors="replace")[-3000:]
    result = json.loads(out)
    return FloodResult(result["sent"], result["cutAfter"], peak - base, result["latencies"])


@pytest.mark.parametrize("kind", ["websocket-ping", "tether-ping"])
@pytest_twisted.ensureDeferred
async def test_pingFloodBeforeHelloIsBounded(reactor, kind):
    """100 MB of pings before hello, never read: RSS grows < 32 MiB, the client is cut within the drain deadline, another client's p99 < 100 ms."""
    result = await flood(reactor, loggedIn=False, kind=kind, total=100 * MiB)
    result.assertBounded(kind, DRAIN)


@pytest_twisted.ensureDeferred
async def test_loggedInClientNotReadingTunTrafficIsBounded(reactor):
    """A logged-in client that never reads while its TUN traffic pours in: RSS grows < 32 MiB, cut within the drain deadline, another client's p99 < 100 ms."""
    result = await flood(reactor, loggedIn=True, kind="tether-ping", total=0)
    result.assertBounded("logged in, TUN traffic", DRAIN)


if __name__ == "__main__":
    port, loggedIn, kind, total, limit = sys.argv[1:]
    print(json.dumps(clients(int(port), loggedIn == "1", kind, int(total), float(limit))))
