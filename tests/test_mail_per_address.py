"""
The post office's per-address connection cap (issue 10): one client
address cannot hold more than its share of SMTP, POP3 and IMAP together;
and how log lines name those clients (issue 13).
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import socket
import ssl

import pytest_twisted
from twisted.logger import capturedLogs, formatEvent

from coursenet.admission import Admission
from tests.mail_support import PASSWORD, USER, inThread, startPostOffice


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


def _logInEverywhere(ports: dict[str, int], cafile: str) -> list[int]:
    """
    Log in over IMAPS (LOGIN), POP3S (USER/PASS) and SMTPS (AUTH); return
    the local port each client used.
    """
    tls = ssl.create_default_context(cafile=cafile)
    used = []
    imap = imaplib.IMAP4_SSL("localhost", ports["imaps"], ssl_context=tls, timeout=20)
    imap.login(USER, PASSWORD)
    used.append(imap.sock.getsockname()[1])
    imap.logout()
    pop = poplib.POP3_SSL("localhost", ports["pop3s"], context=tls, timeout=20)
    pop.user(USER)
    pop.pass_(PASSWORD)
    used.append(pop.sock.getsockname()[1])
    pop.quit()
    with smtplib.SMTP_SSL("localhost", ports["smtps"], context=tls, timeout=20) as smtp:
        smtp.login(USER, PASSWORD)
        used.append(smtp.sock.getsockname()[1])
    return used


@pytest_twisted.ensureDeferred
async def test_loginLinesNamePeersAsAddressPortAndUser(reactor, tmp_path, devCert):
    """IMAP, POP3 and SMTP log a login as '127.0.0.1:PORT [alice]' (the client's own port), never a Twisted address repr or the password."""
    office = await startPostOffice(reactor, str(tmp_path / "mail"), devCert, tlsPorts=True)
    try:
        with capturedLogs() as events:
            used = await inThread(_logInEverywhere, office.ports, devCert[0])
    finally:
        await office.stop()
    lines = [formatEvent(e) for e in events]
    for port, what in zip(used, ("logged in", "logged in", "authenticated")):
        assert f"127.0.0.1:{port} [{USER}] {what}" in lines, (port, lines)
    assert not [line for line in lines if "IPv4Address" in line or PASSWORD in line]


@pytest_twisted.ensureDeferred
async def test_refusedConnectionLineNamesThePeer(reactor, tmp_path):
    """A connection turned away by the per-address cap is logged as 'refused 127.0.0.1:PORT: ...'."""
    office = await startPostOffice(reactor, str(tmp_path / "mail"), admission=Admission(maxConnections=100, maxPerAddress=3))
    try:
        with capturedLogs() as events:
            await inThread(_crowdFromOneAddress, office.ports)
    finally:
        await office.stop()
    refused = [formatEvent(e) for e in events if formatEvent(e).startswith("refused ")]
    assert refused and all(re.match(r"refused 127\.0\.0\.1:\d+: ", line) for line in refused), refused
