"""
SORT and THREAD (RFC 5256, RFC 5957's DISPLAYFROM/DISPLAYTO): sort keys
and threads from the header fields of the messages a SEARCH selects.

Ties keep mailbox order whatever REVERSE says (RFC 5256 3); strings are
compared with i;ascii-casemap (upper case), as Dovecot does.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from mail.imap_search import SearchError, _decoded
from mail.mime import Entity, parseAddresses

SORT_KEYS = frozenset(
    ["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"]
)
THREAD_ALGORITHMS = frozenset(["ORDEREDSUBJECT", "REFERENCES"])


def parseCriteria(words: Any) -> list[tuple[str, bool]]:
    """
    The sort criteria of C{(REVERSE SUBJECT SIZE)}: (key, reversed) pairs.
    """
    if not isinstance(words, list) or not words:
        raise SearchError("SORT needs a parenthesised list of sort criteria")
    out = []
    reverse = False
    for word in words:
        if not isinstance(word, bytes):
            raise SearchError("sort criteria are atoms")
        name = word.decode("ascii", "replace").upper()
        if name == "REVERSE" and not reverse:
            reverse = True
            continue
        if name not in SORT_KEYS:
            raise SearchError(f"unknown sort criterion {name}")
        out.append((name, reverse))
        reverse = False
    if reverse or not out:
        raise SearchError("REVERSE must come before a sort criterion")
    return out


# -- base subject (RFC 5256 2.1) -------------------------------------------------

_TRAILER = re.compile(r"(?:\s|\(fwd\))+$", re.I)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(r"(?:" + _BLOB + r")*(?:re|fwd?)\s*(?:" + _BLOB + r")?:\s*", re.I)
_LEADING_BLOB = re.compile(_BLOB)


def baseSubject(raw: bytes | None) -> tuple[str, bool]:
    """
    The base subject of a Subject field, and whether anything showing a
    reply or forward was taken off it.
    """
    if raw is None:
        return "", False
    text = " ".join(_decoded(raw).split())
    replied = False
    while True:
        trimmed = _TRAILER.sub("", text)
        replied |= trimmed != text.rstrip()
        text = trimmed
        while True:
            before = text
            text = text.lstrip()
            m = _LEADER.match(text)
            if m:
                text = text[m.end() :]
                replied = True
            m = _LEADING_BLOB.match(text)
            if m and text[m.end() :]:
                text = text[m.end() :]
            if text == before:
                break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            replied = True
            continue
        return text, replied


def _compareText(text: str) -> str:
    return text.upper()


# -- keys of one message -----------------------------------------------------------


def sentDate(entity: Entity, mtime: float) -> float:
    """
    The Date field as a time (UTC), or the internal date (RFC 5256 2.2).
    """
    raw = entity.field("date")
    if raw is not None:
        parsed = email.utils.parsedate_tz(raw.decode("ascii", "replace"))
        if parsed is not None:
            try:
                return float(email.utils.mktime_tz(parsed))
            except (ValueError, OverflowError):
                pass
    return mtime


def _firstAddress(entity: Entity, name: str) -> list[bytes | None] | None:
    raw = entity.field(name)
    if raw is None:
        return None
    # The first entry, a group's start included (its name is the mailbox).
    found = parseAddresses(raw)
    return found[0] if found else None


def _mailbox(entity: Entity, name: str) -> str:
    address = _firstAddress(entity, name)
    if address is None or address[2] is None:
        return ""
    return address[2].decode("utf-8", "replace")


def _display(entity: Entity, name: str) -> str:
    address = _firstAddress(entity, name)
    if address is None:
        return ""
    if address[0]:
        return _decoded(address[0])
    mailbox = (address[2] or b"").decode("utf-8", "replace")
    host = (address[3] or b"").decode("utf-8", "replace")
    return f"{mailbox}@{host}" if host else mailbox


def sortValue(key: str, entity: Entity | None, size: int, mtime: float) -> Any:
    """
    What C{key} compares for one message.
    """
    if key == "ARRIVAL":
        return mtime
    if key == "SIZE":
        return size
    assert entity is not None
    if key == "DATE":
        return sentDate(entity, mtime)
    if key == "SUBJECT":
        return _compareText(baseSubject(entity.field("subject"))[0])
    if key in ("FROM", "TO", "CC"):
        return _compareText(_mailbox(entity, key.lower()))
    return _compareText(_display(entity, key[7:].lower()))


def needsContents(criteria: Iterable[tuple[str, bool]]) -> bool:
    return any(key not in ("ARRIVAL", "SIZE") for key, _ in criteria)


def sortIds(rows: list[tuple[int, dict[str, Any]]], criteria: list[tuple[str, bool]]) -> list[int]:
    """
    The ids of C{rows} (id, values by key), in mailbox order, sorted.
    """
    ordered = list(rows)
    # Stable sorts from the last criterion to the first: ties keep the
    # mailbox order even under REVERSE.
    for key, reverse in reversed(criteria):
        ordered.sort(key=lambda row: row[1][key], reverse=reverse)
    return [n for n, _ in ordered]


# -- THREAD ------------------------------------------------------------------------------


@dataclass
class ThreadMessage:
    """
    What threading needs of one message.
    """

    id: int
    order: int
    date: float
    subject: str
    replied: bool
    messageId: str | None
    references: list[str]


_MSGID = re.compile(rb"<[^<>]*>")


def threadMessage(ident: int, order: int, entity: Entity, mtime: float) -> ThreadMessage:
    subject, replied = baseSubject(entity.field("subject"))
    ids = _MSGID.findall(entity.field("message-id") or b"")
    refs = _MSGID.findall(b" ".join(entity.fields("references")))
    if not refs:
        refs = _MSGID.findall(entity.field("in-reply-to") or b"")[:1]
    return ThreadMessage(
        ident,
        order,
        sentDate(entity, mtime),
        _compareText(subject),
        replied,
        ids[0].decode("utf-8", "replace") if ids else None,
        [r.decode("utf-8", "replace") for r in refs],
    )


@dataclass(eq=False)
class _Node:
    message: ThreadMessage | None = None
    parent: "_Node | None" = None
    children: list["_Node"] = field(default_factory=list)

    def adopt(self, child: "_Node") -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def isAncestorOf(self, other: "_Node") -> bool:
        node: _Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def key(self) -> tuple[float, int]:
        if self.message is not None:
            return self.message.date, self.message.order
        return self.children[0].key() if self.children else (0.0, 0)


def _render(node: _Node) -> str:
    head = str(node.message.id) if node.message is not None else ""
    kids = node.children
    if not kids:
        return head
    if len(kids) == 1 and head:
        return head + " " + _render(kids[0])
    inner = "".join("(" + _render(k) + ")" for k in kids)
    return head + " " + inner if head else inner


def renderThreads(roots: list[_Node]) -> bytes:
    return "".join("(" + _render(r) + ")" for r in roots).encode()


def orderedSubject(messages: list[ThreadMessage]) -> list[_Node]:
    """
    THREAD=ORDEREDSUBJECT (RFC 5256 3): by base subject, then sent date;
    the first of each subject is the parent of the others.
    """
    ordered = sorted(messages, key=lambda m: (m.subject, m.date, m.order))
    roots: list[_Node] = []
    current: _Node | None = None
    for m in ordered:
        if current is not None and current.message is not None and current.message.subject == m.subject:
            current.adopt(_Node(m))
        else:
            current = _Node(m)
            roots.append(current)
    roots.sort(key=lambda r: r.key())
    return roots


def references(messages: list[ThreadMessage]) -> list[_Node]:
    """
    THREAD=REFERENCES (RFC 5256 3).
    """
    table: dict[str, _Node] = {}
    nodes = []
    for m in messages:
        mid = m.messageId
        if mid is not None and mid in table and table[mid].message is None:
            node = table[mid]
            node.message = m
        else:
            node = _Node(m)
            if mid is not None and mid not in table:
                table[mid] = node
        nodes.append(node)
        # 1A: link the references, each the parent of the next.
        previous: _Node | None = None
        for ref in m.references:
            container = table.get(ref)
            if container is None:
                container = table[ref] = _Node()
            if (
                previous is not None
                and container.parent is None
                and container is not previous
                and not container.isAncestorOf(previous)
            ):
                previous.adopt(container)
            previous = container
        # 1B: the last reference is the message's parent; a parent it had
        # (from another message's references) is dropped, even when the
        # new link would make a loop and is not made.
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if previous is not None and previous is not node and not node.isAncestorOf(previous):
            previous.adopt(node)
    roots = [n for n in set(table.values()) | set(nodes) if n.parent is None]
    roots = _prune(roots, root=True)
    for r in roots:
        _sortChildren(r)
    roots.sort(key=lambda r: r.key())
    roots = _groupBySubject(roots)
    for r in roots:
        _sortChildren(r)
    roots.sort(key=lambda r: r.key())
    return roots


def _prune(nodes: list[_Node], root: bool) -> list[_Node]:
    """
    Step 4: dummies without children go; a dummy's children take its place,
    unless that would put several at the root.
    """
    out: list[_Node] = []
    for node in nodes:
        node.children = _prune(list(node.children), root=False)
        for child in node.children:
            child.parent = node
        if node.message is None:
            if not node.children:
                continue
            if not root or len(node.children) == 1:
                for child in node.children:
                    child.parent = node.parent
                out.extend(node.children)
                continue
        out.append(node)
    return out


def _sortChildren(node: _Node) -> None:
    for child in node.children:
        _sortChildren(child)
    node.children.sort(key=lambda c: c.key())


def _subjectOf(node: _Node) -> tuple[str, bool]:
    message = node.message or (node.children[0].message if node.children else None)
    if message is None:
        return "", False
    return message.subject, message.replied


def _groupBySubject(roots: list[_Node]) -> list[_Node]:
    """
    Step 5: roots with the same base subject are gathered.
    """
    table: dict[str, _Node] = {}
    for r in roots:
        subject, replied = _subjectOf(r)
        if not subject:
            continue
        old = table.get(subject)
        if (
            old is None
            or (r.message is None and old.message is not None)
            or (old.message is not None and old.message.replied and r.message is not None and not replied)
        ):
            table[subject] = r
    out: list[_Node] = []
    for r in roots:
        if r.parent is not None:
            # Already gathered under a dummy made for an earlier root.
            continue
        subject, replied = _subjectOf(r)
        keeper = table.get(subject) if subject else None
        if keeper is None or keeper is r:
            out.append(r)
            continue
        if keeper.message is None and r.message is None:
            for child in list(r.children):
                keeper.adopt(child)
        elif keeper.message is None:
            keeper.adopt(r)
        elif r.message is not None and replied and not keeper.message.replied:
            keeper.adopt(r)
        else:
            dummy = _Node()
            index = out.index(keeper) if keeper in out else None
            dummy.adopt(keeper)
            dummy.adopt(r)
            table[subject] = dummy
            if index is not None:
                out[index] = dummy
            else:
                out.append(dummy)
    return out
