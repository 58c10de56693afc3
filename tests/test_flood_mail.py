"""
The post office over real sockets on 127.0.0.1 against clients that send
much and read little (issue 9):

  - a client that floods SMTP, POP3 or IMAP with cheap commands and never
    reads the replies: the server's memory stays bounded, the client is
    cut off within the drain timeout, and another client is still
    answered promptly;
  - an overlong line gets each protocol's error, and the session goes on;
  - a client that reads a large FETCH slowly, but reads, gets all of it.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

import pytest
import pytest_twisted

from coursenet.receiver import CommandReceiver
from mail.maildir import ensureMaildir, writeMessageFile
from tests.flood_support import MiB, floodWithoutReading, readUntil
from tests.mail_support import PASSWORD, USER, inThread, startPostOffice

#: The drain timeout of these servers: short, so the tests are quick.
DRAIN = 3.0


@pytest.fixture
def shortDeadline(monkeypatch):
    """Cut a non-reading client after 3 s instead of the default, so the tests are quick."""
    monkeypatch.setattr(CommandReceiver, "drainTimeout", DRAIN)
    return DRAIN


@pytest_twisted.async_yield_fixture
async def po(reactor, tmp_path):
    office = await startPostOffice(reactor, str(tmp_path / "mail"))
    # A password's first check costs 16 MiB (scrypt), later ones a hash:
    # checked here, so the floods measure the sessions, not the hashing.
    for user, password in ((USER, PASSWORD), ("bob", "hunter2")):
        await inThread(logIn, office.ports["imap"], user, password)
    yield office
    await office.stop()


def logIn(port: int, user: str, password: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        readUntil(sock, b"ready\r\n")
        sock.sendall(f"a LOGIN {user} {password}\r\n".encode())
        readUntil(sock, b"a OK LOGIN succeeded\r\n")


# -- the well-behaved client of each server: log in, then NOOP -----------------------

PROBES = {
    # server: (the greeting's end, logging in, its answer's end, NOOP, its answer)
    "imap": (
        b"ready\r\n",
        f"p LOGIN {USER} {PASSWORD}\r\n".encode(),
        b"p OK LOGIN succeeded\r\n",
        b"p NOOP\r\n",
        b"p OK NOOP No operation performed\r\n",
    ),
    "smtp": (
        b"post office\r\n",
        b"EHLO probe.test\r\n",
        b"250 ENHANCEDSTATUSCODES\r\n",
        b"NOOP\r\n",
        b"250 2.0.0 OK\r\n",
    ),
    "pop3": (
        b"ready\r\n",
        f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode(),
        b"+OK Authentication succeeded\r\n",
        b"NOOP\r\n",
        b"+OK \r\n",
    ),
}


def probe(server: str) -> tuple[Callable[[socket.socket], None], Callable[[socket.socket], None]]:
    """
    How the well-behaved client of C{server} logs in, and its round trip.
    """
    greeting, login, loggedIn, noop, answer = PROBES[server]

    def exchange(sock: socket.socket) -> None:
        sock.sendall(noop)
        readUntil(sock, answer)

    def setup(sock: socket.socket) -> None:
        readUntil(sock, greeting)
        sock.sendall(login)
        readUntil(sock, loggedIn)
        exchange(sock)  # POP3's first command after login waits for the maildrop

    return setup, exchange


FLOODS = {
    # name: (server, request, preamble)
    "imap": ("imap", b"a NOOP\r\n", b""),
    "imap-logged-in": ("imap", b"a CAPABILITY\r\n", b"a LOGIN bob hunter2\r\n"),
    "smtp": ("smtp", b"NOOP\r\n", b"EHLO flood.test\r\n"),
    "smtp-ehlo": ("smtp", b"EHLO x\r\n", b""),
    "pop3": ("pop3", b"CAPA\r\n", b""),
    "pop3-logged-in": ("pop3", b"NOOP\r\n", b"USER bob\r\nPASS hunter2\r\n"),
}


@pytest.mark.parametrize("flood", list(FLOODS))
@pytest_twisted.ensureDeferred
async def test_flood_without_reading_is_bounded(po, shortDeadline, flood):
    """100 MB of cheap commands without reading: RSS grows < 32 MiB, the client is cut within the drain timeout, another client's NOOP p99 < 100 ms."""
    server, request, preamble = FLOODS[flood]
    setup, exchange = probe(server)
    result = await floodWithoutReading(po.ports[server], request, exchange, preamble=preamble, setup=setup)
    result.assertBounded(flood, shortDeadline)


# -- overlong lines ----------------------------------------------------------------------

OVERLONG = {
    # server: (what to read first, what to send, the whole answer)
    "smtp": (
        b"post office\r\n",
        b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n",
        b"500 5.5.2 Line too long: commands are limited to 512 octets\r\n250 2.0.0 OK\r\n",
    ),
    "pop3": (
        b"ready\r\n",
        b"USER " + b"x" * 400 + b"\r\nUSER alice\r\n",
        b"-ERR Line too long: commands are limited to 255 octets\r\n+OK USER accepted, send PASS\r\n",
    ),
    "imap": (
        b"ready\r\n",
        b"a LIST " + b"x" * 70000 + b"\r\nb NOOP\r\n",
        b"a BAD [TOOBIG] Line too long: lines are limited to 65536 octets\r\n"
        b"b OK NOOP No operation performed\r\n",
    ),
}


def overlong(port: int, greeting: bytes, send: bytes, answer: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        readUntil(sock, greeting)
        sock.sendall(send)
        data = b""
        while len(data) < len(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("server", list(OVERLONG))
@pytest_twisted.ensureDeferred
async def test_overlong_line_answered_and_session_goes_on(po, server):
    """A line over the protocol's limit gets its error reply, and the command after it is answered on the same connection."""
    greeting, send, answer = OVERLONG[server]
    assert await inThread(overlong, po.ports[server], greeting, send, answer) == answer


# -- a slow reader of a large FETCH ------------------------------------------------------

MESSAGES = 24
MESSAGE_SIZE = 512 * 1024
READ_RATE = 4 * MiB  # bytes a second


def slowFetch(port: int) -> tuple[int, bytes, float]:
    """
    Log in, FETCH every message and read the answer at C{READ_RATE}
    through a small receive buffer: the messages answered, the last
    line, the seconds it took.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    try:
        probe("imap")[0](sock)
        sock.sendall(b"s SELECT INBOX\r\n")
        readUntil(sock, b"s OK")
        start = time.monotonic()
        sock.sendall(b"f FETCH 1:* (BODY.PEEK[])\r\n")
        answer = b" FETCH (BODY[] {"
        tail, count = b"", 0
        while True:
            try:
                chunk = sock.recv(64 * 1024)
            except ConnectionError:
                chunk = b""
            if not chunk:
                return count, b"cut off", time.monotonic() - start
            # Too short to hold an answer whole: none is counted twice.
            count += (tail[-len(answer) + 1 :] + chunk).count(answer)
            tail = (tail + chunk)[-256:]
            if b"\r\nf " in tail:
                return count, tail[tail.index(b"\r\nf ") + 2 :].strip(), time.monotonic() - start
            time.sleep(len(chunk) / READ_RATE)
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_slow_reader_gets_a_whole_large_fetch(po, shortDeadline):
    """A client reading 12 MiB of FETCH at 4 MB/s is sent message after message as it reads, never cut off for the output waiting."""
    inbox = po.store.maildir(USER)
    ensureMaildir(inbox)
    for i in range(MESSAGES):
        writeMessageFile(inbox, b"Subject: big %d\n\n" % i + (b"y" * 76 + b"\n") * (MESSAGE_SIZE // 77))
    count, last, seconds = await inThread(slowFetch, po.ports["imap"])
    print(f"slow FETCH: {count} messages in {seconds:.1f} s, then {last!r}")
    assert (count, last) == (MESSAGES, b"f OK FETCH completed")
