"""
Python's imaplib and curl, clients nobody here wrote, against the IMAP
server on a real socket: the calls mail programs make, as they make them.
"""

from __future__ import annotations

import imaplib
import shutil

import pytest_twisted

from tests.conftest import skipOrFail
from tests.mail_support import PASSWORD, USER, inThread, run, startPostOffice
from tests.test_mail_imap_fetch import NESTED


@pytest_twisted.async_yield_fixture
async def po(reactor, tmp_path):
    office = await startPostOffice(reactor, str(tmp_path / "mail"))
    yield office
    await office.stop()


@pytest_twisted.ensureDeferred
async def test_imaplib_append_fetch_search_move(po):
    """imaplib's default APPEND (no flags), FETCH of a nested message in every form, SEARCH, STORE of a keyword, UID MOVE and EXPUNGE all work."""

    def go():
        m = imaplib.IMAP4("127.0.0.1", po.ports["imap"], timeout=20)
        m.login(USER, PASSWORD)
        out = {"append": m.append("INBOX", None, None, NESTED)}
        m.append("INBOX", "(\\Seen)", None, b"From: Bob <bob@example.org>\r\nSubject: plain\r\n\r\nhello\r\n")
        out["select"] = m.select("INBOX")
        out["untagged"] = dict(m.untagged_responses)
        out["fetch"] = m.fetch("1", "(BODYSTRUCTURE ENVELOPE BODY.PEEK[2.1] BODY.PEEK[2.2.1] BODY.PEEK[9])")
        out["search"] = m.search(None, "FROM", '"Bob"')
        out["nothing"] = m.search(None, "SUBJECT", "absent")
        out["store"] = m.store("1", "+FLAGS", "($Label1)")
        m.create("Archive")
        out["move"] = m.uid("MOVE", "2", "Archive")
        out["list"] = m.list()
        out["noop"] = m.noop()
        m.logout()
        return out

    out = await inThread(go)
    assert out["append"][0] == "OK" and out["append"][1][0].startswith(b"[APPENDUID ")
    assert out["select"] == ("OK", [b"2"])
    assert out["untagged"]["UIDNEXT"] == [b"3"] and "PERMANENTFLAGS" in out["untagged"]
    typ, data = out["fetch"]
    assert typ == "OK"
    flat = b"".join(part if isinstance(part, bytes) else b"".join(part) for part in data)
    assert b'"mixed" ("boundary" "Outer")' in flat and b"inner text" in flat and b"bottom" in flat
    assert out["search"] == ("OK", [b"2"]) and out["nothing"] == ("OK", [b""])
    assert out["store"] == ("OK", [b"1 (FLAGS ($Label1 \\Recent))"])
    assert out["move"][0] == "OK"
    assert any(b"\\Archive" in line and b'"Archive"' in line for line in out["list"][1])
    assert out["noop"][0] == "OK"


@pytest_twisted.ensureDeferred
async def test_curl_appends_fetches_a_section_and_searches(po, reactor, tmp_path):
    """curl uploads a nested message with APPEND, fetches part 2.1 of it by UID and section, and runs a SEARCH."""
    if shutil.which("curl") is None:
        skipOrFail("curl is not installed (make sysdeps)")
    mail = tmp_path / "nested.eml"
    mail.write_bytes(NESTED)
    base = f"imap://127.0.0.1:{po.ports['imap']}/INBOX"
    user = ["--user", f"{USER}:{PASSWORD}"]
    code, out, err = await run(reactor, "curl", "-sS", *user, "--upload-file", str(mail), base)
    assert code == 0, err
    code, out, err = await run(reactor, "curl", "-sS", *user, base + ";UID=1;SECTION=2.1")
    assert code == 0, err
    assert out == b"inner text"
    code, out, err = await run(reactor, "curl", "-sS", *user, "--request", "SEARCH FROM inner@example.org", base)
    assert code == 0, err
    assert out.strip() == b"* SEARCH"
    code, out, err = await run(reactor, "curl", "-sS", *user, "--request", "SEARCH TEXT inner@example.org", base)
    assert out.strip() == b"* SEARCH 1"
