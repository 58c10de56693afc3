"""
FETCH, SELECT, APPEND, COPY and MOVE of the IMAP server over
StringTransport: what a client reads, byte for byte, including for
messages that hold other messages and for messages other sessions expunge.
"""

from __future__ import annotations

import os

import pytest

from mail.maildir import writeMessageFile
from tests.mail_support import Session, clock, pool, storeWith  # noqa: F401 (fixtures)

NESTED = (
    b"From: outer@example.org\r\nSubject: outer\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="Outer"\r\n\r\n'
    b"preamble\r\n--Outer\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n"
    b"--Outer\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: inner@example.org\r\nSubject: inner\r\n"
    b'Content-Type: multipart/alternative; boundary="In"\r\n\r\n'
    b"--In\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--In\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: deepest\r\n\r\nbottom\r\n--In--\r\n"
    b"--Outer--\r\nepilogue\r\n"
)


@pytest.fixture
def store(tmp_path, pool, clock):
    return storeWith(str(tmp_path / "mail"), pool, clock, [
        NESTED,
        b"Message-ID: <m2@example.org>\r\nTo: team: a@b.org, c@d.org;, e@f.org\r\n"
        b"Content-Transfer-Encoding: BASE64\r\n\r\naGk=\r\n",
    ])


def selected(store, clock, pool) -> Session:
    s = Session(store, clock, pool)
    s.say(b"a SELECT INBOX\r\n")
    return s


def literalReply(lines: list[bytes]) -> bytes:
    return b"\r\n".join(lines)


def test_nested_message_fetches_in_every_form(store, clock, pool):
    """A message with message/rfc822 parts answers BODYSTRUCTURE, BODY and every section, and the session goes on."""
    s = selected(store, clock, pool)
    for item in [b"BODYSTRUCTURE", b"BODY", b"ENVELOPE", b"BODY.PEEK[2]", b"BODY.PEEK[2.1]", b"BODY.PEEK[2.2.1]",
                 b"BODY.PEEK[2.HEADER]", b"BODY.PEEK[2.TEXT]", b"BODY.PEEK[2.MIME]", b"BODY.PEEK[2.2.HEADER]",
                 b"RFC822.SIZE", b"BODY.PEEK[9]", b"BODY.PEEK[1.1]", b"BODY.PEEK[2.7.3]"]:
        lines = s.say(b"b FETCH 1 (" + item + b")\r\n")
        assert lines[-1] == b"b OK FETCH completed", (item, lines)
    assert s.say(b"c NOOP\r\n")[-1].startswith(b"c OK")


def test_nested_sections_are_byte_exact(store, clock, pool):
    """BODY[2.1], BODY[2.2.1], BODY[2.HEADER] and BODY[2.2.MIME] are the exact bytes of those parts."""
    s = selected(store, clock, pool)
    reply = literalReply(s.say(b"b FETCH 1 (BODY.PEEK[2.1])\r\n"))
    assert reply.startswith(b"* 1 FETCH (BODY[2.1] {10}\r\ninner text)")
    reply = literalReply(s.say(b"b FETCH 1 (BODY.PEEK[2.2.1])\r\n"))
    assert reply.startswith(b"* 1 FETCH (BODY[2.2.1] {6}\r\nbottom)")
    reply = literalReply(s.say(b"b FETCH 1 (BODY.PEEK[2.HEADER])\r\n"))
    header = b'From: inner@example.org\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary="In"\r\n\r\n'
    assert reply.startswith(b"* 1 FETCH (BODY[2.HEADER] {%d}\r\n" % len(header) + header + b")")
    reply = literalReply(s.say(b"b FETCH 1 (BODY.PEEK[2.2.MIME])\r\n"))
    assert reply.startswith(b"* 1 FETCH (BODY[2.2.MIME] {32}\r\nContent-Type: message/rfc822\r\n\r\n)")


def test_missing_part_is_empty_not_a_dropped_connection(store, clock, pool):
    """A part number that does not exist gets an empty section and OK; the connection stays open."""
    s = selected(store, clock, pool)
    lines = s.say(b"b FETCH 2 (BODY.PEEK[3.1])\r\n")
    assert lines == [b"* 2 FETCH (BODY[3.1] {0}", b")", b"b OK FETCH completed"]
    assert not s.transport.disconnecting


def test_bodystructure_of_nested_message(store, clock, pool):
    """BODYSTRUCTURE gives sizes without MIME headers, the encoding, the boundary as sent, and the inner envelope."""
    s = selected(store, clock, pool)
    reply = s.say(b"b FETCH 1 (BODYSTRUCTURE)\r\n")[0]
    start = NESTED.index(b"From: inner")
    inner = NESTED[start : NESTED.index(b"\r\n--Outer--")]
    assert reply.startswith(
        b'* 1 FETCH (BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
        b' ("message" "rfc822" NIL NIL NIL "7bit" %d (NIL "inner" ((NIL NIL "inner" "example.org"))' % len(inner)
    )
    assert b'"mixed" ("boundary" "Outer") NIL NIL NIL))' in reply
    assert b'"alternative" ("boundary" "In") NIL NIL NIL)' in reply
    assert b'((NIL NIL "inner" "example.org"))' in reply
    reply = s.say(b"b FETCH 2 (BODYSTRUCTURE)\r\n")[0]
    assert reply == b'* 2 FETCH (BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "BASE64" 6 1 NIL NIL NIL NIL))'


def test_envelope_groups_and_no_from(store, clock, pool):
    """ENVELOPE keeps group syntax and a message without From has NIL, not a malformed address."""
    s = selected(store, clock, pool)
    reply = s.say(b"b FETCH 2 (ENVELOPE)\r\n")[0]
    assert reply == (
        b"* 2 FETCH (ENVELOPE (NIL NIL NIL NIL NIL ((NIL NIL \"team\" NIL)(NIL NIL \"a\" \"b.org\")"
        b"(NIL NIL \"c\" \"d.org\")(NIL NIL NIL NIL)(NIL NIL \"e\" \"f.org\")) NIL NIL NIL \"<m2@example.org>\"))"
    )


def test_rfc822_header_keeps_case_and_blank_line(store, clock, pool):
    """RFC822.HEADER and BODY[HEADER.FIELDS] give the header as sent: field case kept, blank line included."""
    s = selected(store, clock, pool)
    reply = literalReply(s.say(b"b FETCH 2 (RFC822.HEADER)\r\n"))
    header = b"Message-ID: <m2@example.org>\r\nTo: team: a@b.org, c@d.org;, e@f.org\r\nContent-Transfer-Encoding: BASE64\r\n\r\n"
    assert reply.startswith(b"* 2 FETCH (RFC822.HEADER {%d}\r\n%s)" % (len(header), header))
    reply = literalReply(s.say(b"b FETCH 2 (BODY.PEEK[HEADER.FIELDS (message-id)])\r\n"))
    assert reply.startswith(b"* 2 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {32}\r\nMessage-ID: <m2@example.org>\r\n\r\n)")


def test_select_reports_mailbox_data(store, clock, pool):
    """SELECT sends FLAGS, EXISTS, RECENT, UNSEEN, PERMANENTFLAGS, UIDVALIDITY with text and UIDNEXT."""
    s = Session(store, clock, pool)
    lines = s.say(b"a SELECT INBOX\r\n")
    validity = store.folder("alice").uidValidity
    assert lines[1:] == [
        b"* 2 EXISTS",
        b"* 2 RECENT",
        b"* OK [UNSEEN 1] First unseen",
        b"* OK [PERMANENTFLAGS (" + lines[0][9:-1] + b" \\*)] Flags permitted",
        b"* OK [UIDVALIDITY %d] UIDs valid" % validity,
        b"* OK [UIDNEXT 3] Predicted next UID",
        lines[-2],
        b"a OK [READ-WRITE] SELECT successful",
    ]
    assert lines[-2].startswith(b"* OK [HIGHESTMODSEQ ")
    assert lines[0].startswith(b"* FLAGS (\\Seen")


def test_append_without_flags_and_its_exists(store, clock, pool):
    """APPEND with no flag list is stored; EXISTS for the selected mailbox comes once, before the tagged OK."""
    s = selected(store, clock, pool)
    s.say(b"b CREATE Other\r\n")
    assert s.say(b"c APPEND Other {5}\r\n")[0].startswith(b"+")
    lines = s.say(b"hello\r\n")
    assert lines == [lines[0]] and lines[0].startswith(b"c OK [APPENDUID ") and lines[0].endswith(b" 1] APPEND completed")
    s.say(b"d APPEND INBOX \"01-Feb-2020 10:00:00 +0100\" {5}\r\n")
    lines = s.say(b"hello\r\n")
    assert lines[:2] == [b"* 3 EXISTS", b"* 3 RECENT"] and lines[2].startswith(b"d OK [APPENDUID")
    assert s.say(b"e FETCH 3 (INTERNALDATE)\r\n")[0] == b'* 3 FETCH (INTERNALDATE "01-Feb-2020 09:00:00 +0000")'
    s.say(b"f APPEND Nowhere {1}\r\n")
    assert s.say(b"x\r\n") == [b"f NO [TRYCREATE] No mailbox named Nowhere"]


def test_fetch_of_message_expunged_elsewhere(store, clock, pool):
    """FETCH of a message another session expunged sends nothing for it and answers NO [EXPUNGEISSUED]."""
    a, b = selected(store, clock, pool), selected(store, clock, pool)
    a.say(b"a STORE 1 +FLAGS.SILENT (\\Deleted)\r\na EXPUNGE\r\n")
    lines = b.say(b"b FETCH 1:2 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    assert [line for line in lines if b"UID" in line] == [b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {2}"]
    assert lines[-1] == b"b NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
    assert b.say(b"c NOOP\r\n")[0] == b"* 1 EXPUNGE"


def test_uid_copy_and_move_report_uids(store, clock, pool):
    """UID COPY answers COPYUID; UID MOVE sends COPYUID untagged, then EXPUNGE, and the messages are in the target."""
    s = selected(store, clock, pool)
    s.say(b"b CREATE Work\r\n")
    validity = lambda: store.folder("alice", "Work").uidValidity  # noqa: E731
    assert s.say(b"c UID COPY 1:2 Work\r\n") == [b"c OK [COPYUID %d 1:2 1:2] COPY completed" % validity()]
    assert s.say(b"d UID MOVE 2 Work\r\n") == [
        b"* OK [COPYUID %d 2 3] Moved" % validity(),
        b"* 2 EXPUNGE",
        b"d OK MOVE completed",
    ]
    assert s.say(b"e STATUS Work (MESSAGES RECENT)\r\n")[0] == b"* STATUS Work (MESSAGES 3 RECENT 3)"
    assert len(os.listdir(os.path.join(store.maildir("alice"), "cur"))) == 1
    assert s.say(b"f COPY 1 Nowhere\r\n") == [b"f NO [TRYCREATE] No mailbox named Nowhere"]


def test_uid_expunge_removes_only_the_named(store, clock, pool):
    """UID EXPUNGE removes the \\Deleted messages among the UIDs named, not the others."""
    s = selected(store, clock, pool)
    s.say(b"b STORE 1:2 +FLAGS.SILENT (\\Deleted)\r\n")
    assert s.say(b"c UID EXPUNGE 2\r\n") == [b"* 2 EXPUNGE", b"c OK EXPUNGE completed"]
    assert s.say(b"d EXPUNGE\r\n") == [b"* 1 EXPUNGE", b"d OK EXPUNGE completed"]


def test_binary_fetch_decodes_parts(store, clock, pool):
    """BINARY[part] undoes the transfer encoding (base64, quoted-printable), BINARY.SIZE counts it, partials slice it."""
    inbox = store.maildir("alice")
    writeMessageFile(
        inbox,
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        b"aGVs\r\n bG8g d29y bGQ=\r\n--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=C3=A9 =\r\nsoft  \r\nend\r\n--b\r\nContent-Transfer-Encoding: x-unknown\r\n\r\n??\r\n--b--\r\n",
    )
    s = selected(store, clock, pool)
    assert s.say(b"b FETCH 3 (BINARY.SIZE[1] BINARY.PEEK[1])\r\n")[:2] == [
        b"* 3 FETCH (BINARY.SIZE[1] 11 BINARY[1] {11}",
        b"hello world)",
    ]
    reply = literalReply(s.say(b"c FETCH 3 (BINARY.PEEK[2] BINARY.PEEK[1]<6.5>)\r\n"))
    assert reply.startswith(b"* 3 FETCH (BINARY[2] {15}\r\ncaf\xc3\xa9 soft\r\nend BINARY[1]<6> {5}\r\nworld)")
    assert s.say(b"d FETCH 3 (BINARY.PEEK[3])\r\n") == [
        b"d NO [UNKNOWN-CTE] A part has a Content-Transfer-Encoding BINARY cannot undo"
    ]


def test_append_literal8_stores_binary_parts_as_base64(store, clock, pool):
    """An APPEND literal8 (~{n}) keeps its octets, NUL included, but stores a binary part base64-encoded."""
    s = selected(store, clock, pool)
    message = b"Content-Transfer-Encoding: binary\r\n\r\n\x00\xff\n\r\n"
    lines = s.say(b"b APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(message), message))
    assert lines[-1].startswith(b"b OK [APPENDUID")
    reply = literalReply(s.say(b"c FETCH 3 (BINARY.PEEK[1] BODY.PEEK[1])\r\n"))
    assert reply.startswith(b"* 3 FETCH (BODY[1] {10}\r\nAP8KDQo=\r\n BINARY[1] ~{5}\r\n\x00\xff\n\r\n)")
