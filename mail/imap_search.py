"""
IMAP SEARCH (RFC 3501 6.4.4): the search keys, as Twisted's parser splits
them into nested lists, compiled into one predicate over a message.

Twisted's own SEARCH fails with type errors on FROM, TO, SUBJECT, HEADER
and the SENT* dates (it mixes bytes and str), fails on SUBJECT NIL, leaves
headers out of TEXT and sends no C{* SEARCH} line for an empty result;
this replaces it.  Strings match case-insensitively as substrings of the
decoded text (RFC 2047 encoded words in headers, transfer encodings and
charsets in bodies), as Dovecot does; the message is parsed by the
standard library's L{email} package.
"""

from __future__ import annotations

import calendar
import email.utils
import re
import time
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any, Callable

from twisted.mail import imap4

from mail.mime import Entity, parseAddresses


class SearchError(ValueError):
    """
    The search keys are not valid: the client gets BAD with this text.
    """


@dataclass
class Candidate:
    """
    One message as SEARCH sees it; C{entity} only when the keys read the
    contents.
    """

    seq: int
    uid: int
    flags: list[str]
    size: int
    mtime: float
    entity: Entity | None = None
    modseq: int = 0
    _parsed: Message | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)

    @property
    def message(self) -> Message:
        if self._parsed is None:
            assert self.entity is not None
            self._parsed = BytesParser(policy=compat32).parsebytes(self.entity.data)
        return self._parsed


Predicate = Callable[[Candidate], bool]

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")

#: Keys that read a message's contents (its file).
CONTENT_KEYS = frozenset(
    ["BCC", "BODY", "CC", "FROM", "HEADER", "SENTBEFORE", "SENTON", "SENTSINCE", "SUBJECT", "TEXT", "TO"]
)

_FLAG_KEYS = {
    "ANSWERED": ("\\answered", True),
    "DELETED": ("\\deleted", True),
    "DRAFT": ("\\draft", True),
    "FLAGGED": ("\\flagged", True),
    "SEEN": ("\\seen", True),
    "RECENT": ("\\recent", True),
    "UNANSWERED": ("\\answered", False),
    "UNDELETED": ("\\deleted", False),
    "UNDRAFT": ("\\draft", False),
    "UNFLAGGED": ("\\flagged", False),
    "UNSEEN": ("\\seen", False),
}


@dataclass
class Query:
    """
    Compiled search keys: C{match} a candidate; C{contents} whether the
    keys read the message's contents.
    """

    match: Predicate
    contents: bool
    #: The keys include MODSEQ (RFC 7162 3.1.5): the answer says the highest.
    modseq: bool = False


def compileQuery(keys: list[Any], count: int, lastUid: int) -> Query:
    """
    Compile the parsed search keys (bytes, L{None} for NIL, nested lists
    for parentheses); C{count} and C{lastUid} are what C{*} stands for.

    @raise SearchError: the keys are not valid.
    """
    compiler = _Compiler(count, lastUid)
    stream = list(keys)
    if not stream:
        raise SearchError("SEARCH needs at least one search key")
    predicates = []
    while stream:
        predicates.append(compiler.key(stream))
    return Query(_all(predicates), compiler.contents, compiler.modseq)


def _all(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    return lambda c: all(p(c) for p in predicates)


def _word(value: Any) -> bytes:
    if value is None:
        return b"NIL"
    if isinstance(value, list):
        raise SearchError("a string was expected, not a parenthesised list")
    return value


class _Compiler:
    def __init__(self, count: int, lastUid: int) -> None:
        self.count = count
        self.lastUid = lastUid
        self.contents = False
        self.modseq = False

    def _take(self, stream: list[Any], what: str) -> bytes:
        if not stream:
            raise SearchError(f"SEARCH key is missing its {what}")
        return _word(stream.pop(0))

    def _string(self, stream: list[Any]) -> str:
        return _fold(self._take(stream, "string").decode("utf-8", "replace"))

    def _date(self, stream: list[Any]) -> tuple[int, int, int]:
        text = self._take(stream, "date").decode("ascii", "replace")
        m = _DATE.fullmatch(text)
        if m is None or m.group(2).lower() not in _MONTHS:
            raise SearchError(f"{text!r} is not a date like 1-Feb-2024")
        return int(m.group(3)), _MONTHS.index(m.group(2).lower()) + 1, int(m.group(1))

    def _number(self, stream: list[Any]) -> int:
        text = self._take(stream, "number")
        if not text.isdigit():
            raise SearchError(f"{text!r} is not a number")
        return int(text)

    def _set(self, text: bytes, last: int) -> imap4.MessageSet:
        try:
            messages = imap4.parseIdList(text)
        except (imap4.IllegalIdentifierError, ValueError) as e:
            raise SearchError(f"{text!r} is not a message set: {e}")
        if last:
            messages.last = last
        return messages

    def key(self, stream: list[Any]) -> Predicate:
        token = stream.pop(0)
        if isinstance(token, list):
            if not token:
                raise SearchError("empty parentheses in SEARCH")
            inner = list(token)
            predicates = []
            while inner:
                predicates.append(self.key(inner))
            return _all(predicates)
        word = _word(token)
        name = word.decode("ascii", "replace").upper()
        if name in CONTENT_KEYS:
            self.contents = True
        if name == "ALL":
            return lambda c: True
        if name in _FLAG_KEYS:
            flag, wanted = _FLAG_KEYS[name]
            return lambda c: (flag in _lower(c.flags)) == wanted
        if name == "NEW":
            return lambda c: "\\recent" in _lower(c.flags) and "\\seen" not in _lower(c.flags)
        if name == "OLD":
            return lambda c: "\\recent" not in _lower(c.flags)
        if name in ("KEYWORD", "UNKEYWORD"):
            keyword = self._take(stream, "keyword").decode("utf-8", "replace").lower()
            wanted = name == "KEYWORD"
            return lambda c: (keyword in _lower(c.flags)) == wanted
        if name in ("LARGER", "SMALLER"):
            n = self._number(stream)
            return (lambda c: c.size > n) if name == "LARGER" else (lambda c: c.size < n)
        if name in ("BEFORE", "ON", "SINCE"):
            day = self._date(stream)
            return _compareDay(name, day, lambda c: time.gmtime(c.mtime)[:3])
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = self._date(stream)
            return _compareDay(name[4:], day, _sentDay)
        if name in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            text = self._string(stream)
            header = name.lower()
            return lambda c: _headerContains(c, header, text)
        if name == "HEADER":
            header = self._take(stream, "header name").decode("ascii", "replace").lower()
            text = self._string(stream)
            return lambda c: _headerContains(c, header, text)
        if name == "BODY":
            text = self._string(stream)
            return lambda c: text in _bodyText(c)
        if name == "TEXT":
            text = self._string(stream)
            return lambda c: text in _headerText(c) or text in _bodyText(c)
        if name == "NOT":
            if not stream:
                raise SearchError("NOT needs a search key after it")
            negated = self.key(stream)
            return lambda c: not negated(c)
        if name == "OR":
            if len(stream) < 2:
                raise SearchError("OR needs two search keys after it")
            first = self.key(stream)
            second = self.key(stream)
            return lambda c: first(c) or second(c)
        if name == "MODSEQ":
            self.modseq = True
            value = self._take(stream, "mod-sequence")
            if not value.isdigit():
                # An entry name and type (RFC 7162 3.1.5): flags' mod-
                # sequences are the message's here.
                self._take(stream, "entry type")
                value = self._take(stream, "mod-sequence")
            if not value.isdigit():
                raise SearchError(f"{value!r} is not a mod-sequence")
            least = int(value)
            return lambda c: c.modseq >= least
        if name == "UID":
            uids = self._set(self._take(stream, "UID set"), self.lastUid)
            return lambda c: c.uid in uids
        if word[:1].isdigit() or word[:1] == b"*":
            seqs = self._set(word, self.count)
            return lambda c: c.seq in seqs
        raise SearchError(f"unknown SEARCH key {name}")


def _lower(flags: list[str]) -> set[str]:
    return {f.lower() for f in flags}


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _compareDay(how: str, day: tuple[int, int, int], of: Callable[[Candidate], tuple[int, int, int] | None]) -> Predicate:
    def compare(c: Candidate) -> bool:
        mine = of(c)
        if mine is None:
            return False
        if how == "BEFORE":
            return mine < day
        if how == "ON":
            return mine == day
        return mine >= day

    return compare


def _sentDay(c: Candidate) -> tuple[int, int, int] | None:
    """
    The day of the Date header, in the sender's time zone; the internal
    date's if there is no valid Date.
    """
    assert c.entity is not None
    raw = c.entity.field("date")
    if raw is not None:
        parsed = email.utils.parsedate_tz(raw.decode("ascii", "replace"))
        if parsed is not None and 1 <= parsed[1] <= 12:
            try:
                calendar.timegm(parsed[:6] + (0, 0, 0))
            except (ValueError, OverflowError):
                pass
            else:
                return parsed[0], parsed[1], parsed[2]
    return time.gmtime(c.mtime)[:3]


def _decoded(value: bytes) -> str:
    """
    A header value with its RFC 2047 encoded words decoded.
    """
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


_ADDRESS_FIELDS = frozenset(["from", "to", "cc", "bcc", "sender", "reply-to"])


def _addressText(value: bytes) -> str:
    """
    An address field as its parsed addresses: C{name mailbox@host}, group
    names too (comments and quoting gone, as a reader sees them).
    """
    words = []
    for address in parseAddresses(value):
        name, _, mailbox, host = address
        if isinstance(name, bytes) and name:
            words.append(_decoded(name))
        if isinstance(mailbox, bytes):
            at = "@" + host.decode("utf-8", "replace") if isinstance(host, bytes) else ""
            words.append(mailbox.decode("utf-8", "replace") + at)
    return " ".join(words)


def _headerContains(c: Candidate, name: str, text: str) -> bool:
    assert c.entity is not None
    values = c.entity.fields(name)
    if not text:
        return bool(values)
    for v in values:
        if text in _fold(_decoded(v)):
            return True
        if name in _ADDRESS_FIELDS and text in _fold(_addressText(v)):
            return True
    return False


def _headerText(c: Candidate) -> str:
    assert c.entity is not None
    return _fold(_decoded(c.entity.header.replace(b"\r\n", b" ")))


def _bodyText(c: Candidate) -> str:
    """
    Every text part of the message, transfer encoding and charset
    decoded, folded for matching (kept for the other keys).
    """
    if c._text is None:
        pieces: list[str] = []
        for part in c.message.walk():
            if part.get_content_type() == "message/rfc822":
                # The header of an attached message is text of this one.
                for inner in part.get_payload() or []:
                    if isinstance(inner, Message):
                        pieces.extend(_decoded(str(v).encode("utf-8", "surrogateescape")) for v in inner.values())
                continue
            if part.is_multipart():
                continue
            if part.get_content_maintype() not in ("text", "message"):
                continue
            try:
                payload = part.get_payload(decode=True)
            except Exception:
                payload = None
            if not isinstance(payload, bytes):
                raw = part.get_payload()
                payload = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
            charset = part.get_content_charset() or "utf-8"
            try:
                pieces.append(payload.decode(charset, "replace"))
            except LookupError:
                pieces.append(payload.decode("utf-8", "replace"))
        c._text = _fold(" ".join(pieces))
    return c._text
