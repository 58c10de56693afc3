"""
The chat server over real sockets on 127.0.0.1, against clients that
send much and read little (issue 9).

  - A client that floods either front door with commands and never reads
    the replies: the server's memory stays bounded, the client, paced by
    the flood limit, is cut off after the flood cut, and another client is
    still answered promptly.
  - A paste of 50 lines into a room: every line arrives, in order, paced
    by the flood limit rather than dropped.
  - A crowd bursting into one room while two honest clients, one per
    door, read at about 1 MB/s: they get every message and stay; only
    output a client leaves unread, in bytes and over time, cuts it off.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from chat.session import Limits
from chat.wire import MAX_TEXT
from tests.chat_support import listenAll
from tests.flood_support import MiB, floodWithoutReading, inThread, readUntil

#: The drain timeout of these servers: short, so the tests are quick.
DRAIN = 3.0


def ircRegister(sock: socket.socket, nick: str) -> None:
    sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
    readUntil(sock, b" 422 ")


def courseRegister(sock: socket.socket, nick: str) -> None:
    readUntil(sock, b"220 ")
    sock.sendall(f"NICK {nick}\r\n".encode())
    readUntil(sock, b"230 ")


def joinRoom(port: int, irc: bool, nick: str, room: str) -> socket.socket:
    """
    A connection to either door, registered as C{nick} and in C{room}.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if irc:
        ircRegister(sock, nick)
        sock.sendall(f"JOIN #{room}\r\n".encode())
        readUntil(sock, b" 366 ")
    else:
        courseRegister(sock, nick)
        sock.sendall(f"JOIN {room}\r\n".encode())
        readUntil(sock, b"250 ")
    return sock


def ping(sock: socket.socket) -> None:
    """
    One request, one reply line.
    """
    sock.sendall(b"PING p\r\n")
    readUntil(sock, b"\r\n")


FLOODS = {
    # door: (request, preamble, the probe's setup)
    "course": (b"LIST\r\n", b"", lambda s: courseRegister(s, "probe")),
    "course-tls": (b"HELP\r\n", b"", lambda s: courseRegister(s, "probe")),
    "irc": (b"PING x\r\n", b"", lambda s: ircRegister(s, "probe")),
}


@pytest.mark.parametrize("door", list(FLOODS))
@pytest_twisted.ensureDeferred
async def test_flood_without_reading_is_bounded(reactor, devCert, door):
    """100 MB of cheap commands without reading: RSS grows < 32 MiB, the client is cut within the flood cut (as long as the drain timeout), PING p99 < 100 ms for another client."""
    # The probe asks about 100 times a second: a flood limit above that
    # keeps it from being paced, and the flooder, paced, is cut.
    limits = Limits(drainTimeout=DRAIN, floodRate=200, floodBurst=200, floodCut=DRAIN)
    listening = await listenAll(reactor, limits, tls=devCert)
    port = {"course": listening.chatPort, "course-tls": listening.tlsPort, "irc": listening.ircPort}[door]
    request, preamble, setup = FLOODS[door]
    try:
        result = await floodWithoutReading(
            port, request, ping, preamble=preamble, setup=setup,
            cafile=devCert[0] if door == "course-tls" else None,
        )
    finally:
        await listening.stop()
    result.assertBounded(door, DRAIN)


# -- a crowd bursting into one room ---------------------------------------------------

CROWD = 60
RATE = 1_000_000  # bytes a second an honest client reads


def burster(port: int, nick: str, ready: threading.Barrier, stop: threading.Event, burst: int) -> None:
    """
    Join the crowd; when everyone has, send one allowed burst of long
    messages at once; then read (and drop) everything until told to stop.
    """
    sock = joinRoom(port, False, nick, "crowd")
    try:
        ready.wait()
        pad = "m" * MAX_TEXT
        sock.sendall(b"".join(f"SAY crowd {(f'{nick} {i} ' + pad)[:MAX_TEXT]}\r\n".encode() for i in range(burst)))
        sock.settimeout(0.5)
        while not stop.is_set():
            try:
                if not sock.recv(1 << 16):
                    return
            except socket.timeout:
                pass
    finally:
        sock.close()


def honestReader(port: int, irc: bool, ready: threading.Barrier, expected: int, rate: float, limit: float):
    """
    Join the crowd, then read at C{rate} bytes a second until C{expected}
    messages have come: C{(messages per sender, in order, bytes read,
    seconds, answered a PING afterwards)}.
    """
    sock = joinRoom(port, irc, "honestIrc" if irc else "honestCourse", "crowd")
    seen: dict[str, list[int]] = {}
    try:
        ready.wait()
        start = time.monotonic()
        rest, total, count = b"", 0, 0
        while count < expected and time.monotonic() - start < limit:
            try:
                chunk = sock.recv(8192)
            except ConnectionError:
                chunk = b""
            if not chunk:
                break  # cut off
            total += len(chunk)
            time.sleep(len(chunk) / rate)
            *lines, rest = (rest + chunk).split(b"\r\n")
            for line in lines:
                words = line.split(b" ", 5)
                if irc and len(words) > 4 and words[1] == b"PRIVMSG":
                    sender, n = words[3][1:], words[4]
                elif not irc and words[0] == b"MESSAGE":
                    sender, n = words[3], words[4]
                else:
                    continue
                seen.setdefault(sender.decode(), []).append(int(n))
                count += 1
        elapsed = time.monotonic() - start
        try:
            sock.sendall(b"PING :alive\r\n" if irc else b"PING alive\r\n")
            answered = b"alive" in readUntil(sock, b"alive\r\n", limit=1 << 24)
        except (ConnectionError, OSError):
            answered = False
        return seen, total, elapsed, answered
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_honest_readers_get_every_message_of_a_crowd_burst(reactor):
    """60 clients each send one allowed burst of 400-byte messages into one room at once: an honest reader on each door, at 1 MB/s, gets every message in order and stays connected."""
    limits = Limits()
    listening = await listenAll(reactor, limits)
    ready = threading.Barrier(CROWD + 2, action=lambda: time.sleep(0.5))  # tokens spent on NICK and JOIN come back
    stop = threading.Event()
    expected = CROWD * limits.floodBurst
    honest = [
        inThread(honestReader, port, irc, ready, expected, RATE, 60.0)
        for port, irc in ((listening.chatPort, False), (listening.ircPort, True))
    ]
    crowd = [
        inThread(burster, listening.chatPort, f"b{n}", ready, stop, limits.floodBurst)
        for n in range(CROWD)
    ]
    try:
        results = await defer.gatherResults(honest)
    finally:
        stop.set()
        ready.abort()
        await defer.DeferredList(crowd)
        await listening.stop()
    for (seen, total, elapsed, answered), door in zip(results, ("course", "irc")):
        print(f"{door}: {sum(map(len, seen.values()))} messages, {total / MiB:.2f} MiB in {elapsed:.2f} s, still answering: {answered}")
        assert seen == {f"b{n}": list(range(limits.floodBurst)) for n in range(CROWD)}
        assert answered


# -- a paste ------------------------------------------------------------------------------


def paste(port: int, irc: bool, lines: int) -> float:
    """
    Join room paste and send C{lines} messages in one write, as a paste
    does; return the seconds until the server answered a PING sent after
    them (it runs lines in order, so every message was taken by then).
    """
    sock = joinRoom(port, irc, "paster", "paste")
    try:
        say = b"PRIVMSG #paste :line %02d\r\n" if irc else b"SAY paste line %02d\r\n"
        text = b"".join(say % n for n in range(lines))
        start = time.monotonic()
        sock.sendall(text + (b"PING :done\r\n" if irc else b"PING done\r\n"))
        readUntil(sock, b"done\r\n", limit=1 << 24)
        return time.monotonic() - start
    finally:
        sock.close()


def collect(port: int, irc: bool, ready: threading.Event, lines: int) -> list[bytes]:
    """
    Join room paste through the other door and return the first C{lines} messages.
    """
    sock = joinRoom(port, irc, "reader", "paste")
    try:
        ready.set()
        data = b""
        while data.count(b"line ") < lines:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return [line.rsplit(b" ", 1)[1] for line in data.split(b"\r\n") if b"line " in line]
    finally:
        sock.close()


@pytest.mark.parametrize("door", ["course", "irc"])
@pytest_twisted.ensureDeferred
async def test_a_pasted_50_lines_arrive_whole_and_paced(reactor, door):
    """50 lines pasted at once into a room, at the default flood limits, all reach a member on the other door, in order, paced over seconds."""
    listening = await listenAll(reactor, Limits())
    irc = door == "irc"
    ready = threading.Event()
    try:
        reader = inThread(collect, listening.chatPort if irc else listening.ircPort, not irc, ready, 50)
        await inThread(ready.wait, 10)
        elapsed = await inThread(paste, listening.ircPort if irc else listening.chatPort, irc, 50)
        got = await reader
    finally:
        await listening.stop()
    print(f"{door}: 50 pasted lines taken in {elapsed:.2f} s")
    assert got == [b"%02d" % n for n in range(50)]
    assert elapsed > 2.5  # 30 lines past the burst of 20 at 10 a second
