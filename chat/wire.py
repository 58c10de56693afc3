"""
The course chat wire format, pure: no transport, no reactor.

Lines are UTF-8 and end with CRLF.  A client sends commands; the server
sends numbered replies (C{NNN text}, one final reply per command) and
events (an upper-case word first).  docs/chat.md is the specification this
module follows.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass

from coursenet.errors import ReplyError

VERSION = "CHAT/1"

#: The longest line either side may send, CRLF excluded.  IRC's limit too,
#: so that anything said here fits through the IRC front door.
MAX_LINE = 512
#: The longest message text (SAY, MSG, TOPIC, reasons), in UTF-8 bytes.
MAX_TEXT = 400
#: The longest topic, in UTF-8 bytes: longer ones are cut (IRC TOPICLEN).
MAX_TOPIC = 300
MAX_NICK = 20
MAX_ROOM = 32

_NICK = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\Z")
_ROOM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*\Z")


class Code(enum.IntEnum):
    """
    Reply codes.  The first digit is the class: 2 done, 4 refused for now
    (try again later or differently), 5 refused (the command is wrong).
    """

    OK = 200
    LIST = 210
    WHO = 211
    TOPIC = 212
    MODES = 213
    HELP = 214
    BANS = 215
    READY = 220
    BYE = 221
    NICK_OK = 230
    JOINED = 250
    CLOSING = 421
    NICK_IN_USE = 433
    LIMIT = 450
    SYNTAX = 500
    BAD_ARGUMENT = 501
    BAD_SEQUENCE = 503
    PASSWORD = 530
    ACCOUNTS_ONLY = 531
    NO_SUCH_NICK = 540
    NO_SUCH_ROOM = 541
    NOT_IN_ROOM = 542
    NOT_OPERATOR = 543
    BANNED = 544
    INVITE_ONLY = 545
    BAD_KEY = 546
    ROOM_FULL = 547
    CANNOT_SEND = 548
    UNKNOWN_MODE = 549
    THEY_NOT_IN_ROOM = 550
    THEY_IN_ROOM = 551
    TOO_LONG = 552
    BAD_NAME = 553
    BAD_MODE_ARGUMENT = 554


class ChatError(ReplyError):
    """
    A refusal: carries the reply that explains it.

    @ivar params: what a front door may need besides the message to say
        it in its own terms (IRC numerics name the nick, channel or mode
        refused), in the order IRC puts them.
    """

    def __init__(self, code: int, message: str, params: tuple[str, ...] = ()) -> None:
        super().__init__(code, message)
        self.params = params


#: The characters no text may hold: they would end or cut a line.  Every
#: other character, CTCP's \x01, IRC formatting codes and TAB included,
#: is passed through as sent.
FORBIDDEN = "\x00\r\n"
_FORBIDDEN = re.compile("[\x00\r\n]")


def clean(text: str) -> str:
    """
    Replace NUL, CR and LF so that C{text} is always one line.
    """
    return _FORBIDDEN.sub("?", text)


def _cut(data: bytes, limit: int) -> bytes:
    """
    Cut UTF-8 C{data} to at most C{limit} bytes without splitting a
    character.
    """
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def formatLine(text: str, limit: int = MAX_LINE) -> bytes:
    """
    One line, CRLF included, cut to C{limit} bytes before the CRLF.
    """
    return _cut(clean(text).encode("utf-8"), limit) + b"\r\n"


def formatReply(code: int, text: str) -> bytes:
    """
    One final reply line.
    """
    return formatLine(f"{int(code)} {text}")


def formatMultiline(code: int, lines: list[str], last: str) -> bytes:
    """
    C{NNN-line} for each of C{lines}, then the final C{NNN last}.
    """
    return b"".join(
        [formatLine(f"{int(code)}-{line}") for line in lines] + [formatReply(code, last)]
    )


def foldNick(nick: str) -> str:
    """
    The form in which nicknames are compared: they are case-insensitive.
    """
    return nick.lower()


def checkNick(nick: str) -> str:
    """
    @raise ChatError: (553) unless C{nick} is a valid nickname.
    """
    if not (len(nick) <= MAX_NICK and _NICK.match(nick)):
        raise ChatError(
            Code.BAD_NAME,
            f"invalid nickname {clean(nick[:32])!r}: 1-{MAX_NICK} characters,"
            " a letter then letters, digits, _ or -",
        )
    return nick


def checkRoom(name: str) -> str:
    """
    Validate a room name and return its canonical (lower-case) form.  A
    leading C{#} is accepted, as IRC users type it.

    @raise ChatError: (553) unless C{name} is a valid room name.
    """
    bare = name[1:] if name.startswith("#") else name
    if not (len(bare) <= MAX_ROOM and _ROOM.match(bare)):
        raise ChatError(
            Code.BAD_NAME,
            f"invalid room name {clean(name[:40])!r}: 1-{MAX_ROOM} letters,"
            " digits, _, - or . (not first)",
        )
    return bare.lower()


def checkText(text: str, what: str = "message", limit: int | None = MAX_TEXT) -> str:
    """
    @param limit: the most UTF-8 bytes allowed; L{MAX_TEXT} by default,
        L{None} for text whose line already bounds it (IRC's).
    @raise ChatError: (501) for empty text or text with NUL, CR or LF,
        (552) for text over C{limit} bytes.
    """
    if not text:
        raise ChatError(Code.BAD_ARGUMENT, f"empty {what}")
    if _FORBIDDEN.search(text):
        raise ChatError(Code.BAD_ARGUMENT, f"NUL, CR or LF in {what}; nothing was done")
    size = len(text.encode("utf-8"))
    if limit is None:
        return text
    if size > limit:
        raise ChatError(
            Code.TOO_LONG, f"{what} too long: {size} bytes, the limit is {limit}"
        )
    return text


def cutText(text: str, limit: int) -> str:
    """
    C{text} cut to at most C{limit} UTF-8 bytes, whole characters only.
    """
    return _cut(text.encode("utf-8"), limit).decode("utf-8")


@dataclass(frozen=True)
class Command:
    """
    A parsed command line: the upper-case verb and the rest of the line.
    """

    verb: str
    rest: str

    def split(self, words: int, text: bool, usage: str) -> list[str]:
        """
        The arguments: C{words} space-separated words, then, if C{text},
        the rest of the line as one (possibly empty) argument.

        @raise ChatError: (501) with C{usage} when words are missing, or
            when there are more and C{text} is false.
        """
        parts = self.rest.split(" ", words) if text else self.rest.split()
        if text:
            while len(parts) < words + 1:
                parts.append("")
            found = [p for p in parts[:words] if p]
            if len(found) == words:
                return parts
        elif len(parts) == words:
            return parts
        raise ChatError(Code.BAD_ARGUMENT, f"usage: {usage}")


def parseCommand(line: bytes) -> Command:
    """
    Parse one command line (without CRLF).

    @raise ChatError: (500) for non-UTF-8 text, NUL or CR, an
        empty line or a verb that is not a word.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ChatError(Code.SYNTAX, "line is not valid UTF-8; nothing was done")
    if _FORBIDDEN.search(text):
        raise ChatError(Code.SYNTAX, "NUL or CR in line; nothing was done")
    verb, _, rest = text.partition(" ")
    if not verb:
        raise ChatError(Code.SYNTAX, "empty command; try HELP")
    if not (verb.isascii() and verb.isalpha()):
        raise ChatError(Code.SYNTAX, f"unknown command {verb[:32]!r}; try HELP")
    return Command(verb.upper(), rest)


def formatTime(when: float) -> str:
    """
    A UTC time as C{YYYY-MM-DDTHH:MM:SSZ}.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


# -- what the client reads ---------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """
    A final reply, with the C{NNN-} lines that came before it.
    """

    code: int
    text: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerEvent:
    """
    An event as a client reads it.  Unused fields are empty strings.
    """

    kind: str
    room: str = ""
    nick: str = ""
    text: str = ""
    time: str = ""
    target: str = ""


#: For each event: the words before its free text, and whether it has text.
EVENT_FIELDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "MESSAGE": (("room", "nick"), True),
    "PRIVATE": (("nick",), True),
    "JOIN": (("room", "nick"), False),
    "PART": (("room", "nick"), True),
    "QUIT": (("nick",), True),
    "NICK": (("nick",), True),
    "TOPIC": (("room", "nick"), True),
    "NOTICE": (("room", "nick"), True),
    "PRIVNOTICE": (("nick",), True),
    "MODE": (("room", "nick"), True),
    "KICK": (("room", "nick", "target"), True),
    "INVITE": (("room", "nick"), False),
    "HISTORY": (("room", "time", "nick"), True),
    "PING": ((), True),
}

_REPLY = re.compile(r"([2-5][0-9][0-9])([ -])(.*)\Z", re.S)


def parseServerLine(line: bytes) -> tuple[int, bool, str] | ServerEvent:
    """
    Read one line from the server: C{(code, isFinal, text)} for a reply,
    or a L{ServerEvent}.

    @raise ChatError: (500) for a line that is neither.
    """
    text = line.decode("utf-8", "replace")
    m = _REPLY.match(text)
    if m is not None:
        return int(m.group(1)), m.group(2) == " ", m.group(3)
    kind, _, rest = text.partition(" ")
    if kind not in EVENT_FIELDS:
        raise ChatError(Code.SYNTAX, f"not a chat line: {text[:80]!r}")
    names, hasText = EVENT_FIELDS[kind]
    parts = rest.split(" ", len(names)) if hasText else rest.split(" ")
    if len(parts) < len(names):
        raise ChatError(Code.SYNTAX, f"short {kind} event: {text[:80]!r}")
    fields = dict(zip(names, parts))
    if hasText and len(parts) > len(names):
        fields["text"] = parts[len(names)]
    return ServerEvent(kind, **fields)
