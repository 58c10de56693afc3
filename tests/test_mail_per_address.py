"""
The post office's per-address connection cap (issue 10): one client
address cannot hold more than its share of SMTP, POP3 and IMAP together.
"""

from __future__ import annotations

import socket

import pytest_twisted

from coursenet.admission import Admission
from tests.mail_support import inThread, startPostOffice


def _greetingOrRefusal(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _crowdFromOneAddress(ports: dict[str, int]) -> tuple[list[bytes], dict[str, bytes], bytes]:
    """
    Take the address's three places (one per server), knock at each
    server once more, then free a place and connect again.
    """
    kept = [socket.create_connection(("127.0.0.1", ports[name]), timeout=20) for name in ("smtp", "pop3", "imap")]
    try:
        greetings = [_greetingOrRefusal(sock) for sock in kept]
        refusals = {}
        for name in ("smtp", "pop3", "imap"):
            with socket.create_connection(("127.0.0.1", ports[name]), timeout=20) as sock:
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                refusals[name] = data
        kept.pop().close()
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", ports["imap"]), timeout=20) as sock:
                again = _greetingOrRefusal(sock)
            if again.startswith(b"* OK"):
                break
        return greetings, refusals, again
    finally:
        for sock in kept:
            sock.close()


@pytest_twisted.ensureDeferred
async def test_oneAddressIsCappedAcrossTheThreeServers(reactor, tmp_path):
    """With 3 places per address, a 4th connection from 127.0.0.1 to any server is refused in that server's words, naming the address; a freed place is given again."""
    office = await startPostOffice(reactor, str(tmp_path / "mail"), admission=Admission(maxConnections=100, maxPerAddress=3))
    try:
        greetings, refusals, again = await inThread(_crowdFromOneAddress, office.ports)
    finally:
        await office.stop()
    assert [g[:4] for g in greetings] == [b"220 ", b"+OK ", b"* OK"]
    why = b"too many connections from 127.0.0.1 (limit 3); try again later\r\n"
    assert refusals == {
        "smtp": b"421 4.3.2 " + why,
        "pop3": b"-ERR [SYS/TEMP] " + why,
        "imap": b"* BYE " + why,
    }
    assert again.startswith(b"* OK")
