"""
Python's imaplib, a client nobody here wrote, against the IMAP server on a
real socket: the calls mail programs make, as imaplib makes them.
"""

from __future__ import annotations

import imaplib

import pytest_twisted

from tests.mail_support import PASSWORD, USER, inThread, startPostOffice
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
