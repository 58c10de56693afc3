"""
The post office over loopback with clients nobody here wrote: Python's
smtplib, poplib and imaplib (in threads), curl, swaks and mbsync.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import textwrap

import pytest_twisted

from tests.mail_support import DOMAIN, PASSWORD, USER, TwistdPostOffice, inThread, message, run, startPostOffice

ALICE = f"{USER}@{DOMAIN}"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        from tests.conftest import skipOrFail

        skipOrFail(f"{tool} is not installed (make sysdeps)")


@pytest_twisted.async_yield_fixture
async def po(reactor, tmp_path, devCert):
    office = await startPostOffice(reactor, str(tmp_path / "mail"), devCert, tlsPorts=True)
    yield office
    await office.stop()


@pytest_twisted.async_yield_fixture
async def plainPo(reactor, tmp_path):
    office = await startPostOffice(reactor, str(tmp_path / "mail"))
    yield office
    await office.stop()


def tlsContext(devCert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=devCert[0])


def smtpSend(port, sender, rcpts, data, tls=None, login=None):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        if tls is not None:
            s.starttls(context=tls)
            s.ehlo("client.test")
        if login:
            s.login(*login)
        return s.sendmail(sender, rcpts, data)


@pytest_twisted.ensureDeferred
async def test_stdlib_clients_plain(plainPo):
    """smtplib delivers to alice without TLS; poplib and imaplib then read the same bytes."""
    await inThread(smtpSend, plainPo.ports["smtp"], "bob@else.test", [ALICE], message("plain"))

    def pop():
        p = poplib.POP3("127.0.0.1", plainPo.ports["pop3"], timeout=20)
        p.user(USER)
        p.pass_(PASSWORD)
        lines = p.retr(1)[1]
        p.quit()
        return lines

    def imap():
        m = imaplib.IMAP4("127.0.0.1", plainPo.ports["imap"], timeout=20)
        m.login(USER, PASSWORD)
        m.select("INBOX")
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        m.logout()
        return data[0][1]

    lines = await inThread(pop)
    body = await inThread(imap)
    assert b"Subject: plain" in lines
    assert body.endswith(b"Hi Alice,\r\nhow are you?\r\n")
    assert b"\r\n".join(lines) + b"\r\n" == body


@pytest_twisted.ensureDeferred
async def test_stdlib_clients_starttls(po, devCert):
    """With a certificate, smtplib/poplib/imaplib upgrade with STARTTLS/STLS before passwords and everything works."""
    ctx = tlsContext(devCert)
    await inThread(smtpSend, po.ports["smtp"], "bob@else.test", [ALICE], message("tls"), tls=ctx)

    def pop():
        p = poplib.POP3("127.0.0.1", po.ports["pop3"], timeout=20)
        caps = p.capa()
        p.stls(context=ctx)
        p.user(USER)
        p.pass_(PASSWORD)
        count = p.stat()[0]
        p.quit()
        return caps, count

    def imap():
        m = imaplib.IMAP4("127.0.0.1", po.ports["imap"], timeout=20)
        before = m.capabilities
        m.starttls(ssl_context=ctx)
        m.login(USER, PASSWORD)
        m.select("INBOX")
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        m.logout()
        return before, data[0][1]

    caps, count = await inThread(pop)
    assert "STLS" in caps and "USER" not in caps and count == 1
    before, subject = await inThread(imap)
    assert "LOGINDISABLED" in before and "STARTTLS" in before
    assert subject == b"Subject: tls\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_implicit_tls_ports(po, devCert):
    """SMTPS, POP3S and IMAPS listeners (ssl: endpoints) take logins at once."""
    ctx = tlsContext(devCert)

    def go():
        with smtplib.SMTP_SSL("127.0.0.1", po.ports["smtps"], context=ctx, timeout=20) as s:
            s.ehlo("c.test")
            assert "auth" in s.esmtp_features and "starttls" not in s.esmtp_features
            s.login(USER, PASSWORD)
            s.sendmail("alice@example.test", [ALICE], message("smtps"))
        p = poplib.POP3_SSL("127.0.0.1", po.ports["pop3s"], context=ctx, timeout=20)
        p.user(USER)
        p.pass_(PASSWORD)
        n = p.stat()[0]
        p.quit()
        m = imaplib.IMAP4_SSL("127.0.0.1", po.ports["imaps"], ssl_context=ctx, timeout=20)
        m.login(USER, PASSWORD)
        typ, data = m.select("INBOX")
        m.logout()
        return n, data

    n, data = await inThread(go)
    assert n == 1 and data == [b"1"]


@pytest_twisted.ensureDeferred
async def test_open_relay_refused(po, devCert):
    """Mail for another domain is refused with 5.7.1, anonymous or authenticated; local mail is accepted from anyone."""
    ctx = tlsContext(devCert)

    def go():
        results = {}
        for login in (None, (USER, PASSWORD)):
            try:
                smtpSend(po.ports["smtp"], "x@else.test", ["victim@elsewhere.test"], message(), tls=ctx, login=login)
            except smtplib.SMTPRecipientsRefused as e:
                results[bool(login)] = e.recipients["victim@elsewhere.test"]
        return results

    results = await inThread(go)
    assert results[False][0] == 550 and results[False][1].startswith(b"5.7.1")
    assert results[True][0] == 550 and b"does not relay" in results[True][1]
    assert po.inbox() == []


@pytest_twisted.ensureDeferred
async def test_curl_plain_and_starttls(po, reactor, devCert, tmp_path):
    """curl sends with smtp:// (plain and --ssl-reqd) and reads with pop3:// and imap:// using STARTTLS."""
    need("curl")
    mail = tmp_path / "m.eml"
    mail.write_bytes(message("curl"))
    cafile = devCert[0]
    code, out, err = await run(
        reactor, "curl", "-sS", f"smtp://127.0.0.1:{po.ports['smtp']}", "--mail-from", "bob@else.test",
        "--mail-rcpt", ALICE, "--upload-file", str(mail),
    )
    assert code == 0, err
    code, out, err = await run(
        reactor, "curl", "-sS", "--ssl-reqd", "--cacert", cafile, f"smtp://localhost:{po.ports['smtp']}",
        "--mail-from", "bob@else.test", "--mail-rcpt", ALICE, "--upload-file", str(mail),
    )
    assert code == 0, err
    code, out, err = await run(
        reactor, "curl", "-sS", "--ssl-reqd", "--cacert", cafile, "--user", f"{USER}:{PASSWORD}",
        f"pop3://localhost:{po.ports['pop3']}/2",
    )
    assert code == 0, err
    assert b"Subject: curl" in out
    code, out, err = await run(
        reactor, "curl", "-sS", "--ssl-reqd", "--cacert", cafile, "--user", f"{USER}:{PASSWORD}",
        f"imap://localhost:{po.ports['imap']}/INBOX;UID=1",
    )
    assert code == 0, err
    assert out.replace(b"\r\n", b"\n").endswith(b"how are you?\n")
    code, out, err = await run(
        reactor, "curl", "-sS", "--user", f"{USER}:{PASSWORD}", f"pop3://127.0.0.1:{po.ports['pop3']}/1",
    )
    assert code != 0  # passwords in clear are refused once TLS is offered


@pytest_twisted.ensureDeferred
async def test_curl_plain_server(plainPo, reactor):
    """On a server without TLS, curl reads over plain pop3:// and imap://."""
    need("curl")
    await inThread(smtpSend, plainPo.ports["smtp"], "bob@else.test", [ALICE], message("plain curl"))
    code, out, err = await run(
        reactor, "curl", "-sS", "--user", f"{USER}:{PASSWORD}", f"pop3://127.0.0.1:{plainPo.ports['pop3']}/1"
    )
    assert code == 0 and b"Subject: plain curl" in out, err
    code, out, err = await run(
        reactor, "curl", "-sS", "--user", f"{USER}:{PASSWORD}", f"imap://127.0.0.1:{plainPo.ports['imap']}/INBOX;UID=1"
    )
    assert code == 0 and b"Subject: plain curl" in out, err


@pytest_twisted.ensureDeferred
async def test_swaks_starttls_auth(po, reactor, devCert):
    """swaks upgrades with STARTTLS, authenticates with PLAIN and LOGIN, and its message lands in the Maildir."""
    need("swaks")
    for mech in ("PLAIN", "LOGIN"):
        code, out, err = await run(
            reactor, "swaks", "--server", "127.0.0.1", "--port", str(po.ports["smtp"]), "--tls",
            "--auth", mech, "--auth-user", USER, "--auth-password", PASSWORD,
            "--from", ALICE, "--to", ALICE, "--header", f"Subject: swaks {mech}",
        )
        assert code == 0, out + err
        assert b"235 2.7.0" in out
    code, out, err = await run(
        reactor, "swaks", "--server", "127.0.0.1", "--port", str(po.ports["smtp"]),
        "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD, "--to", ALICE,
    )
    assert code != 0  # no AUTH before STARTTLS
    bodies = po.read()
    assert len(bodies) == 2 and all(b"with ESMTPSA" in b for b in bodies)


@pytest_twisted.ensureDeferred
async def test_mbsync_pulls_mailbox(po, reactor, devCert, tmp_path):
    """mbsync (isync) mirrors INBOX and a folder over IMAP with STARTTLS into a local Maildir."""
    need("mbsync")
    for i in range(3):
        await inThread(smtpSend, po.ports["smtp"], "bob@else.test", [ALICE], message(f"sync {i}"))

    def mkfolder():
        m = imaplib.IMAP4("127.0.0.1", po.ports["imap"], timeout=20)
        m.starttls(ssl_context=tlsContext(devCert))
        m.login(USER, PASSWORD)
        m.create("Archive")
        m.append("Archive", "(\\Seen)", None, message("archived"))
        m.logout()

    await inThread(mkfolder)
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(textwrap.dedent(f"""\
        IMAPAccount po
        Host localhost
        Port {po.ports['imap']}
        User {USER}
        Pass {PASSWORD}
        SSLType STARTTLS
        CertificateFile {devCert[0]}

        IMAPStore po-remote
        Account po

        MaildirStore po-local
        Path {local}/
        Inbox {local}/INBOX
        SubFolders Verbatim

        Channel po
        Far :po-remote:
        Near :po-local:
        Patterns *
        Create Near
        SyncState *
        """))
    code, out, err = await run(reactor, "mbsync", "-c", str(rc), "-a", timeout=60)
    assert code == 0, out + err
    inbox = os.listdir(local / "INBOX" / "new") + os.listdir(local / "INBOX" / "cur")
    assert len(inbox) == 3
    archive = os.listdir(local / "Archive" / "cur")
    assert len(archive) == 1 and archive[0].endswith("S")


@pytest_twisted.ensureDeferred
async def test_imap_idle_sees_smtp_delivery(po, devCert):
    """A client idling on INBOX is told of a message delivered by SMTP, without reconnecting."""
    ctx = tlsContext(devCert)

    def idle():
        m = imaplib.IMAP4("127.0.0.1", po.ports["imap"], timeout=20)
        m.starttls(ssl_context=ctx)
        m.login(USER, PASSWORD)
        m.select("INBOX")
        tag = m._new_tag()
        m.send(tag + b" IDLE\r\n")
        assert m.readline().startswith(b"+")
        smtpSend(po.ports["smtp"], "bob@else.test", [ALICE], message("pushed"))
        line = m.readline()
        m.send(b"DONE\r\n")
        done = m.readline()
        while not done.startswith(tag):
            done = m.readline()
        m.logout()
        return line, done

    line, done = await inThread(idle)
    assert line == b"* 1 EXISTS\r\n"
    assert done.split()[1] == b"OK"


@pytest_twisted.ensureDeferred
async def test_concurrent_deliveries_one_mailbox(po):
    """Twenty senders delivering to one mailbox at once: every message is stored whole, none clobbered."""

    def send(i):
        smtpSend(po.ports["smtp"], "bob@else.test", [ALICE], message(f"n{i}", f"body {i}\r\n" * 50))

    from twisted.internet import defer

    await defer.gatherResults([inThread(send, i) for i in range(20)])
    bodies = po.read()
    assert len(bodies) == 20
    subjects = sorted(int(b.split(b"Subject: n")[1].split(b"\n")[0]) for b in bodies)
    assert subjects == list(range(20))
    for b in bodies:
        n = b.split(b"Subject: n")[1].split(b"\n")[0]
        assert b.count(b"body " + n + b"\n") == 50


@pytest_twisted.ensureDeferred
async def test_imap_literal_that_lies(po, devCert):
    """An APPEND literal larger than the maximum is refused before any data; one shorter than announced leaves the rest as a bad command, and the session goes on."""

    def go():
        s = socket.create_connection(("127.0.0.1", po.ports["imap"]), timeout=20)
        t = tlsContext(devCert)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a STARTTLS\r\n")
        f.readline()
        s2 = t.wrap_socket(s, server_hostname="localhost")
        f = s2.makefile("rb")
        s2.sendall(b"b LOGIN alice secret\r\n")
        f.readline()
        s2.sendall(b"c APPEND INBOX {99999999999}\r\n")
        huge = f.readline()
        s2.sendall(b"d APPEND INBOX {5}\r\n")
        cont = f.readline()
        s2.sendall(b"12345678\r\n")
        replies = [f.readline()]
        s2.sendall(b"e NOOP\r\n")
        while True:
            line = f.readline()
            if line.startswith(b"e "):
                break
        s2.close()
        return huge, cont, replies, line

    huge, cont, replies, noop = await inThread(go)
    assert huge.startswith(b"c BAD") and b"TOOBIG" in huge
    assert cont.startswith(b"+")
    assert any(r.startswith(b"d BAD") for r in replies)
    assert noop.startswith(b"e OK")



@pytest_twisted.ensureDeferred
async def test_smtplib_reaches_postmaster_and_a_quoted_local_part(tmp_path):
    """Under twistd with only alice, smtplib's RCPT TO:<postmaster> and <"alice"@domain> are taken and land in alice's Maildir; a dot-stuffed message of exactly --max-message-size octets is not refused."""
    server = await inThread(TwistdPostOffice, str(tmp_path), "--max-message-size", "2000")
    # 2000 octets with CRLF line ends; the body's lines start with a dot,
    # so smtplib stuffs them and sends more than 2000.
    head = message("pm", "")
    body = (b"." + b"d" * 97 + b"\r\n") * ((2000 - len(head)) // 100)
    data = head + body + b"." + b"e" * (2000 - len(head) - len(body) - 3) + b"\r\n"

    def send():
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
            return s.sendmail("bob@else.test", ["postmaster", f'"{USER}"@{DOMAIN}'], data)

    try:
        refused = await inThread(send)
    finally:
        server.stop()
    inbox = os.path.join(str(tmp_path), "mail", USER, "new")
    stored = []
    for name in os.listdir(inbox):
        with open(os.path.join(inbox, name), "rb") as f:
            stored.append(f.read())
    assert len(data) == 2000 and refused == {}
    assert sorted(m.split(b"\n")[3].split(b";")[0] for m in stored) == [
        b'\tfor <"alice"@example.test>',
        b"\tfor <postmaster@example.test>",
    ]
    assert all(m.endswith(data.replace(b"\r\n", b"\n")) for m in stored)
