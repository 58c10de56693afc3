"""
The post office's TLS sessions over real sockets on 127.0.0.1: STARTTLS
and STLS run nothing the client pipelined after them in clear text
(RFC 3207 4.2, RFC 2595 3.1, CVE-2011-0411), and LOGOUT/QUIT over TLS
closes the TCP connection right after the TLS close, without waiting for
the client to close first.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl

import pytest
import pytest_twisted

from tests.mail_support import PASSWORD, USER, inThread, startPostOffice
from tests.test_mail_limits import readReply

#: Seconds a client waits for the server to close: less than the outbox's
#: closeTimeout (5 s), after which a close still pending is an abort.
CLOSE_WAIT = 3


@pytest_twisted.async_yield_fixture
async def po(reactor, tmp_path, devCert):
    office = await startPostOffice(reactor, str(tmp_path / "mail"), devCert, tlsPorts=True)
    yield office
    await office.stop()


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


def serverClosed(tls: ssl.SSLSocket) -> tuple[bytes, bytes]:
    """
    Without closing anything, read what is left of the TLS stream (up to
    the server's close_notify), then the TCP stream under it: both empty
    once the server has closed its side.
    """
    tls.settimeout(CLOSE_WAIT)
    rest = b""
    while chunk := tls.recv(4096):
        rest += chunk
    raw = socket.socket(fileno=socket.dup(tls.fileno()))
    try:
        raw.settimeout(CLOSE_WAIT)
        return rest, raw.recv(4096)
    finally:
        raw.close()


def imapLogout(port: int, ctx: ssl.SSLContext, implicit: bool) -> tuple[bytes, tuple[bytes, bytes]]:
    if implicit:
        m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
    else:
        m = imaplib.IMAP4("127.0.0.1", port, timeout=20)
        m.starttls(ssl_context=ctx)
    try:
        m.login(USER, PASSWORD)
        m.send(b"z LOGOUT\r\n")
        reply = m.readline() + m.readline()
        return reply, serverClosed(m.sock)
    finally:
        m.sock.close()


def popQuit(port: int, ctx: ssl.SSLContext, implicit: bool) -> tuple[bytes, tuple[bytes, bytes]]:
    if implicit:
        p = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=20)
    else:
        p = poplib.POP3("127.0.0.1", port, timeout=20)
        p.stls(context=ctx)
    try:
        p.user(USER)
        p.pass_(PASSWORD)
        p.sock.sendall(b"QUIT\r\n")
        return p.file.readline(), serverClosed(p.sock)
    finally:
        p.sock.close()


def smtpQuit(port: int, ctx: ssl.SSLContext, implicit: bool) -> tuple[bytes, tuple[bytes, bytes]]:
    if implicit:
        s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20)
    else:
        s = smtplib.SMTP("127.0.0.1", port, timeout=20)
        s.starttls(context=ctx)
    try:
        s.ehlo("client.test")
        s.login(USER, PASSWORD)
        code, text = s.docmd("QUIT")
        return b"%d %s" % (code, text), serverClosed(s.sock)
    finally:
        s.sock.close()


CLOSES = {
    "imap": (imapLogout, b"* BYE"),
    "pop3": (popQuit, b"+OK coursenet POP3 server signing off"),
    "smtp": (smtpQuit, b"221 2.0.0"),
}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "upgraded"])
@pytest.mark.parametrize("server", list(CLOSES))
@pytest_twisted.ensureDeferred
async def test_logout_closes_after_tls_close(po, devCert, server, implicit):
    """After LOGOUT/QUIT over TLS (IMAPS/POP3S/SMTPS or after STARTTLS/STLS) the server sends close_notify and closes TCP while the real client still holds its socket open."""
    quit, expected = CLOSES[server]
    port = po.ports[server + "s" if implicit else server]
    reply, closed = await inThread(quit, port, ssl.create_default_context(cafile=devCert[0]), implicit)
    assert reply.startswith(expected)
    assert closed == (b"", b"")
