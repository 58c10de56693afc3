"""
mail.mime: MIME entities over the stored bytes, and the FETCH renderings
built from them, without a server.
"""

from __future__ import annotations

from mail.mime import Entity, envelope, locate, parseAddresses, render, section, structure


def test_mime_sections_are_byte_exact():
    """Multipart bodies split at boundaries: parts, their MIME headers and HEADER.FIELDS keep the original bytes."""
    raw = (
        b"From: a@b\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
        b"preamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\n"
        b"Content-Type: text/html\r\n\r\n<b>hi</b>\r\n--XX--\r\nepilogue\r\n"
    )
    part = Entity(raw)
    assert part.isMultipart and len(part.children) == 2
    assert part.children[0].body == b"hello"
    assert part.children[1].header == b"Content-Type: text/html\r\n\r\n"
    assert part.headerLines([b"SUBJECT"], False) == b"Subject: s\r\n\r\n"
    assert section(part, [2], "MIME") == b"Content-Type: text/html\r\n\r\n"
    assert section(part, [3], "") is None and locate(part, [1, 2]) is None


def test_folded_boundary_is_unfolded():
    """A boundary parameter folded over two lines is the unfolded value, its case kept."""
    raw = b'Content-Type: multipart/mixed; boundary="Foo\r\n Bar"\r\n\r\n--Foo Bar\r\n\r\nx\r\n--Foo Bar--\r\n'
    assert render(structure(Entity(raw), False)) == b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0) "mixed")'


def test_digest_parts_default_to_message_rfc822():
    """The parts of a multipart/digest without Content-Type are messages: their HEADER is the inner header."""
    raw = b'Content-Type: multipart/digest; boundary="d"\r\n\r\n--d\r\n\r\nSubject: in\r\n\r\nbody\r\n--d--\r\n'
    message = Entity(raw)
    assert section(message, [1], "HEADER") == b"Subject: in\r\n\r\n"
    assert section(message, [1], "TEXT") == b"body"
    assert section(message, [1], "MIME") == b"\r\n"


def test_addresses_route_comment_and_groups():
    """Addresses: a comment is the name without a phrase, a source route is kept, empty groups are open and closed."""
    assert parseAddresses(b"user@domain (Real Name)") == [[b"Real Name", None, b"user", b"domain"]]
    assert parseAddresses(b"<@route:user@domain>") == [[None, b"@route", b"user", b"domain"]]
    assert parseAddresses(b"group:;, \"Q, R\" <q@r>") == [
        [None, None, b"group", None], [None, None, None, None], [b"Q, R", None, b"q", b"r"]
    ]
    assert parseAddresses(b"") == [] and parseAddresses(b"((((") == []


def test_envelope_of_empty_message():
    """A message with no header at all has an ENVELOPE of NILs, not an error."""
    assert render(envelope(Entity(b""))) == b"(" + b" ".join([b"NIL"] * 10) + b")"


def test_boundary_that_prefixes_another_does_not_cut_it():
    """An outer boundary "b" does not cut at the inner "--b1" lines: only whole delimiter lines count."""
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n\r\ninner\r\n--b1--\r\n\r\n--b--\r\n'
    )
    message = Entity(raw)
    assert len(message.children) == 1 and section(message, [1, 1], "") == b"inner"
