"""
IRC messages, pure: no transport, no reactor.  Bytes in, messages out,
as the modern IRC client protocol (modern.ircdocs.horse) and IRCv3
message tags describe them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from chat.wire import clean

#: A line is at most 512 bytes, CRLF included: 510 without it.
MAX_IRC_LINE = 510
#: Tags a client may send, the C{@} and the space after them included
#: (IRCv3 message-tags: 4096 bytes).
MAX_CLIENT_TAGS = 4096
#: Everything but the CRLF: tags, then the 510 bytes of a plain line.
MAX_TAGGED_LINE = MAX_CLIENT_TAGS + MAX_IRC_LINE

_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_ESCAPE = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}


class BadMessage(ValueError):
    """
    A line that is not an IRC message.
    """


@dataclass
class Message:
    """
    One IRC message: C{command} upper-cased, C{params} with the trailing
    one last.
    """

    command: str
    params: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""


def unescapeTag(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 1
            if i < len(value):
                out.append(_UNESCAPE.get(value[i], value[i]))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def escapeTag(value: str) -> str:
    return "".join(_ESCAPE.get(c, c) for c in value)


def parseTags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, _, value = item.partition("=")
        tags[key] = unescapeTag(value)
    return tags


def splitTags(line: bytes) -> tuple[bytes, bytes]:
    """
    The tag section of C{line} (with its C{@} and trailing space, or
    empty) and the rest, so that each is held to its own length limit.
    """
    if not line.startswith(b"@"):
        return b"", line
    end = line.find(b" ")
    if end < 0:
        return line, b""
    rest = end
    while rest < len(line) and line[rest : rest + 1] == b" ":
        rest += 1
    return line[:rest], line[rest:]


def parseMessage(text: str) -> Message:
    """
    Parse one line (no line ending) of text.

    @raise BadMessage: for a line with no command.
    """
    tags: dict[str, str] = {}
    rest = text.lstrip(" ")
    if rest.startswith("@"):
        tagText, _, rest = rest[1:].partition(" ")
        tags = parseTags(tagText)
        rest = rest.lstrip(" ")
    source = ""
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    trailing = None
    if " :" in rest:
        rest, trailing = rest.split(" :", 1)
    elif rest.startswith(":"):
        rest, trailing = "", rest[1:]
    words = [w for w in rest.split(" ") if w]
    if not words:
        raise BadMessage("no command")
    command, params = words[0], words[1:]
    if trailing is not None:
        params.append(trailing)
    return Message(command.upper(), params, tags, source)


def formatMessage(
    command: str, *params: str, source: str = "", tags: dict[str, str] | None = None,
    limit: int = MAX_IRC_LINE, trailing: bool = False,
) -> bytes:
    """
    One line, CRLF included.  The last parameter is trailing (after C{:})
    when it must be (empty, with a space, or starting with C{:}) or when
    C{trailing} says it is text, as older clients expect.  The part
    after the tags is cut to C{limit} bytes; NUL, CR and LF become C{?}.
    """
    words = [f":{source}"] if source else []
    words.append(command)
    if params:
        *middle, last = params
        words.extend(middle)
        if trailing or not last or " " in last or last.startswith(":"):
            last = ":" + last
        words.append(last)
    body = clean(" ".join(words)).encode("utf-8")
    if len(body) > limit:
        body = body[:limit].decode("utf-8", "ignore").encode("utf-8")
    if tags:
        tagText = ";".join(k if v == "" else f"{k}={escapeTag(v)}" for k, v in tags.items())
        body = b"@" + tagText.encode("utf-8") + b" " + body
    return body + b"\r\n"


def serverTime(when: float) -> str:
    """
    A time as the server-time capability writes it: UTC, milliseconds.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"


def splitList(value: str) -> list[str]:
    """
    The elements of a comma-separated list, empty ones left out.
    """
    return [item for item in value.split(",") if item]
