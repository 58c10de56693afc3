"""
Channel moderation, the same for both front doors: the modes a room can
have, who may do what in it, ban masks, and how a mode change is read.

A room's settings (L{RoomSettings}: modes, key, limit, bans) are stored
with its history and survive a restart; operator and voice status belong
to a membership and end with it.  The rules themselves are applied by
L{chat.rooms.ChatServer}, which both doors call.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

#: Modes with no parameter: invite only, moderated, no external messages,
#: secret, topic settable by operators only.
FLAG_MODES = "imnst"
#: ISUPPORT CHANMODES: list, always a parameter, a parameter when set, flags.
CHANMODES = "b,k,l," + FLAG_MODES
#: Member statuses, highest first, and the prefix each shows (ISUPPORT PREFIX).
STATUS_MODES = "ov"
PREFIXES = {"o": "@", "v": "+"}
PREFIX = "(ov)@+"
#: What a new room starts with.
DEFAULT_MODES = frozenset("n")
#: Bans a room keeps, and the longest key.
MAX_BANS = 100
MAX_KEY = 23
MAX_MASK = 100

_BAD_KEY = re.compile(r"[\s,:]|^$")


@dataclass(frozen=True)
class Ban:
    mask: str
    setter: str
    when: float


@dataclass
class RoomSettings:
    """
    What survives a restart of a room besides its topic and history.
    """

    modes: set[str] = field(default_factory=lambda: set(DEFAULT_MODES))
    key: str | None = None
    limit: int | None = None
    bans: list[Ban] = field(default_factory=list)

    def modeString(self, showKey: bool = True) -> list[str]:
        """
        C{+flags} and their parameters, as IRC's C{324} shows them.
        """
        letters = "".join(sorted(self.modes))
        params = []
        if self.key is not None:
            letters += "k"
            params.append(self.key if showKey else "*")
        if self.limit is not None:
            letters += "l"
            params.append(str(self.limit))
        return ["+" + letters, *params]

    def toDict(self) -> dict:
        return {
            "modes": "".join(sorted(self.modes)),
            "key": self.key,
            "limit": self.limit,
            "bans": [[b.mask, b.setter, b.when] for b in self.bans],
        }

    @classmethod
    def fromDict(cls, data: dict) -> "RoomSettings":
        return cls(
            set(data.get("modes", "")) & set(FLAG_MODES),
            data.get("key"),
            data.get("limit"),
            [Ban(m, s, w) for m, s, w in data.get("bans", [])][:MAX_BANS],
        )

    def banned(self, hostmask: str) -> bool:
        return any(maskMatches(b.mask, hostmask) for b in self.bans)


@dataclass(frozen=True)
class Change:
    """
    One mode change: C{+o bob}, C{-m}, C{+b} (a list query: no argument).
    """

    adding: bool
    letter: str
    arg: str | None = None

    def __str__(self) -> str:
        sign = "+" if self.adding else "-"
        return f"{sign}{self.letter}" + (f" {self.arg}" if self.arg is not None else "")


def _takesArgument(letter: str, adding: bool) -> bool:
    if letter in "ovbk":
        return True
    return letter == "l" and adding


def parseModeChanges(modes: str, args: list[str]) -> tuple[list[Change], list[str]]:
    """
    Read C{+mv-o bob carl} style changes.

    @return: the changes, and the letters that are no mode here.  A C{b}
        with no argument left is a list query (C{Change("b")} with no
        argument); a C{k}, C{l}, C{o} or C{v} with none is left out.
    """
    changes: list[Change] = []
    unknown: list[str] = []
    adding = True
    queue = list(args)
    for letter in modes:
        if letter in "+-":
            adding = letter == "+"
            continue
        if letter not in FLAG_MODES + STATUS_MODES + "bkl":
            unknown.append(letter)
            continue
        if _takesArgument(letter, adding):
            if queue:
                changes.append(Change(adding, letter, queue.pop(0)))
            elif letter == "b":
                changes.append(Change(adding, "b"))
            elif letter == "k" and not adding:
                changes.append(Change(False, "k", "*"))
            continue
        changes.append(Change(adding, letter))
    return changes, unknown


def joinChanges(changes: list[Change]) -> list[str]:
    """
    Applied changes as one mode string and its arguments: C{+mv-o bob carl}.
    """
    letters, args = "", []
    sign = ""
    for change in changes:
        s = "+" if change.adding else "-"
        if s != sign:
            letters += s
            sign = s
        letters += change.letter
        if change.arg is not None:
            args.append(change.arg)
    return [letters, *args]


def checkKey(key: str) -> str | None:
    """
    The reason C{key} cannot be a room key, or L{None}.
    """
    if _BAD_KEY.search(key) or len(key) > MAX_KEY:
        return f"a key is 1-{MAX_KEY} characters, no spaces, commas or colons"
    return None


def normalizeMask(mask: str) -> str:
    """
    A ban mask in full C{nick!user@host} form: C{bob} is C{bob!*@*},
    C{*@host} is C{*!*@host}.
    """
    if "!" not in mask and "@" not in mask:
        return mask + "!*@*"
    if "!" not in mask:
        return "*!" + mask
    if "@" not in mask:
        return mask + "@*"
    return mask


def maskMatches(mask: str, hostmask: str) -> bool:
    """
    Whether glob C{mask} (C{*} and C{?}) matches C{nick!user@host},
    ignoring case.
    """
    return fnmatch.fnmatchcase(hostmask.lower(), mask.lower().replace("[", "[[]"))
