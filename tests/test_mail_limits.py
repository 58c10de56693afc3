"""
The post office's limits over real sockets on 127.0.0.1: STARTTLS and STLS
run nothing the client pipelined after them in clear text (RFC 3207 4.2,
RFC 2595 3.1, CVE-2011-0411), and admission is one cap for SMTP, POP3 and
IMAP, each refusing in its own words.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import pytest_twisted

from coursenet.admission import Admission
from tests.mail_support import inThread, startPostOffice


@pytest_twisted.async_yield_fixture
async def po(reactor, tmp_path, devCert):
    office = await startPostOffice(reactor, str(tmp_path / "mail"), devCert)
    yield office
    await office.stop()


def readReply(sock, last: bytes) -> bytes:
    """
    Read until a whole line starting with C{last} has come: all of it.
    """
    data = b""
    while not (data.endswith(b"\r\n") and (data.startswith(last) or b"\r\n" + last in data)):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {last!r}; got {data!r}")
        data += chunk
    return data


def injected(port: int, cafile: str, before: bytes, upgrade: bytes, afterTLS: bytes, last: bytes) -> tuple[bytes, bytes]:
    """
    After the greeting, send C{before} (SMTP's EHLO) and read its reply,
    then C{upgrade}: STARTTLS or STLS with a command after it in the same
    packet.  Start TLS and send C{afterTLS}.  The clear-text reply to the
    upgrade, and the lines that came over TLS up to one starting with
    C{last}.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        readReply(sock, b"")
        if before:
            sock.sendall(before)
            readReply(sock, b"250 ")
        sock.sendall(upgrade)
        clear = readReply(sock, b"")
        tls = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname="localhost")
        tls.sendall(afterTLS)
        return clear, readReply(tls, last)
    finally:
        sock.close()


INJECTIONS = {
    # server: (before, the upgrade and a command in one packet, its reply
    # in clear text, what is sent over TLS, the whole reply to that)
    "imap": (
        b"",
        b"a STARTTLS\r\nb LOGIN alice secret\r\n",
        b"a OK Begin TLS negotiation now\r\n",
        b"c SELECT INBOX\r\n",
        b"c BAD Unsupported command\r\n",  # still not logged in
    ),
    "smtp": (
        b"EHLO client.test\r\n",
        b"STARTTLS\r\nHELO evil.test\r\n",
        b"220 2.0.0 Ready to start TLS\r\n",
        b"MAIL FROM:<bob@else.test>\r\n",
        b"503 5.5.1 Send EHLO or HELO first\r\n",  # HELO did not run
    ),
    "pop3": (
        b"",
        b"STLS\r\nUSER alice\r\n",
        b"+OK Begin TLS negotiation\r\n",
        b"PASS secret\r\n",
        b"-ERR USER required before PASS\r\n",  # USER did not run
    ),
}


@pytest.mark.parametrize("server", list(INJECTIONS))
@pytest_twisted.ensureDeferred
async def test_upgrade_drops_what_was_pipelined_after_it(po, devCert, server):
    """STARTTLS (STLS) and a command in one packet: the command never runs, before or after TLS, as the reply to the next command over TLS shows."""
    before, upgrade, clearReply, afterTLS, tlsReply = INJECTIONS[server]
    last = tlsReply[:2] if server == "imap" else b""
    clear, over = await inThread(injected, po.ports[server], devCert[0], before, upgrade, afterTLS, last)
    assert (clear, over) == (clearReply, tlsReply)


def crowd(ports: dict[str, int]) -> tuple[dict[str, bytes], bytes]:
    """
    Fill both places (SMTP, IMAP), then knock at each server: what each
    refusal says before the close.  Then free a place: the greeting a
    new POP3 connection gets.
    """
    kept = [socket.create_connection(("127.0.0.1", ports[name]), timeout=20) for name in ("smtp", "imap")]
    try:
        for sock in kept:
            readReply(sock, b"")
        refusals = {}
        for name in ("pop3", "smtp", "imap"):
            with socket.create_connection(("127.0.0.1", ports[name]), timeout=20) as sock:
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                refusals[name] = data
        kept.pop(0).close()
        deadline = time.monotonic() + 10
        while True:
            with socket.create_connection(("127.0.0.1", ports["pop3"]), timeout=20) as sock:
                greeting = readReply(sock, b"")
            if greeting.startswith(b"+OK") or time.monotonic() > deadline:
                return refusals, greeting
            time.sleep(0.05)
    finally:
        for sock in kept:
            sock.close()


@pytest_twisted.ensureDeferred
async def test_admission_is_one_cap_for_the_three_servers(reactor, tmp_path):
    """With room for two connections in all, a third to any server gets that server's busy reply and is closed; a place freed is given again."""
    office = await startPostOffice(reactor, str(tmp_path / "mail"), admission=Admission(maxConnections=2))
    try:
        refusals, greeting = await inThread(crowd, office.ports)
    finally:
        await office.stop()
    full = b"server full (2 connections); try again later\r\n"
    assert refusals == {
        "pop3": b"-ERR [SYS/TEMP] " + full,
        "smtp": b"421 4.3.2 " + full,
        "imap": b"* BYE " + full,
    }
    assert greeting.startswith(b"+OK coursenet POP3 server ready")
