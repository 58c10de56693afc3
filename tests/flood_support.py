"""
A hostile client and a well-behaved one, for the "flood without reading"
tests every service runs (issue 9): the hostile one sends requests as fast
as the server takes them and never reads a reply; meanwhile the
well-behaved one measures its round trips and the server's memory is
sampled.

Both clients are blocking sockets in threads of their own, so the reactor
under test serves them exactly as it would serve outside clients.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil
from twisted.internet.defer import Deferred

MiB = 1 << 20


@dataclass
class FloodResult:
    #: Bytes the hostile client got the server to take.
    sent: int
    #: Seconds from the first byte until the server cut the connection
    #: (None: it never did, within the time allowed).
    cutAfter: float | None
    #: The largest growth of this process's resident memory seen, in bytes.
    rssGrowth: int
    #: The well-behaved client's round trips, in seconds.
    latencies: list[float] = field(default_factory=list)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def assertBounded(self, label: str, deadline: float) -> None:
        """
        Print the figures, then check issue 9's bounds: RSS growth under
        32 MiB, the client cut within C{deadline} (plus 5 s of slack), and
        the other client's p99 under 100 ms.
        """
        print(
            f"{label}: took {self.sent / MiB:.1f} MiB, cut after {self.cutAfter} s,"
            f" RSS +{self.rssGrowth / MiB:.1f} MiB, probe p99 {self.p99() * 1000:.1f} ms"
            f" over {len(self.latencies)} round trips"
        )
        assert self.rssGrowth < 32 * MiB, self
        assert self.cutAfter is not None and self.cutAfter < deadline + 5, self
        assert len(self.latencies) > 10 and self.p99() < 0.1, self


def _connect(port: int, cafile: str | None, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    if cafile is not None:
        context = ssl.create_default_context(cafile=cafile)
        sock = context.wrap_socket(sock, server_hostname="localhost")
    return sock


def _flood(port: int, preamble: bytes, request: bytes, total: int, limit: float, cafile: str | None) -> tuple[int, float | None]:
    sock = _connect(port, cafile)
    sock.settimeout(limit)
    block = request * max(1, (64 * 1024) // len(request))
    sent = 0
    start = time.monotonic()
    try:
        if preamble:
            sock.sendall(preamble)
        while sent < total and time.monotonic() - start < limit:
            sock.sendall(block)
            sent += len(block)
    except (ConnectionError, ssl.SSLError, OSError) as e:
        if isinstance(e, socket.timeout):
            return sent, None
        return sent, time.monotonic() - start
    finally:
        sock.close()
    return sent, None


def _probe(port: int, exchange: Callable[[socket.socket], None], setup: Callable[[socket.socket], None] | None,
           stop: threading.Event, latencies: list[float], cafile: str | None) -> None:
    sock = _connect(port, cafile)
    sock.settimeout(10)
    try:
        if setup is not None:
            setup(sock)
        while not stop.is_set():
            t0 = time.monotonic()
            exchange(sock)
            latencies.append(time.monotonic() - t0)
            time.sleep(0.01)
    finally:
        sock.close()


def readUntil(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    """
    Read from a blocking socket until C{marker} has arrived; return all of it.
    """
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {data[-200:]!r}")
        data += chunk
        if len(data) > limit:
            raise AssertionError("reply too long")
    return data


def inThread(f, *args) -> Deferred:
    """
    Run C{f} in a thread of its own (not the reactor's pool, which the
    server under test needs for its own work).
    """
    from twisted.internet import reactor

    d: Deferred = Deferred()

    def run() -> None:
        try:
            result = f(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, daemon=True).start()
    return d


async def floodWithoutReading(
    port: int,
    request: bytes,
    exchange: Callable[[socket.socket], None],
    *,
    preamble: bytes = b"",
    setup: Callable[[socket.socket], None] | None = None,
    total: int = 100 * MiB,
    limit: float = 60.0,
    cafile: str | None = None,
) -> FloodResult:
    """
    Flood the server on C{port} with C{request} (after C{preamble}) without
    reading, up to C{total} bytes or C{limit} seconds, while another
    connection (prepared by C{setup}) repeats C{exchange}, a request and
    the wait for its reply.
    """
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    stop = threading.Event()
    latencies: list[float] = []

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    probing = inThread(_probe, port, exchange, setup, stop, latencies, cafile)
    try:
        sent, cutAfter = await inThread(_flood, port, preamble, request, total, limit, cafile)
    finally:
        stop.set()
    await probing
    sampler.join()
    return FloodResult(sent, cutAfter, peak - base, latencies)
