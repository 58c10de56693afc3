"""
SEARCH, keywords and flag changes of other sessions, over StringTransport.
"""

from __future__ import annotations

import pytest

from mail.imap_search import SearchError, compileQuery
from tests.mail_support import Session, clock, pool, storeWith  # noqa: F401 (fixtures)

MESSAGES = [
    b"From: Ann Example <ann@example.org>\r\nTo: team: bob@example.org;\r\nSubject: =?utf-8?q?caf=C3=A9?= plans\r\n"
    b"Date: Sat, 24 Mar 2007 23:00:00 +0200\r\n\r\nLet us meet.\r\n",
    b"From: carl@example.net\r\nSubject: NiL\r\nX-Extra: hello there\r\nDate: Sun, 25 Mar 2007 01:00:00 +0300\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\naGlkZGVuIHdvcmQ=\r\n",
    b"Date: not a date\r\n\r\nnothing here\r\n",
]


@pytest.fixture
def store(tmp_path, pool, clock):
    return storeWith(str(tmp_path / "mail"), pool, clock, MESSAGES)


@pytest.fixture
def s(store, clock, pool):
    session = Session(store, clock, pool)
    session.say(b"a SELECT INBOX\r\n")
    return session


@pytest.mark.parametrize(
    "keys, found",
    [
        (b"FROM ann", b"1"),
        (b"FROM \"Ann Example\"", b"1"),
        (b"TO bob@example.org", b"1"),
        (b"SUBJECT caf\xc3\xa9", b"1"),
        (b"SUBJECT NIL", b"2"),
        (b"SUBJECT \"\"", b"1 2"),
        (b"HEADER X-Extra \"\"", b"2"),
        (b"NOT HEADER X-Extra \"\"", b"1 3"),
        (b"HEADER x-extra THERE", b"2"),
        (b"BODY hidden", b"2"),
        (b"TEXT carl", b"2"),
        (b"BODY carl", b""),
        (b"SENTBEFORE 25-Mar-2007", b"1"),
        (b"SENTON 25-Mar-2007", b"2"),
        (b"SENTSINCE 25-Mar-2007", b"2 3"),
        (b"BEFORE 1-Jan-1990", b""),
        (b"SINCE 1-Jan-1990", b"1 2 3"),
        (b"OR FROM ann (FROM carl SUBJECT nil)", b"1 2"),
        (b"2:* NOT 3", b"2"),
        (b"UID 1,3", b"1 3"),
        (b"UNSEEN RECENT NEW", b"1 2 3"),
        (b"LARGER 100", b"1 2"),
    ],
)
def test_search_keys(s, keys, found):
    """Each SEARCH key matches as RFC 3501 says (decoded headers and bodies, sent dates, sets), empty results included."""
    lines = s.say(b"b SEARCH " + keys + b"\r\n")
    assert lines == [b"* SEARCH" + (b" " + found if found else b""), b"b OK SEARCH completed"]


def test_uid_search_gives_uids(s):
    """UID SEARCH answers UIDs, not sequence numbers."""
    s.say(b"b STORE 1 +FLAGS.SILENT (\\Deleted)\r\nc EXPUNGE\r\n")
    assert s.say(b"d UID SEARCH ALL\r\n") == [b"* SEARCH 2 3", b"d OK SEARCH completed"]


@pytest.mark.parametrize("keys", [b"FROM", b"BEFORE yesterday", b"FROBNICATE", b"OR ALL", b"LARGER x", b"()"])
def test_bad_search_keys_get_bad(s, keys):
    """Malformed search keys are answered BAD with the reason; the session goes on."""
    lines = s.say(b"b SEARCH " + keys + b"\r\n")
    assert len(lines) == 1 and lines[0].startswith(b"b BAD ")
    assert s.say(b"c NOOP\r\n")[-1].startswith(b"c OK")


def test_unknown_charset_refused(s):
    """SEARCH CHARSET of an unknown charset is NO [BADCHARSET]."""
    assert s.say(b"b SEARCH CHARSET KOI8-R ALL\r\n")[0].startswith(b"b NO [BADCHARSET")


def test_compile_rejects_empty_query():
    """An empty list of search keys is an error, not a match of everything."""
    with pytest.raises(SearchError):
        compileQuery([], 3, 3)


def test_keywords_stored_listed_and_searched(s, store, clock, pool):
    """STORE of a keyword keeps it in the file name's letters, FLAGS announces it first, SEARCH KEYWORD finds it."""
    lines = s.say(b"b STORE 1 +FLAGS ($Label1)\r\n")
    assert lines[0].startswith(b"* FLAGS (") and lines[0].endswith(b" $Label1)")
    assert b"* 1 FETCH (FLAGS ($Label1 \\Recent))" in lines
    assert s.say(b"c SEARCH KEYWORD $label1\r\n")[0] == b"* SEARCH 1"
    again = Session(store, clock, pool)
    assert any(line.endswith(b" $Label1)") for line in again.say(b"a EXAMINE INBOX\r\n") if line.startswith(b"* FLAGS"))
    assert again.say(b"b FETCH 1 FLAGS\r\n")[0] == b"* 1 FETCH (FLAGS ($Label1))"
    assert s.say(b"d STORE 1 +FLAGS (\\Bogus)\r\n")[0].startswith(b"d NO \\Bogus is not a system flag")


def test_keyword_limit(s):
    """A folder takes 26 keywords; the 27th is refused with NO [LIMIT], not an error."""
    flags = b" ".join(b"$k%d" % n for n in range(26))
    assert s.say(b"b STORE 1 +FLAGS.SILENT (" + flags + b")\r\n")[-1] == b"b OK STORE completed"
    assert s.say(b"c STORE 1 +FLAGS.SILENT ($one-more)\r\n")[0].startswith(b"c NO [LIMIT]")


def test_other_sessions_flag_changes_reported(store, clock, pool):
    """A flag change by one session reaches another as an untagged FETCH FLAGS, not to the session that made it."""
    a, b = Session(store, clock, pool), Session(store, clock, pool)
    a.say(b"a SELECT INBOX\r\n")
    b.say(b"a SELECT INBOX\r\n")
    assert a.say(b"b STORE 2 +FLAGS.SILENT (\\Flagged)\r\n") == [b"b OK STORE completed"]
    assert b.say(b"c NOOP\r\n") == [b"* 2 FETCH (FLAGS (\\Flagged))", b"c OK NOOP No operation performed"]


def test_nothing_after_logout(store, clock, pool):
    """After LOGOUT's reply no untagged news is sent, even if another session changes the mailbox."""
    a, b = Session(store, clock, pool), Session(store, clock, pool)
    a.say(b"a SELECT INBOX\r\n")
    b.say(b"a SELECT INBOX\r\n")
    assert b.say(b"z LOGOUT\r\n")[-1] == b"z OK LOGOUT successful"
    a.say(b"b STORE 1:* +FLAGS.SILENT (\\Seen)\r\n")
    assert b.lines() == []
