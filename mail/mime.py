"""
Messages as IMAP sees them: a tree of MIME entities over the stored bytes,
with the FETCH renderings (sections, BODYSTRUCTURE, ENVELOPE) that RFC 3501
6.4.5 and 7.4.2 define.

Sections must be byte-exact, so an entity is a slice of the message with
CRLF line ends, cut where RFC 2046 5.1.1 puts its boundaries; the header
fields of each entity (content type and its parameters, the addresses of
an ENVELOPE) are parsed by the standard library's L{email} package with
the C{compat32} policy, which keeps every value as it was sent.  Nothing
here raises on malformed input: whatever a stranger mails must still
fetch.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value
from typing import Iterable, Union

#: Nesting deeper than this is not looked into (a bomb of nested
#: multiparts stays one cheap leaf).
MAX_DEPTH = 32

_FOLD = re.compile(rb"\r?\n(?=[ \t])")

#: An IMAP value: bytes are strings (NIL for None), numbers, lists
#: parenthesised.
Value = Union[None, bytes, int, list]


class Addresses(list):
    """
    An ENVELOPE address list, written with no space between addresses
    (RFC 3501 9: C{"(" 1*address ")"}).
    """


def render(value: Value) -> bytes:
    """
    C{value} in IMAP syntax: NIL, a number, a quoted string or literal,
    or a parenthesised list.
    """
    if value is None:
        return b"NIL"
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, Addresses):
        return b"(" + b"".join(render(v) for v in value) + b")"
    if isinstance(value, list):
        return b"(" + b" ".join(render(v) for v in value) + b")"
    return quote(value)


_UNSAFE_FOR_QUOTED = re.compile(rb"[\x00\r\n\x80-\xff]")


def quote(data: bytes) -> bytes:
    """
    An IMAP string: quoted where it can be, a literal otherwise.
    """
    if len(data) > 1024 or _UNSAFE_FOR_QUOTED.search(data):
        return b"{%d}\r\n%s" % (len(data), data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def crlf(data: bytes) -> bytes:
    """
    C{data} with every line ending in CRLF.
    """
    if b"\n" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def splitMultipart(body: bytes, boundary: bytes) -> list[bytes]:
    """
    The body parts of a multipart body (RFC 2046 5.1.1), preamble and
    epilogue left out; a delimiter line's CRLF before it belongs to it.
    Only whole delimiter lines count: C{--b} does not cut at C{--b2}.
    """
    text = b"\r\n" + body
    delimiter = b"\r\n--" + boundary
    parts = []
    start: int | None = None
    pos = text.find(delimiter)
    while pos >= 0:
        after = pos + len(delimiter)
        closing = text.startswith(b"--", after)
        eol = text.find(b"\r\n", after)
        end = len(text) if eol < 0 else eol
        if closing or not text[after:end].strip(b" \t"):
            if start is not None:
                parts.append(text[start:pos])
            if closing:
                return parts
            start = end + 2 if eol >= 0 else len(text)
        pos = text.find(delimiter, after)
    if start is not None:
        parts.append(text[start:])
    return parts


def parameters(value: bytes) -> list[tuple[str, str]]:
    """
    The parameters of an unfolded Content-Type or Content-Disposition
    value, as the L{email} package reads them (RFC 2231 values joined).
    """
    holder = Message(policy=compat32)
    holder["content-type"] = value.decode("ascii", "surrogateescape")
    try:
        found = holder.get_params(unquote=True) or []
    except Exception:
        return []
    out = []
    for name, param in found[1:]:
        if isinstance(param, tuple):
            param = collapse_rfc2231_value(param)
        out.append((name, str(param)))
    return out


class Entity:
    """
    One MIME entity: its header (with the blank line that ends it) and its
    body, both slices of the CRLF bytes, and its children: the parts of a
    multipart, or the message inside a message/rfc822.
    """

    def __init__(self, data: bytes, digest: bool = False, depth: int = 0) -> None:
        """
        @param data: the entity's bytes with CRLF line ends.
        @param digest: it is a part of a multipart/digest, whose parts are
            message/rfc822 by default (RFC 2046 5.1.5).
        """
        self.data = data
        self.depth = depth
        if data.startswith(b"\r\n"):
            self.header, self.body = b"\r\n", data[2:]
        else:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                # Only a header (or nothing): the whole of it is the header.
                head = data if data.endswith(b"\r\n") or not data else data + b"\r\n"
                self.header, self.body = head + b"\r\n", b""
            else:
                self.header, self.body = data[: end + 4], data[end + 4 :]
        self._message: Message | None = None
        self._fields: dict[str, list[bytes]] | None = None
        self._type: tuple[str, str, list[tuple[str, str]]] | None = None
        self._digest = digest
        self._children: list[Entity] | None = None

    # -- header fields -----------------------------------------------------------

    @property
    def message(self) -> Message:
        """
        The header as the L{email} package parses it (compat32: values
        kept as sent, 8-bit bytes surrogate-escaped).
        """
        if self._message is None:
            self._message = BytesHeaderParser(policy=compat32).parsebytes(self.header)
        return self._message

    def fields(self, name: str) -> list[bytes]:
        """
        Every value of the field C{name}, unfolded, as the bytes sent.
        """
        if self._fields is None:
            found: dict[str, list[bytes]] = {}
            for key, value in self.message.raw_items():
                raw = str(value).encode("ascii", "surrogateescape")
                found.setdefault(key.lower(), []).append(_FOLD.sub(b"", raw).strip())
            self._fields = found
        return self._fields.get(name, [])

    def field(self, name: str) -> bytes | None:
        """
        The first value of the field C{name}, or L{None}.
        """
        found = self.fields(name)
        return found[0] if found else None

    def headerLines(self, names: Iterable[bytes | str], negate: bool) -> bytes:
        """
        The header fields named (or, with C{negate}, not named), exactly as
        sent, then the blank line.
        """
        wanted = {(n.decode("ascii", "replace") if isinstance(n, bytes) else n).lower() for n in names}
        out, keep = [], False
        for line in self.header.split(b"\r\n")[:-2]:
            if line[:1] not in (b" ", b"\t"):
                name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
                keep = (name in wanted) != negate and b":" in line
            if keep:
                out.append(line + b"\r\n")
        return b"".join(out) + b"\r\n"

    # -- content type ------------------------------------------------------------

    def contentType(self) -> tuple[str, str, list[tuple[str, str]]]:
        """
        Type, subtype (lower case) and parameters, with RFC 2045 5.2's
        defaults.
        """
        if self._type is None:
            self._type = self._contentType()
        return self._type

    def _contentType(self) -> tuple[str, str, list[tuple[str, str]]]:
        raw = self.field("content-type")
        main, sub = ("message", "rfc822") if self._digest else ("text", "plain")
        if raw is not None:
            value = raw.decode("ascii", "replace").split(";", 1)[0].strip()
            if value.count("/") == 1 and all(value.split("/")):
                main, sub = (s.strip().lower() for s in value.split("/"))
            else:
                raw = None
        params: list[tuple[str, str]] = []
        if raw is not None:
            params = parameters(raw)
        if main == "text" and not params:
            params = [("charset", "us-ascii")]
        return main, sub, params

    def param(self, name: str) -> str | None:
        for key, value in self.contentType()[2]:
            if key.lower() == name:
                return value
        return None

    @property
    def isMultipart(self) -> bool:
        return self.contentType()[0] == "multipart" and bool(self.children)

    @property
    def isMessage(self) -> bool:
        return self.contentType()[:2] == ("message", "rfc822")

    @property
    def children(self) -> list["Entity"]:
        """
        The parts of a multipart, or the message of a message/rfc822 (one).
        """
        if self._children is None:
            self._children = []
            if self.depth < MAX_DEPTH:
                main, sub, _ = self.contentType()
                if main == "multipart":
                    boundary = self.param("boundary")
                    if boundary:
                        raw = boundary.encode("utf-8", "surrogateescape")
                        self._children = [
                            Entity(p, sub == "digest", self.depth + 1)
                            for p in splitMultipart(self.body, raw)
                        ]
                elif (main, sub) == ("message", "rfc822"):
                    self._children = [Entity(self.body, depth=self.depth + 1)]
        return self._children

    @property
    def inner(self) -> "Entity | None":
        """
        The message a message/rfc822 entity holds.
        """
        return self.children[0] if self.isMessage and self.children else None


# -- sections ------------------------------------------------------------------------


def locate(message: Entity, path: Iterable[int]) -> Entity | None:
    """
    The part a section's numbers name (1-based), or L{None} if there is no
    such part.  Part 1 of a message that is not multipart is its body.
    """
    node, part = message, message
    for n in path:
        if node.isMultipart:
            if not 1 <= n <= len(node.children):
                return None
            part = node.children[n - 1]
        elif n == 1:
            part = node
        else:
            return None
        inner = part.inner
        node = inner if inner is not None else part
    return part


def section(message: Entity, path: list[int], spec: str, fields: list[bytes] | None = None) -> bytes | None:
    """
    The bytes of a FETCH section: C{path} the part numbers, C{spec} one of
    C{""}, C{"HEADER"}, C{"HEADER.FIELDS"}, C{"HEADER.FIELDS.NOT"},
    C{"TEXT"}, C{"MIME"}; L{None} if the part does not exist.
    """
    part = locate(message, path)
    if part is None:
        return None
    if spec == "":
        return part.body if path else part.data
    if spec == "MIME":
        return part.header if path else None
    target = part
    if path:
        inner = part.inner
        if inner is None:
            return None
        target = inner
    if spec == "TEXT":
        return target.body
    if spec == "HEADER":
        return target.header
    return target.headerLines(fields or [], spec == "HEADER.FIELDS.NOT")


# -- BINARY (RFC 3516) ---------------------------------------------------------------

_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decodeQuotedPrintable(body: bytes) -> bytes:
    """
    RFC 2045 6.7: trailing blanks dropped, soft line breaks (C{=} at the
    end of a line, blanks after it allowed) joined, C{=XX} decoded, any
    other C{=} kept; hard line breaks stay CRLF.
    """
    lines = body.split(b"\r\n")
    out = []
    for n, line in enumerate(lines):
        last = n == len(lines) - 1
        line = line.rstrip(b" \t")
        if line.endswith(b"="):
            out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), line[:-1]))
        else:
            out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), line) + (b"" if last else b"\r\n"))
    return b"".join(out)


def decodeBase64(body: bytes) -> bytes:
    """
    Base64 with whatever is not of its alphabet ignored, and decoding
    stopped at the padding.
    """
    data = _BASE64_JUNK.sub(b"", body.split(b"=", 1)[0])
    data = data[: len(data) - len(data) % 4] + {0: b"", 2: data[len(data) - 2 :] + b"==", 3: data[len(data) - 3 :] + b"="}.get(len(data) % 4, b"")
    return binascii.a2b_base64(data) if data else b""


def decodedBody(entity: Entity) -> bytes | None:
    """
    The body of C{entity} with its Content-Transfer-Encoding undone, or
    L{None} for an encoding not known (BINARY answers [UNKNOWN-CTE]).
    """
    encoding = (entity.field("content-transfer-encoding") or b"7bit").strip().lower()
    if encoding in (b"7bit", b"8bit", b"binary"):
        return entity.body
    if encoding == b"base64":
        return decodeBase64(entity.body)
    if encoding == b"quoted-printable":
        return decodeQuotedPrintable(entity.body)
    return None


def binarySection(message: Entity, path: list[int]) -> bytes | None:
    """
    BINARY[path]: the part decoded (the whole message, as is, for no
    path); L{None} if there is no such part, L{ValueError} for an unknown
    encoding.
    """
    if not path:
        return message.data
    part = locate(message, path)
    if part is None:
        return None
    if part.isMultipart or part.isMessage:
        return part.body
    decoded = decodedBody(part)
    if decoded is None:
        raise ValueError("unknown Content-Transfer-Encoding")
    return decoded


def encodeBinaryParts(data: bytes) -> bytes:
    """
    A message with its binary parts (Content-Transfer-Encoding: binary)
    re-encoded as base64, so that it is 7-bit clean where it was not
    (RFC 3516 4.4: APPEND of a literal8).
    """
    message = Entity(data)
    changes: list[tuple[int, int, bytes]] = []

    def walk(entity: Entity, start: int) -> None:
        if entity.isMultipart:
            offset = entity.data.find(entity.body) if entity.body else len(entity.data)
            for child in entity.children:
                at = entity.data.find(child.data, offset) if child.data else -1
                if at >= 0:
                    walk(child, start + at)
                    offset = at + len(child.data)
            return
        encoding = (entity.field("content-transfer-encoding") or b"").strip().lower()
        if encoding != b"binary":
            return
        header = re.sub(rb"(?im)^(content-transfer-encoding:[ \t]*)binary(?=[ \t]*\r?$)", rb"\1base64", entity.header)
        encoded = binascii.b2a_base64(entity.body, newline=False)
        lines = b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
        changes.append((start, start + len(entity.data), header + lines + b"\r\n"))

    walk(message, 0)
    for begin, end, replacement in sorted(changes, reverse=True):
        data = data[:begin] + replacement + data[end:]
    return data


# -- BODYSTRUCTURE -----------------------------------------------------------------


def _s(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def _params(pairs: list[tuple[str, str]]) -> list[Value] | None:
    out: list[Value] = []
    for name, value in pairs:
        out += [_s(name), _s(value)]
    return out or None


def _disposition(entity: Entity) -> Value:
    raw = entity.field("content-disposition")
    if raw is None:
        return None
    kind = raw.decode("ascii", "replace").split(";", 1)[0].strip()
    if not kind:
        return None
    return [_s(kind), _params(parameters(raw))]


def _language(entity: Entity) -> Value:
    raw = entity.field("content-language")
    if raw is None:
        return None
    tags = [t.strip() for t in raw.split(b",") if t.strip()]
    if not tags:
        return None
    return tags[0] if len(tags) == 1 else list(tags)


def structure(entity: Entity, extended: bool) -> Value:
    """
    The BODYSTRUCTURE of C{entity} (with C{extended}) or its BODY.
    """
    main, sub, params = entity.contentType()
    if entity.isMultipart:
        out: list[Value] = [structure(c, extended) for c in entity.children]
        out.append(_s(sub))
        if extended:
            out += [_params(params), _disposition(entity), _language(entity), entity.field("content-location")]
        return out
    if main == "multipart":
        # No boundary or no parts: what it holds is shown as plain text.
        main, sub, params = "text", "plain", [("charset", "us-ascii")]
    encoding = entity.field("content-transfer-encoding") or b"7bit"
    body = entity.body
    out = [
        _s(main),
        _s(sub),
        _params(params),
        entity.field("content-id"),
        entity.field("content-description"),
        encoding,
        len(body),
    ]
    inner = entity.inner
    if inner is not None:
        out += [envelope(inner), structure(inner, extended), body.count(b"\n")]
    elif main == "text":
        out.append(body.count(b"\n"))
    if extended:
        out += [entity.field("content-md5"), _disposition(entity), _language(entity), entity.field("content-location")]
    return out


# -- ENVELOPE ------------------------------------------------------------------------


def envelope(entity: Entity) -> Value:
    """
    The ENVELOPE of a message (RFC 3501 7.4.2).
    """
    def addresses(name: str) -> Value:
        raw = entity.field(name)
        return None if raw is None else (Addresses(parseAddresses(raw)) or None)

    sender = addresses("from")
    return [
        entity.field("date"),
        entity.field("subject"),
        sender,
        addresses("sender") or sender,
        addresses("reply-to") or sender,
        addresses("to"),
        addresses("cc"),
        addresses("bcc"),
        entity.field("in-reply-to"),
        entity.field("message-id"),
    ]


_SPECIALS = b'()<>@,;:\\".[]'


def _tokens(raw: bytes) -> list[tuple[str, bytes]]:
    """
    RFC 5322 lexical tokens: ("atom", text), ("quoted", text),
    ("comment", text), ("literal", [dtext]) or ("special", char).
    """
    out: list[tuple[str, bytes]] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i : i + 1]
        if c in b" \t\r\n":
            i += 1
        elif c == b'"':
            j, text = i + 1, bytearray()
            while j < n and raw[j : j + 1] != b'"':
                if raw[j : j + 1] == b"\\" and j + 1 < n:
                    j += 1
                text += raw[j : j + 1]
                j += 1
            out.append(("quoted", bytes(text)))
            i = j + 1
        elif c == b"(":
            depth, j, text = 1, i + 1, bytearray()
            while j < n and depth:
                ch = raw[j : j + 1]
                if ch == b"\\" and j + 1 < n:
                    j += 1
                    ch = raw[j : j + 1]
                elif ch == b"(":
                    depth += 1
                elif ch == b")":
                    depth -= 1
                    if not depth:
                        break
                text += ch
                j += 1
            out.append(("comment", bytes(text)))
            i = j + 1
        elif c == b"[":
            j = raw.find(b"]", i)
            j = n if j < 0 else j + 1
            out.append(("literal", raw[i:j]))
            i = j
        elif c in _SPECIALS:
            out.append(("special", c))
            i += 1
        else:
            j = i
            while j < n and raw[j : j + 1] not in _SPECIALS and raw[j : j + 1] not in b" \t\r\n":
                j += 1
            out.append(("atom", raw[i:j]))
            i = j
    return out


def parseAddresses(raw: bytes) -> list[list[bytes | None]]:
    """
    An address list as ENVELOPE shows it: one C{(name route mailbox host)}
    per address, a group as C{(NIL NIL group NIL)} ... C{(NIL NIL NIL
    NIL)}.  Whatever cannot be parsed is kept as well as it can be, never
    refused.
    """
    tokens = _tokens(raw)
    out: list[list[bytes | None]] = []
    inGroup = False
    phrase: list[bytes] = []
    comment: bytes | None = None
    local: list[bytes] = []
    i = 0

    def flush() -> None:
        nonlocal phrase, comment, local
        # An address with no angle brackets: the words are the addr-spec.
        if local or phrase:
            spec = b"".join(local) if local else b" ".join(phrase)
            mailbox, _, host = spec.rpartition(b"@") if b"@" in spec else (spec, b"", b"")
            out.append([comment, None, mailbox or None, host or None])
        phrase, comment, local = [], None, []

    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "comment":
            comment = comment or (text.strip() or None)
        elif kind == "special" and text == b"<":
            j = i + 1
            route: list[bytes] = []
            spec: list[bytes] = []
            while j < len(tokens) and tokens[j] != ("special", b">"):
                k, t = tokens[j]
                if k != "comment":
                    spec.append(t)
                j += 1
            joined = b"".join(spec)
            if joined.startswith(b"@") and b":" in joined:
                routeText, _, joined = joined.partition(b":")
                route = [routeText]
            mailbox, _, host = joined.rpartition(b"@") if b"@" in joined else (joined, b"", b"")
            name = b" ".join(phrase) or comment
            if mailbox or host or name:
                out.append([name or None, route[0] if route else None, mailbox or None, host or None])
            phrase, comment, local = [], None, []
            i = j
        elif kind == "special" and text == b":" and not inGroup and not local:
            out.append([None, None, b" ".join(phrase), None])
            phrase, comment = [], None
            inGroup = True
        elif kind == "special" and text == b";" and inGroup:
            flush()
            out.append([None, None, None, None])
            inGroup = False
        elif kind == "special" and text == b",":
            flush()
        elif kind == "special" and text in (b"@", b"."):
            # The words so far were the start of an addr-spec, not a name.
            if not local and phrase:
                local = [b" ".join(phrase)]
            local.append(text)
            phrase = []
        elif local:
            local.append(text)
        else:
            phrase.append(text)
        i += 1
    flush()
    if inGroup:
        out.append([None, None, None, None])
    return out
