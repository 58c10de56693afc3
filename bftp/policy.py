"""
Who may do what where: the BFTP server's access rules.

Two modes:

  - B{Shared} (no class configuration): every account may read and write
    the whole tree; the anonymous account, when enabled, reads it all.
    This is a file share for one trusted team.
  - B{Class} (C{--class-config FILE} or C{--admin NAME}): admins may do
    everything; every other account is a student who owns a home and a
    hand-in folder and reads the course area; anonymous reads only what
    the configuration makes public.  See docs/bftp.md section 17.

Rules are decided on virtual paths alone, never on what exists there, so a
refusal tells nothing about another account's files.  The protocol checks
both the path as typed and the path with every symbolic link followed.
"""

from __future__ import annotations

import calendar
import posixpath
import re
import time
import tomllib
from dataclasses import dataclass, field
from typing import Any

from bftp.fs import RESERVED_PREFIX
from bftp.interfaces import IAccount
from bftp.wire import MAX_NAME, Code, ProtocolError

READ = "read"
WRITE = "write"

_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgGtT]?)i?[bB]?\s*")
_AGE = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parseSize(text: str | int) -> int:
    """
    C{"200M"} is 200 MiB; a plain number is bytes.

    @raise ValueError: for anything else.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"not a size: {text} (it must not be negative)")
        return text
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 500000, 200M, 2G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parseAge(text: str | int) -> int:
    """
    C{"2d"} is two days in seconds; a plain number is seconds.

    @raise ValueError: for anything else.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"not an age: {text} (it must not be negative)")
        return text
    m = _AGE.fullmatch(text)
    if not m:
        raise ValueError(f"not an age: {text!r} (use e.g. 3600, 90m, 36h, 7d)")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def parseDeadline(text: str) -> float:
    """
    An ISO 8601 UTC time, C{2026-12-24T23:59:00Z}, as a POSIX timestamp.
    """
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise ValueError(f"not a UTC time: {text!r} (use e.g. 2026-12-24T23:59:00Z)")


def _area(text: str, what: str) -> str:
    """
    A configured area as a normalised absolute virtual path.
    """
    path = posixpath.normpath("/" + text.strip("/"))
    if path == "/" or ".." in path.split("/"):
        raise ValueError(f"{what} must be a directory below the root, got {text!r}")
    return path


def _below(path: str, top: str) -> bool:
    """
    Whether C{path} is C{top} or inside it.
    """
    return path == top or top == "/" or path.startswith(top + "/")


@dataclass
class Policy:
    """
    The access rules of one server.

    @ivar admins: the names of the admin accounts; empty in shared mode.
    @ivar classMode: whether the class rules apply.
    @ivar quota: bytes a student's home and hand-in folder may hold,
        unfinished uploads included; L{None} for no limit.
    @ivar handinDeadline: POSIX time after which students can no longer
        write in the hand-in area; L{None} for none.
    """

    classMode: bool = False
    admins: frozenset[str] = frozenset()
    homes: str = "/home"
    course: str = "/course"
    handin: str | None = "/handin"
    handinDeadline: float | None = None
    public: tuple[str, ...] = ()
    quota: int | None = None
    partialMaxAge: int = 7 * 86400
    _clock: Any = field(default=time.time, repr=False)

    @classmethod
    def fromConfig(cls, path: str | None, admins=(), quota=None, partialMaxAge=None, clock=time.time) -> "Policy":
        """
        The policy of a TOML class configuration (docs/bftp.md section
        18.2), with command-line values added on top.

        @raise ValueError: for a configuration that cannot be used, with a
            message that says which key is wrong.
        """
        config: dict[str, Any] = {}
        if path is not None:
            with open(path, "rb") as f:
                try:
                    config = tomllib.load(f)
                except tomllib.TOMLDecodeError as e:
                    raise ValueError(f"{path}: {e}")
        known = {"admins", "areas", "limits"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(known))}")
        areas = config.get("areas", {})
        limits = config.get("limits", {})
        for table, keys in ((areas, {"homes", "course", "handin", "handin-deadline", "public"}),
                            (limits, {"quota", "partial-max-age"})):
            extra = set(table) - keys
            if extra:
                raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(extra))}; expected {', '.join(sorted(keys))}")
        def value(table: dict, key: str, name: str, kinds: tuple, parse=None):
            # Every value is checked for its kind and parsed with its key
            # named, so a mistake is one line that says where it is.
            raw = table[key]
            if not isinstance(raw, kinds) or isinstance(raw, bool):
                want = " or ".join(k.__name__ for k in kinds).replace("str", "a string").replace("int", "a number")
                raise ValueError(f"{path}: {name} must be {want}, not {raw!r}")
            if parse is None:
                return raw
            try:
                return parse(raw)
            except ValueError as e:
                raise ValueError(f"{path}: {name}: {e}")

        for table in (areas, limits):
            if not isinstance(table, dict):
                raise ValueError(f"{path}: [areas] and [limits] must be tables")
        fileAdmins: list[str] = []
        if "admins" in config:
            fileAdmins = value(config, "admins", "admins", (list,))
            if not all(isinstance(a, str) and a for a in fileAdmins):
                raise ValueError(f'{path}: admins must be a list of account names, e.g. admins = ["teacher"]')
        allAdmins = frozenset(fileAdmins) | frozenset(admins)
        policy = cls(classMode=bool(path) or bool(allAdmins), admins=allAdmins, _clock=clock)
        for key in ("homes", "course"):
            if key in areas:
                setattr(policy, key, value(areas, key, f"areas.{key}", (str,), lambda t, k=key: _area(t, f"areas.{k}")))
        if "handin" in areas:
            handin = value(areas, "handin", "areas.handin", (str,))
            policy.handin = _area(handin, "areas.handin") if handin else None
        if "handin-deadline" in areas:
            policy.handinDeadline = value(areas, "handin-deadline", "areas.handin-deadline", (str,), parseDeadline)
        if "public" in areas:
            public = value(areas, "public", "areas.public", (list,))
            if not all(isinstance(p, str) for p in public):
                raise ValueError(f'{path}: areas.public must be a list of folders, e.g. public = ["/course/slides"]')
            policy.public = tuple(_area(p, "areas.public") for p in public)
        tops = [policy.homes, policy.course] + ([policy.handin] if policy.handin else [])
        for a in tops:
            for b in tops:
                if a is not b and _below(a, b):
                    raise ValueError(f"{path}: areas {a} and {b} overlap")
        if quota is None and "quota" in limits:
            quota = value(limits, "quota", "limits.quota", (str, int), parseSize)
        policy.quota = quota or None
        if partialMaxAge is None and "partial-max-age" in limits:
            partialMaxAge = value(limits, "partial-max-age", "limits.partial-max-age", (str, int), parseAge)
        if partialMaxAge is not None:
            policy.partialMaxAge = partialMaxAge
        return policy

    # -- who ------------------------------------------------------------------

    def isAdmin(self, account: IAccount) -> bool:
        """
        Admins, and everyone in shared mode but the anonymous account.
        """
        if account.readOnly:
            return False
        return not self.classMode or account.name in self.admins

    def role(self, account: IAccount) -> str:
        """
        C{admin}, C{student} or C{anonymous}, as the login reply says.
        """
        if account.readOnly:
            return "anonymous"
        return "admin" if self.isAdmin(account) else "student"

    def folderRefusal(self, name: str) -> str | None:
        """
        Why the account C{name} cannot have folders named after it in
        class mode (a slash, C{..}, a reserved name), or L{None}.
        """
        if not self.classMode:
            return None
        if "/" in name or name in (".", "..") or name.startswith(RESERVED_PREFIX) or len(name.encode()) > MAX_NAME:
            return f"the account name {name!r} cannot name a folder; ask an admin to rename the account"
        return None

    def ownedBy(self, name: str) -> list[str]:
        """
        The areas that belong to the account C{name}: its home and hand-in
        folder (class mode only).
        """
        if not self.classMode or name in self.admins or self.folderRefusal(name):
            return []
        owned = [posixpath.join(self.homes, name)]
        if self.handin:
            owned.append(posixpath.join(self.handin, name))
        return owned

    def ownerOf(self, vpath: str) -> str | None:
        """
        The student whose home or hand-in folder C{vpath} lies in, if any.
        """
        if not self.classMode:
            return None
        for top in (self.homes, self.handin):
            if top and vpath.startswith(top + "/"):
                name = vpath[len(top) + 1:].split("/", 1)[0]
                if name not in self.admins:
                    return name
        return None

    def home(self, account: IAccount) -> str:
        """
        Where the account starts after login.
        """
        if not self.classMode or account.readOnly or self.folderRefusal(account.name):
            return "/"
        return posixpath.join(self.homes, account.name)

    # -- what -----------------------------------------------------------------

    def check(self, account: IAccount, access: str, vpath: str) -> None:
        """
        @raise ProtocolError: 534, saying why, unless C{account} may
            C{access} (L{READ} or L{WRITE}) C{vpath}.
        """
        why = self.refusal(account, access, vpath)
        if why is not None:
            raise ProtocolError(Code.PERMISSION, f"{vpath}: {why}")

    def refusal(self, account: IAccount, access: str, vpath: str) -> str | None:
        """
        Why C{account} may not C{access} C{vpath}, or L{None} if it may.
        """
        if account.readOnly:
            if access == WRITE:
                return f"account {account.name} is read-only"
            if not self.classMode or self._publicOrAbove(vpath):
                return None
            return "not public; log in to read it"
        if self.isAdmin(account):
            return None
        name = account.name
        if self.folderRefusal(name):
            return self.folderRefusal(name)
        if access == READ and vpath in ("/", self.homes, self.handin):
            return None  # listings show the student's own entry only
        for top in (self.homes, self.handin):
            if top and vpath.startswith(top + "/"):
                owner = vpath[len(top) + 1:].split("/", 1)[0]
                if owner != name:
                    return f"only {owner} and the admins may use it"
                if access == WRITE and vpath == posixpath.join(top, name):
                    return "your own folder cannot be removed or replaced"
                if access == WRITE and top == self.handin and self.handinDeadline is not None \
                        and self._clock() > self.handinDeadline:
                    return f"the hand-in deadline ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.handinDeadline))}) has passed"
                return None
        if _below(vpath, self.course):
            return None if access == READ else "the course area is written by admins only"
        if access == READ and self._publicOrAbove(vpath):
            return None  # what anonymous may read, every account may
        return "students may use only their home, their hand-in folder, the course area and the public areas"

    def _publicOrAbove(self, vpath: str) -> bool:
        return any(_below(vpath, p) or _below(p, vpath) for p in self.public)

    def visible(self, account: IAccount, vpath: str) -> bool:
        """
        Whether a listing shows the entry C{vpath} to C{account}: only
        what it may read (for anonymous, public areas and the folders
        above them).
        """
        return self.refusal(account, READ, vpath) is None
