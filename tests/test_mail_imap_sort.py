"""
SORT, THREAD (RFC 5256) and ESEARCH (RFC 4731) of the IMAP server, and the
base subject and threading pieces on their own.
"""

from __future__ import annotations

import pytest

from mail.imap_search import SearchError
from mail.imap_sort import ThreadMessage, baseSubject, parseCriteria, references, renderThreads
from tests.bftp_support import FakeReactor
from tests.mail_support import ManualPool, Session, storeWith

MESSAGES = [
    b"Message-ID: <a@x>\r\nFrom: Zed <zed@example.org>\r\nSubject: Lunch\r\nDate: Mon, 1 Jan 2024 12:00:00 +0000\r\n\r\n1\r\n",
    b"Message-ID: <b@x>\r\nReferences: <a@x>\r\nFrom: amy@example.org\r\nSubject: Re: lunch\r\n"
    b"Date: Mon, 1 Jan 2024 13:00:00 +0000\r\n\r\n22222\r\n",
    b"Message-ID: <c@x>\r\nFrom: bob@example.org\r\nSubject: [list] Fwd: Other\r\nDate: Sun, 31 Dec 2023 09:00:00 +0000\r\n\r\n333\r\n",
]


@pytest.fixture
def s(tmp_path):
    pool, clock = ManualPool(), FakeReactor()
    session = Session(storeWith(str(tmp_path / "mail"), pool, clock, MESSAGES), clock, pool)
    session.say(b"a SELECT INBOX\r\n")
    return session


@pytest.mark.parametrize(
    "criteria, order",
    [
        (b"(SUBJECT)", b"1 2 3"),
        (b"(REVERSE SUBJECT)", b"3 1 2"),
        (b"(DATE)", b"3 1 2"),
        (b"(FROM)", b"2 3 1"),
        (b"(DISPLAYFROM)", b"2 3 1"),
        (b"(REVERSE SIZE)", b"2 3 1"),
        (b"(SUBJECT REVERSE DATE)", b"2 1 3"),
    ],
)
def test_sort(s, criteria, order):
    """SORT orders by base subject, sent date, first address, display name and size, REVERSE per criterion."""
    assert s.say(b"b SORT " + criteria + b" UTF-8 ALL\r\n") == [b"* SORT " + order, b"b OK SORT completed"]


def test_uid_sort_and_bad_criteria(s):
    """UID SORT answers UIDs; an unknown criterion or a dangling REVERSE is BAD; an unknown charset NO [BADCHARSET]."""
    assert s.say(b"b UID SORT (ARRIVAL) US-ASCII 2:3\r\n") == [b"* SORT 2 3", b"b OK SORT completed"]
    assert s.say(b"c SORT (COLOUR) UTF-8 ALL\r\n")[0].startswith(b"c BAD unknown sort criterion")
    assert s.say(b"d SORT (SUBJECT REVERSE) UTF-8 ALL\r\n")[0].startswith(b"d BAD REVERSE")
    assert s.say(b"e SORT (SUBJECT) KOI8-R ALL\r\n")[0].startswith(b"e NO [BADCHARSET")


def test_thread(s):
    """THREAD REFERENCES follows References; ORDEREDSUBJECT gathers by base subject under the earliest."""
    assert s.say(b"b THREAD REFERENCES UTF-8 ALL\r\n") == [b"* THREAD (3)(1 2)", b"b OK THREAD completed"]
    assert s.say(b"c THREAD ORDEREDSUBJECT UTF-8 ALL\r\n") == [b"* THREAD (3)(1 2)", b"c OK THREAD completed"]
    assert s.say(b"d THREAD REFERENCES UTF-8 SUBJECT nothing\r\n") == [b"* THREAD", b"d OK THREAD completed"]
    assert s.say(b"e THREAD BESTGUESS UTF-8 ALL\r\n")[0].startswith(b"e BAD")


def test_esearch(s):
    """SEARCH RETURN gives one ESEARCH line with the tag and what was asked; nothing found gives COUNT 0 only."""
    assert s.say(b"b SEARCH RETURN (MIN MAX COUNT) ALL\r\n")[0] == b'* ESEARCH (TAG "b") MIN 1 MAX 3 COUNT 3'
    assert s.say(b"c UID SEARCH RETURN () 1,3\r\n")[0] == b'* ESEARCH (TAG "c") UID ALL 1,3'
    assert s.say(b"d SEARCH RETURN (COUNT ALL) SUBJECT absent\r\n")[0] == b'* ESEARCH (TAG "d") COUNT 0'
    assert s.say(b"e SEARCH RETURN (BIGGEST) ALL\r\n")[0].startswith(b"e BAD")


@pytest.mark.parametrize(
    "subject, base",
    [
        (b"[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b"),
        (b"Re: [FWD: c]", "c"),
        (b"[xyz]", "[xyz]"),
        (b"=?iso-8859-1?q?_?=", ""),
        (b"Re:   hello   world", "hello world"),
    ],
)
def test_base_subject(subject, base):
    """The base subject drops Re:/Fwd: leaders, (fwd) trailers, leading [blobs] and a [Fwd: ...] wrapper (RFC 5256 2.1)."""
    assert baseSubject(subject)[0] == base


def test_references_loop_breaks_the_old_parent():
    """A message that references its own reply gets no loop: its old parent link goes and it heads the thread."""
    def m(n, mid, refs, date):
        return ThreadMessage(n, n, date, "", False, mid, refs)

    roots = references([m(1, "<a>", [], 3.0), m(2, "<b>", ["<a>", "<c>"], 1.0), m(3, "<c>", ["<b>"], 2.0)])
    assert renderThreads(roots) == b"(3 2)(1)"


def test_criteria_parsing():
    """Sort criteria parse into (key, reversed) pairs and refuse what is not a criterion."""
    assert parseCriteria([b"reverse", b"date", b"size"]) == [("DATE", True), ("SIZE", False)]
    with pytest.raises(SearchError):
        parseCriteria(b"DATE")


def test_esort(s):
    """SORT RETURN answers ESEARCH in sort order: MIN and MAX are the first and last sorted, ALL keeps the order."""
    assert s.say(b"b SORT RETURN (MIN MAX ALL) (DATE) UTF-8 ALL\r\n")[0] == b'* ESEARCH (TAG "b") MIN 3 MAX 2 ALL 3,1:2'
    assert s.say(b"c SORT RETURN (FIRST) (DATE) UTF-8 ALL\r\n")[0].startswith(b"c BAD")
