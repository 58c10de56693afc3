"""
The poker wire format, pure: no transport, no reactor (docs/poker.md).

Lines are ASCII and end with CRLF (a bare LF is taken from clients, for nc
and telnet).  A client sends commands; the server answers each with one
final numbered reply (C{NNN text}, C{NNN-text} for the lines before it)
and sends events at any time: an upper-case word first, never a digit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coursenet.errors import ReplyError

VERSION = "POKER/1"
#: The longest command a client may send, CRLF excluded.
MAX_LINE = 256
MAX_NAME = 24
#: Chips on one command: more than any bankroll.
MAX_AMOUNT = 10**12

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\Z")


class Code:
    """
    Reply codes: 2xx done, 4xx refused as things are now, 5xx the command
    itself is wrong.
    """

    OK = 200
    TABLES = 210
    HELP = 214
    READY = 220
    BYE = 221
    LOGGED_IN = 230
    BALANCE = 240
    SEATED = 250
    LEFT = 251
    LEAVING = 252
    WATCHING = 260
    HISTORY = 270
    CLOSING = 421
    NOT_YOUR_TURN = 440
    ILLEGAL = 441
    OUT_OF_RANGE = 442
    NO_SUCH_TABLE = 443
    SEAT = 444
    BUY_IN = 445
    FUNDS = 446
    NOT_SEATED = 447
    ALREADY_SEATED = 448
    TOO_MANY = 449
    INTERNAL = 451
    NO_SUCH_HAND = 452
    SYNTAX = 500
    BAD_ARGUMENT = 501
    BAD_SEQUENCE = 503
    LOGIN_FAILED = 530
    NAME_IN_USE = 531


class PokerError(ReplyError):
    """
    A refusal: its reply code and a message saying what was wrong.
    """


@dataclass(frozen=True)
class Command:
    verb: str
    args: tuple[str, ...]


#: Each command's verb and how many arguments it takes (min, max).
ARITY = {
    "LOGIN": (1, 2),
    "TABLES": (0, 0),
    "OPEN": (1, 2),
    "SIT": (3, 3),
    "LEAVE": (0, 0),
    "WATCH": (1, 1),
    "UNWATCH": (1, 1),
    "ACT": (1, 2),
    "BALANCE": (0, 0),
    "HISTORY": (2, 2),
    "PING": (0, 1),
    "HELP": (0, 0),
    "QUIT": (0, 0),
}

USAGE = {
    "LOGIN": "LOGIN name [password]",
    "TABLES": "TABLES",
    "OPEN": "OPEN table [seats]",
    "SIT": "SIT table seat buyin",
    "LEAVE": "LEAVE",
    "WATCH": "WATCH table",
    "UNWATCH": "UNWATCH table",
    "ACT": "ACT FOLD|CHECK|CALL|BET n|RAISE n",
    "BALANCE": "BALANCE",
    "HISTORY": "HISTORY table hand",
    "PING": "PING [token]",
    "HELP": "HELP",
    "QUIT": "QUIT",
}

ACTIONS = {"FOLD": False, "CHECK": False, "CALL": False, "BET": True, "RAISE": True}


def parseCommand(line: bytes) -> Command:
    """
    One command line (without its line ending) as a L{Command}.

    @raise PokerError: 500 for a line that is not a command, 501 for one
        with the wrong arguments.
    """
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise PokerError(Code.SYNTAX, "commands are ASCII")
    if any(ord(c) < 32 and c != "\t" for c in text) or "\x7f" in text:
        raise PokerError(Code.SYNTAX, "control characters are not allowed")
    words = text.split()
    if not words:
        raise PokerError(Code.SYNTAX, "empty line; try HELP")
    verb = words[0].upper()
    if verb not in ARITY:
        raise PokerError(Code.SYNTAX, f"unknown command {words[0][:32]}; try HELP")
    low, high = ARITY[verb]
    args = tuple(words[1:])
    if not low <= len(args) <= high:
        raise PokerError(Code.BAD_ARGUMENT, f"usage: {USAGE[verb]}")
    if verb == "ACT":
        action = args[0].upper()
        if action not in ACTIONS:
            raise PokerError(Code.BAD_ARGUMENT, f"unknown action {args[0][:16]}; usage: {USAGE['ACT']}")
        if ACTIONS[action] != (len(args) == 2):
            what = f"{action} takes an amount (the total for the street)" if ACTIONS[action] else f"{action} takes no amount"
            raise PokerError(Code.BAD_ARGUMENT, what)
        args = (action, *args[1:])
    return Command(verb, args)


def parseAmount(text: str, what: str = "amount") -> int:
    """
    A whole number of chips, or 501 saying what was wrong.
    """
    if not text.isdigit() or not text.isascii():
        raise PokerError(Code.BAD_ARGUMENT, f"{what} must be a whole number of chips, not {text[:16]}")
    value = int(text)
    if value > MAX_AMOUNT:
        raise PokerError(Code.BAD_ARGUMENT, f"{what} too large")
    return value


def checkName(name: str) -> None:
    """
    @raise PokerError: 501 unless C{name} is a player name: a letter, then
        letters, digits, C{_} and C{-}, at most L{MAX_NAME} characters.
    """
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise PokerError(
            Code.BAD_ARGUMENT,
            f"bad name: a letter, then letters, digits, _ or -, at most {MAX_NAME} characters",
        )


def formatLine(text: str) -> bytes:
    """
    One line, CRLF added.  Everything the server writes is ASCII.
    """
    return text.encode("ascii", "replace") + b"\r\n"


def formatReply(code: int, text: str, more: bool = False) -> bytes:
    return formatLine(f"{code}{'-' if more else ' '}{text}")
