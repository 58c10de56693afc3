"""
Nothing accepted is lost: a C{twistd postoffice} subprocess is killed with
SIGKILL right after its 250, and POP3 deletions survive only a QUIT.
"""

from __future__ import annotations

import os
import poplib
import smtplib
import socket
import time

import pytest_twisted
from twisted.internet.task import deferLater

from tests.mail_support import DOMAIN, PASSWORD, USER, TwistdPostOffice, inThread, message

ALICE = f"{USER}@{DOMAIN}"


def maildirFiles(root: str, sub: str) -> list[str]:
    path = os.path.join(root, "mail", USER, sub)
    return os.listdir(path) if os.path.isdir(path) else []


@pytest_twisted.ensureDeferred
async def test_sigkill_after_250_keeps_message(tmp_path):
    """The message acknowledged by 250 is in new/ whole after the server dies by SIGKILL at once."""
    server = await inThread(TwistdPostOffice, str(tmp_path))
    try:
        def send():
            s = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20)
            s.ehlo("c.test")
            s.mail("bob@else.test")
            s.rcpt(ALICE)
            code, _ = s.data(message("durable", "x" * 500 + "\r\n" * 1 + "y" * 500 + "\r\n"))
            server.kill()
            return code

        code = await inThread(send)
    finally:
        server.stop()
    assert code == 250
    files = maildirFiles(str(tmp_path), "new")
    assert len(files) == 1
    with open(os.path.join(tmp_path, "mail", USER, "new", files[0]), "rb") as f:
        data = f.read()
    assert data.endswith(b"x" * 500 + b"\n" + b"y" * 500 + b"\n") and b"Subject: durable" in data


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_data_delivers_nothing(tmp_path):
    """A message cut off before its final dot never reaches new/."""
    server = await inThread(TwistdPostOffice, str(tmp_path))
    try:
        def send():
            s = socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=20)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO c.test\r\n")
            while f.readline()[3:4] == b"-":
                pass
            s.sendall(b"MAIL FROM:<bob@else.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            replies = [f.readline() for _ in range(3)]
            s.sendall(b"Subject: half\r\n\r\nhalf a message\r\n")
            server.kill()
            s.close()
            return replies

        replies = await inThread(send)
    finally:
        server.stop()
    assert replies[2].startswith(b"354")
    assert maildirFiles(str(tmp_path), "new") == []


@pytest_twisted.ensureDeferred
async def test_pop3_deletes_only_at_quit(tmp_path):
    """DELE then a dropped connection deletes nothing; DELE then QUIT deletes, and the UIDL of the rest is unchanged across restarts."""
    server = await inThread(TwistdPostOffice, str(tmp_path))
    try:
        def go():
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
                for i in range(3):
                    s.sendmail("bob@else.test", [ALICE], message(f"m{i}"))
            p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=20)
            p.user(USER)
            p.pass_(PASSWORD)
            uidls = p.uidl()[1]
            p.dele(1)
            p.sock.close()  # dropped, no QUIT
            p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=20)
            p.user(USER)
            p.pass_(PASSWORD)
            afterDrop = p.stat()[0]
            p.dele(1)
            p.quit()
            return uidls, afterDrop

        uidls, afterDrop = await inThread(go)
    finally:
        server.stop()
    assert afterDrop == 3
    server = await inThread(TwistdPostOffice, str(tmp_path))
    try:
        def again():
            p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=20)
            p.user(USER)
            p.pass_(PASSWORD)
            result = p.uidl()[1]
            p.quit()
            return result

        later = await inThread(again)
    finally:
        server.stop()
    ids = lambda lines: [line.split()[1] for line in lines]  # noqa: E731
    assert ids(later) == ids(uidls)[1:]


@pytest_twisted.ensureDeferred
async def test_twistd_start_removes_stale_tmp_files(reactor, tmp_path):
    """Starting twistd postoffice removes a delivery left in tmp/ over 36 hours ago (a crash mid-DATA) and keeps a recent one."""
    tmp = tmp_path / "mail" / USER / "tmp"
    for sub in ("tmp", "new", "cur"):
        (tmp_path / "mail" / USER / sub).mkdir(parents=True)
    stale, recent = tmp / "1.stale.host", tmp / "2.recent.host"
    for path, age in ((stale, 37 * 3600), (recent, 3600)):
        path.write_bytes(b"half a message")
        then = time.time() - age
        os.utime(path, (then, then))
    server = await inThread(TwistdPostOffice, str(tmp_path))
    try:
        deadline = time.monotonic() + 20
        while stale.exists() and time.monotonic() < deadline:
            await deferLater(reactor, 0.05)
    finally:
        server.stop()
    assert not stale.exists() and recent.exists()
