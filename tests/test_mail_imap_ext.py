"""
LIST, LSUB and the extensions the IMAP server advertises (UIDPLUS, MOVE,
ID, ENABLE, UNSELECT, CHILDREN, SPECIAL-USE), over StringTransport.
"""

from __future__ import annotations

import pytest

from mail.imap import EXTENSIONS
from tests.mail_support import Session, clock, memoryStore, pool, storeWith  # noqa: F401 (fixtures)


@pytest.fixture
def store(tmp_path, pool, clock):
    return storeWith(str(tmp_path / "mail"), pool, clock, [b"Subject: m%d\n\nbody\n" % i for i in range(3)])


@pytest.fixture
def s(store, clock, pool):
    return Session(store, clock, pool)


def test_capabilities_list_the_extensions(s):
    """CAPABILITY names every extension implemented here, once."""
    line = s.say(b"a CAPABILITY\r\n")[0]
    words = line.split()
    for name in EXTENSIONS:
        assert words.count(name) == 1


def test_list_pattern_that_is_not_utf7_is_empty_ok(s):
    """LIST with a pattern that is not modified UTF-7 matches nothing and is OK, not NO."""
    assert s.say(b"a LIST \"\" \"&-&foo%*\"\r\n") == [b"a OK LIST completed"]
    assert s.say(b"b LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*\r\n") == [b"b OK LIST completed"]


def test_lsub_percent_marks_unsubscribed_parents_noselect(s):
    """LSUB with % gives a subscribed name's unsubscribed parent at that level as \\Noselect."""
    s.say(b"a CREATE Box.one.deep\r\nb CREATE Box.two\r\nc SUBSCRIBE Box.one.deep\r\nd SUBSCRIBE Box.two\r\n")
    assert s.say(b"e LSUB \"\" Box.%\r\n") == [
        b'* LSUB (\\Noselect) "." "Box.one"',
        b'* LSUB () "." "Box.two"',
        b"e OK LSUB completed",
    ]
    assert s.say(b"f LSUB \"\" *deep\r\n") == [b'* LSUB () "." "Box.one.deep"', b"f OK LSUB completed"]


def test_special_use_and_children_attributes(s):
    """LIST marks Sent, Drafts, Trash and Junk with their RFC 6154 attribute, and every folder with children or not."""
    s.say(b"a CREATE Sent\r\nb CREATE Trash.Old\r\n")
    lines = s.say(b"c LIST \"\" *\r\n")
    assert b'* LIST (\\HasNoChildren \\Sent) "." "Sent"' in lines
    assert b'* LIST (\\HasChildren \\Trash) "." "Trash"' in lines
    assert b'* LIST (\\HasNoChildren) "." "Trash.Old"' in lines


def test_id_enable_unselect(s):
    """ID answers the server's name (or BAD for junk), ENABLE enables nothing, UNSELECT leaves \\Deleted messages."""
    assert s.say(b"a ID (\"name\" \"test\")\r\n") == [b'* ID ("name" "coursenet" "vendor" "coursenet")', b"a OK ID completed"]
    assert s.say(b"b ID NIL\r\n")[-1] == b"b OK ID completed"
    assert s.say(b"c ID junk\r\n")[0].startswith(b"c BAD ID takes")
    assert s.say(b"d ENABLE CONDSTORE\r\n") == [b"* ENABLED CONDSTORE", b"d OK ENABLE completed"]
    assert s.say(b"d ENABLE CONDSTORE X-UNKNOWN\r\n") == [b"* ENABLED", b"d OK ENABLE completed"]
    s.say(b"e SELECT INBOX\r\nf STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
    assert s.say(b"g UNSELECT\r\n") == [b"g OK UNSELECT completed"]
    assert s.say(b"h STATUS INBOX (MESSAGES)\r\n")[0] == b"* STATUS INBOX (MESSAGES 3)"
    assert s.say(b"i FETCH 1 FLAGS\r\n")[0].startswith(b"i BAD")


def test_move_into_the_same_mailbox_counts_after_the_expunge(s, store):
    """MOVE into the selected mailbox sends COPYUID, EXPUNGE, then EXISTS with the count after both."""
    s.say(b"a SELECT INBOX\r\n")
    validity = store.folder("alice").uidValidity
    assert s.say(b"b MOVE 1 INBOX\r\n") == [
        b"* OK [COPYUID %d 1 4] Moved" % validity,
        b"* 1 EXPUNGE",
        b"* 3 EXISTS",
        b"* 3 RECENT",
        b"b OK MOVE completed",
    ]
    s.say(b"c EXAMINE INBOX\r\n")
    assert s.say(b"d MOVE 1 INBOX\r\n")[0].startswith(b"d NO MOVE needs the mailbox selected read-write")


def test_literal_plus_needs_no_continuation(s):
    """LITERAL+ literals ({n+}) are read without a "+" and work in APPEND and in string arguments."""
    lines = s.say(b"a APPEND INBOX (\\Seen) {5+}\r\nhello\r\nb CREATE {4+}\r\nWork\r\n")
    assert not any(line.startswith(b"+") for line in lines)
    assert lines[0].startswith(b"a OK [APPENDUID") and lines[1] == b"b OK Mailbox created"
    assert s.say(b"c SELECT {5+}\r\nINBOX\r\n")[-1] == b"c OK [READ-WRITE] SELECT successful"
    assert s.say(b"d STATUS {5+}\r\nINBOX (MESSAGES)\r\n")[0] == b"* STATUS INBOX (MESSAGES 4)"
    assert s.say(b"e STATUS {5}\r\n")[0].startswith(b"+ ")
    assert s.say(b"INBOX (MESSAGES)\r\n")[0] == b"* STATUS INBOX (MESSAGES 4)"


def test_refused_literal_plus_closes(s):
    """A LITERAL+ literal over the limit is refused with BAD and the connection closed: its data is not run as commands."""
    lines = s.say(b"a CREATE {5000+}\r\n" + b"x LOGOUT\r\n" * 10)
    assert lines[0].startswith(b"a BAD") and lines[1].startswith(b"* BYE")
    assert s.transport.disconnecting and not any(line.startswith(b"x ") for line in lines)


def test_multiappend_all_or_nothing(s, store):
    """APPEND of several messages stores them all with one APPENDUID; if one fails, none stays."""
    s.send(b"a APPEND INBOX (\\Seen) {5}\r\n")
    s.pump()
    s.lines()
    s.send(b"hello (\\Flagged) \"01-Jan-2020 00:00:00 +0000\" {3}\r\n")
    s.pump()
    assert s.lines() == [b"+ Ready for 3 octets of data"]
    reply = s.say(b"two\r\n")
    validity = s.say(b"z STATUS INBOX (UIDVALIDITY)\r\n")[0].split()[-1].rstrip(b")")
    assert reply == [b"a OK [APPENDUID " + validity + b" 4:5] APPEND completed"]
    lines = s.say(b"b APPEND INBOX {2+}\r\nok (\\Bogus) {2+}\r\nno\r\n")
    assert lines[-1].startswith(b"b NO \\Bogus")
    assert s.say(b"c STATUS INBOX (MESSAGES)\r\n")[0] == b"* STATUS INBOX (MESSAGES 5)"
    assert s.say(b"d APPEND INBOX (\\Seen) {1+}\r\nx junk\r\n")[0].startswith(b"d BAD Illegal syntax: APPEND takes")


def test_condstore_modseqs(s, store):
    """CONDSTORE: SELECT tells HIGHESTMODSEQ, STORE raises a message's MODSEQ, CHANGEDSINCE and UNCHANGEDSINCE use it."""
    lines = s.say(b"a SELECT INBOX (CONDSTORE)\r\n")
    highest = int([line for line in lines if b"HIGHESTMODSEQ" in line][0].split()[3].rstrip(b"]"))
    lines = s.say(b"b STORE 2 +FLAGS (\\Seen)\r\n")
    assert lines[0].startswith(b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (")
    changed = int(lines[0].split(b"MODSEQ (")[1].rstrip(b"))"))
    assert changed > highest
    assert s.say(b"c FETCH 1:* (FLAGS) (CHANGEDSINCE %d)\r\n" % highest) == [
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % changed,
        b"c OK FETCH completed",
    ]
    assert s.say(b"d SEARCH MODSEQ %d\r\n" % changed) == [b"* SEARCH 2 (MODSEQ %d)" % changed, b"d OK SEARCH completed"]
    lines = s.say(b"e STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Flagged)\r\n" % highest)
    assert lines[-1] == b"e OK [MODIFIED 2] Conditional STORE failed"
    assert s.say(b"e2 UID STORE 2 (UNCHANGEDSINCE 1) +FLAGS (\\Draft)\r\n") == [
        b"e2 OK [MODIFIED 2] Conditional STORE failed"
    ]
    assert s.say(b"f FETCH 2 (FLAGS)\r\n")[0].startswith(b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ")
    assert s.say(b"g STATUS INBOX (HIGHESTMODSEQ)\r\n")[0].startswith(b"* STATUS INBOX (HIGHESTMODSEQ ")


def test_modseqs_survive_a_restart(tmp_path):
    """A message's MODSEQ is kept on disk; after a restart new ones are higher than any handed out before."""
    from tests.mail_support import result

    root = str(tmp_path / "mail")
    first = storeWith(root, None, None, [b"Subject: a\n\n"])
    folder = result(first.openFolder("alice"))
    result(folder.setFlags([1], "S"))
    kept, highest = folder.modseq(1), folder.highestModseq
    again = result(memoryStore(root).openFolder("alice"))
    assert again.modseq(1) == kept and again.highestModseq >= highest
    result(again.setFlags([1], "F"))
    assert again.modseq(1) > highest


def test_list_extended(s):
    """LIST-EXTENDED: several patterns, SUBSCRIBED selection (\\NonExistent when gone), RECURSIVEMATCH CHILDINFO, RETURN options, bad options."""
    s.say(b"a CREATE Box.one\r\nb CREATE Box.two.deep\r\nc CREATE Box.gone\r\n")
    s.say(b"d SUBSCRIBE Box.one\r\ne SUBSCRIBE Box.two.deep\r\nf SUBSCRIBE Box.gone\r\ng DELETE Box.gone\r\n")
    assert s.say(b"h LIST \"\" (Box.one Box.two)\r\n") == [
        b'* LIST (\\HasNoChildren) "." "Box.one"',
        b'* LIST (\\HasChildren) "." "Box.two"',
        b"h OK LIST completed",
    ]
    assert s.say(b"i LIST (SUBSCRIBED) \"\" Box.*\r\n") == [
        b'* LIST (\\NonExistent \\Subscribed) "." "Box.gone"',
        b'* LIST (\\HasNoChildren \\Subscribed) "." "Box.one"',
        b'* LIST (\\HasNoChildren \\Subscribed) "." "Box.two.deep"',
        b"i OK LIST completed",
    ]
    assert s.say(b"j LIST (SUBSCRIBED RECURSIVEMATCH) \"\" Box.%\r\n") == [
        b'* LIST (\\NonExistent \\Subscribed) "." "Box.gone"',
        b'* LIST (\\HasNoChildren \\Subscribed) "." "Box.one"',
        b'* LIST (\\HasChildren) "." "Box.two" ("CHILDINFO" ("SUBSCRIBED"))',
        b"j OK LIST completed",
    ]
    assert s.say(b"k LIST \"\" Box.% RETURN (SUBSCRIBED CHILDREN)\r\n")[0] == b'* LIST (\\HasNoChildren \\Subscribed) "." "Box.one"'
    for bad in [b"(FROB) \"\" *", b"(RECURSIVEMATCH) \"\" *", b"\"\" * RETURN (FROB)", b"\"\" (*"]:
        assert s.say(b"l LIST " + bad + b"\r\n")[0].startswith(b"l BAD"), bad


def test_modseqNeverGoesDownForAMessageWithoutItsLine(tmp_path):
    """A message whose MODSEQS line is gone (expunged while a session still shows it) reports the highest mod-sequence, never 1 (imaptest stress saw 'MODSEQ dropped')."""
    from tests.mail_support import result

    root = str(tmp_path / "mail")
    store = storeWith(root, None, None, [b"Subject: a\n\n"])
    folder = result(store.openFolder("alice"))
    result(folder.setFlags([1], "S"))
    before = folder.modseq(1)
    folder._modseqs.pop(1)  # what an expunge does while another session still shows uid 1
    assert folder.modseq(1) >= before > 1


def test_compactingModseqsKeepsOtherSessionsLines(tmp_path):
    """Rewriting MODSEQS keeps the lines of messages at or above this view's uidNext that another session wrote meanwhile."""
    import os

    from mail.maildir import MODSEQS
    from tests.mail_support import result

    root = str(tmp_path / "mail")
    store = storeWith(root, None, None, [b"Subject: a\n\n"])
    folder = result(store.openFolder("alice"))
    result(folder.setFlags([1], "S"))
    with open(os.path.join(folder.path, MODSEQS), "a") as f:
        f.write(f"{folder.uidNext + 5} 123456\n")  # another session's new message
    folder._compactModseqs(dict(folder._modseqs), set(folder._byUid), folder.uidNext)
    with open(os.path.join(folder.path, MODSEQS)) as f:
        lines = f.read().split("\n")
    assert f"{folder.uidNext + 5} 123456" in lines and any(line.startswith("1 ") for line in lines)
