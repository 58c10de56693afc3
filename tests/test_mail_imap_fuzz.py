"""
Hypothesis fuzz of the IMAP server's command parsing (any line a client can
send is answered, never with a server error, and the session goes on) and
of BODYSTRUCTURE and sections over generated MIME trees.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.mail import imap4

from mail.maildir import ensureMaildir, writeMessageFile
from mail.mime import Entity, envelope, render, section, structure
from tests.bftp_support import FakeReactor
from tests.mail_support import ManualPool, Session, memoryStore

COMMANDS = [
    b"CAPABILITY", b"NOOP", b"SELECT", b"EXAMINE", b"CREATE", b"DELETE", b"RENAME", b"SUBSCRIBE",
    b"UNSUBSCRIBE", b"LIST", b"LSUB", b"STATUS", b"APPEND", b"CHECK", b"EXPUNGE", b"SEARCH", b"FETCH",
    b"STORE", b"COPY", b"MOVE", b"UID", b"ID", b"ENABLE", b"NAMESPACE", b"UNSELECT", b"XYZZY",
]
WORDS = [
    b"INBOX", b"1", b"1:*", b"*", b"2:3,5", b"0", b"4294967296", b"(", b")", b"()", b'"', b'""', b'"a b"',
    b"NIL", b"FLAGS", b"+FLAGS.SILENT", b"(\\Seen $kw)", b"\\Bogus", b"BODY[]", b"BODY.PEEK[1.2.MIME]",
    b"BODY[HEADER.FIELDS (SUBJECT)]<0.10>", b"BODY[TEXT]<5>", b"BODYSTRUCTURE", b"ENVELOPE", b"RFC822",
    b"(UID FLAGS", b"[", b"]", b"<", b"%", b"&-", b"&Jjo-", b"CHARSET", b"UTF-8", b"OR", b"NOT", b"HEADER",
    b"SUBJECT", b"SINCE", b"1-Jan-2020", b"UID", b"FETCH", b"(MESSAGES UNSEEN)", b"\"01-Jan-2020 00:00:00 +0000\"",
    b"{0}", b"\\", b"\x00", b"\xff\xfe", b"{3+}", b"BINARY[1]", b"BINARY.SIZE[2.1]", b"BINARY.PEEK[]<0.3>",
    b"~{2}", b"MODSEQ", b"(CHANGEDSINCE 1)", b"(UNCHANGEDSINCE 5)", b"RETURN", b"(MIN COUNT)", b"(SUBSCRIBED)",
]

line = st.builds(
    lambda tag, command, words: tag + b" " + command + b"".join(b" " + w for w in words),
    st.sampled_from([b"a", b"t1", b"*", b"+", b"x.y"]),
    st.one_of(st.sampled_from(COMMANDS), st.binary(max_size=8)),
    st.lists(st.one_of(st.sampled_from(WORDS), st.binary(max_size=12)), max_size=8),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pool, clock = ManualPool(), FakeReactor()
    store = memoryStore(str(tmp_path_factory.mktemp("fuzz") / "mail"), pool, reactor=clock)
    inbox = store.maildir("alice")
    ensureMaildir(inbox)
    writeMessageFile(inbox, b"Subject: one\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
    writeMessageFile(inbox, b"Subject: two\r\n\r\nbody\r\n")
    return store, clock, pool


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(lines=st.lists(line.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), min_size=1, max_size=3))
def test_any_command_line_is_answered(world, lines):
    """Any command lines get replies without a server error, and the session then answers NOOP (or has said BYE)."""
    store, clock, pool = world
    s = Session(store, clock, pool)
    s.say(b"s SELECT INBOX\r\n")
    out = s.say(b"".join(line + b"\r\n" for line in lines))
    if s.server.parseState == "pending":
        # A literal is awaited: give it its octets (at most 4096 for a string).
        out += s.say(b"z" * 5000 + b"\r\n")
    out += s.say(b"\r\nzz NOOP\r\n") if not s.transport.disconnecting else []
    text = b"\n".join(out)
    assert not re.search(rb"[Ss]erver error", text), text
    if not s.transport.disconnecting:
        assert out and out[-1].startswith(b"zz OK"), out
    s.server.connectionLost(None)


# -- MIME trees ---------------------------------------------------------------------

text = st.text(alphabet="abc xyz-=.\n", max_size=40).map(lambda t: t.replace("\n", "\r\n").encode())


def leaf() -> st.SearchStrategy:
    return st.builds(
        lambda sub, body: {"kind": "leaf", "type": b"text/" + sub, "body": body},
        st.sampled_from([b"plain", b"html", b"x-Mixed"]),
        text.filter(lambda b: not b.startswith(b"--") and b"\r\n--" not in b),
    )


def tree(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.builds(
            lambda parts, boundary: {"kind": "multipart", "parts": parts, "boundary": boundary},
            st.lists(children, min_size=1, max_size=3),
            st.from_regex(r"[A-Za-z0-9'()+_,./:=? -]{0,20}[A-Za-z0-9]", fullmatch=True),
        ),
        st.builds(lambda inner: {"kind": "message", "inner": inner}, children),
    )


trees = st.recursive(leaf(), tree, max_leaves=8)


def serialize(node: dict, depth: int = 0) -> bytes:
    """
    The MIME entity of a generated tree: header, blank line, body.
    """
    if node["kind"] == "leaf":
        return b"Content-Type: " + node["type"] + b"\r\n\r\n" + node["body"]
    if node["kind"] == "message":
        return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + serialize(node["inner"], depth + 1)
    boundary = node["boundary"].encode() + b"%d" % depth
    parts = b"".join(b"--" + boundary + b"\r\n" + serialize(p, depth + 1) + b"\r\n" for p in node["parts"])
    return (
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\npreamble\r\n'
        + parts + b"--" + boundary + b"--\r\n"
    )


def leaves(node: dict, path: list[int]) -> list[tuple[list[int], dict]]:
    """
    Each leaf with its section path, as RFC 3501 numbers parts.
    """
    if node["kind"] == "leaf":
        return [(path or [1], node)]
    if node["kind"] == "message":
        # A message/rfc822 part's parts are those of the message inside;
        # at the top, the message itself is part 1 (it is not multipart).
        path = path or [1]
        inner = node["inner"]
        if inner["kind"] == "multipart":
            return leaves(inner, path)
        return leaves(inner, path + [1])
    found = []
    for n, part in enumerate(node["parts"], 1):
        found += leaves(part, path + [n])
    return found


@settings(max_examples=200, deadline=None)
@given(trees)
def test_bodystructure_of_generated_trees(node):
    """Every leaf of a generated MIME tree is fetched byte-exact at its section number, and BODYSTRUCTURE parses and counts them."""
    message = Entity(b"Subject: outer\r\n" + serialize(node))
    rendered = render(structure(message, True))
    assert imap4.parseNestedParens(rendered)
    assert rendered.count(b'("text" ') == len(leaves(node, []))
    for path, found in leaves(node, []):
        assert section(message, path, "") == found["body"], path
        assert b'"text" "%s"' % found["type"][5:].lower() in rendered
        assert b'"7bit" %d %d' % (len(found["body"]), found["body"].count(b"\n")) in rendered


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 4), max_size=4))
def test_any_bytes_render(data, path):
    """Whatever bytes a message holds, BODYSTRUCTURE, ENVELOPE and any section render without an exception."""
    message = Entity(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert imap4.parseNestedParens(render(structure(message, True)))
    render(envelope(message))
    for spec in ["", "HEADER", "TEXT", "MIME", "HEADER.FIELDS"]:
        section(message, path, spec, [b"SUBJECT"])
