"""
The post office's limits over real sockets on 127.0.0.1: admission is one
cap for SMTP, POP3 and IMAP, each refusing in its own words.  (STARTTLS
injection: tests/test_mail_starttls.py.)
"""

from __future__ import annotations

import socket
import time

import pytest_twisted

from coursenet.admission import Admission
from tests.mail_support import inThread, startPostOffice


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
