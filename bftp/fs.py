"""
The server's view of its files: a root directory that no path can leave.

Clients name files by virtual paths (C{/docs/a.txt}) that are resolved
against a current directory, normalised, and mapped below the root.  A path
is refused, with reply 553, when it climbs above the root, names a reserved
entry, or leads through a symbolic link to a place outside the root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat as statmod
import time
from dataclasses import dataclass

from bftp.wire import MAX_PATH, Code, ProtocolError, decodePath

#: Entries whose names start with this belong to the server (partial
#: uploads); clients can neither see nor name them.
RESERVED_PREFIX = ".bftp-"
PARTIAL_PREFIX = RESERVED_PREFIX + "partial."
#: The longest name a directory entry can have (NAME_MAX on Linux).
NAME_MAX = 255


@dataclass(frozen=True)
class Entry:
    """
    What LIST and STAT tell about one directory entry.
    """

    name: str
    kind: str  # "file", "dir" or "other"
    size: int
    mtime: float

    @classmethod
    def fromStat(cls, name: str, st: os.stat_result) -> "Entry":
        """
        The entry for C{st}; only regular files have a size, others show 0.
        """
        if statmod.S_ISREG(st.st_mode):
            return cls(name, "file", st.st_size, st.st_mtime)
        kind = "dir" if statmod.S_ISDIR(st.st_mode) else "other"
        return cls(name, kind, 0, st.st_mtime)


def osReply(e: OSError, vpath: str) -> ProtocolError:
    """
    The reply for a failed file system call on C{vpath}.
    """
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ProtocolError(Code.NO_SPACE, f"{vpath}: no space left on the server")
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return ProtocolError(Code.NOT_FOUND, f"{vpath}: no such file or directory")
    if e.errno == errno.EEXIST:
        return ProtocolError(Code.EXISTS, f"{vpath}: already exists")
    if e.errno == errno.ENOTEMPTY:
        return ProtocolError(Code.WRONG_TYPE, f"{vpath}: directory not empty")
    if e.errno == errno.EISDIR:
        return ProtocolError(Code.WRONG_TYPE, f"{vpath}: is a directory")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ProtocolError(Code.PERMISSION, f"{vpath}: permission denied by the server's file system")
    if e.errno in (errno.EINVAL, errno.ELOOP, errno.ENAMETOOLONG):
        return ProtocolError(Code.BAD_NAME, f"{vpath}: {e.strerror}")
    return ProtocolError(Code.LOCAL_ERROR, f"{vpath}: server error: {e.strerror}")


def formatTime(t: float) -> str:
    """
    UTC time in ISO 8601, as LIST and STAT show it.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Jail:
    """
    Map virtual paths to real paths below C{root}, refusing every escape.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve(self, cwd: str, arg: str) -> str:
        """
        Turn a percent-encoded path argument into a normalised virtual path.

        @raise ProtocolError: 553 for a path that climbs above the root or
            names a reserved entry (and whatever L{decodePath} refuses).
        """
        path = decodePath(arg)
        if not path:
            raise ProtocolError(Code.BAD_NAME, "empty path")
        joined = path if path.startswith("/") else posixpath.join(cwd, path)
        parts: list[str] = []
        for name in joined.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                if not parts:
                    raise ProtocolError(Code.BAD_NAME, f"{path}: path leads outside the root")
                parts.pop()
                continue
            if name.startswith(RESERVED_PREFIX):
                raise ProtocolError(Code.BAD_NAME, f"{path}: names starting with {RESERVED_PREFIX} are reserved")
            parts.append(name)
        resolved = "/" + "/".join(parts)
        if len(resolved.encode("utf-8")) > MAX_PATH:
            raise ProtocolError(Code.BAD_NAME, f"path longer than {MAX_PATH} bytes once resolved")
        return resolved

    def real(self, vpath: str) -> str:
        """
        The real path of C{vpath}, after checking that no symbolic link on
        the way leads outside the root.  The last component need not exist.

        @raise ProtocolError: 553 if it would leave the root.
        """
        real = os.path.join(self.root, vpath.lstrip("/"))
        resolved = os.path.realpath(real)
        if not self._inside(resolved):
            raise ProtocolError(Code.BAD_NAME, f"{vpath}: a symbolic link leads outside the root")
        return real

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def stat(self, vpath: str) -> os.stat_result | None:
        """
        C{os.stat} of a virtual path, or L{None} if nothing is there.
        """
        try:
            return os.stat(self.real(vpath))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise osReply(e, vpath)

    def listdir(self, vpath: str) -> list[Entry]:
        """
        The entries of a directory, sorted by name, without reserved
        entries and without names that are not valid UTF-8 (which no BFTP
        path could name).

        @raise ProtocolError: 550 if C{vpath} is not a directory.
        """
        real = self.real(vpath)
        entries = []
        try:
            with os.scandir(real) as it:
                for d in it:
                    name = d.name
                    if name.startswith(RESERVED_PREFIX) or not _representable(name):
                        continue
                    # A link leading out of the root shows nothing of where it leads.
                    if d.is_symlink() and not self._inside(os.path.realpath(d.path)):
                        continue
                    try:
                        st = d.stat(follow_symlinks=True)
                    except OSError:
                        continue
                    entries.append(Entry.fromStat(name, st))
        except (FileNotFoundError, NotADirectoryError):
            raise ProtocolError(Code.NOT_FOUND, f"{vpath}: no such directory")
        except OSError as e:
            raise osReply(e, vpath)
        return sorted(entries, key=lambda e: e.name)

    def located(self, vpath: str) -> str:
        """
        The virtual path of where C{vpath}'s entry really is: symbolic
        links on the way to its directory followed, the last name kept.
        Two paths that name the same entry locate the same, so this is the
        key of the one-upload-per-path lock.

        @raise ProtocolError: 553 if a link leads outside the root.
        """
        if vpath == "/":
            return "/"
        parent, name = posixpath.split(vpath)
        return posixpath.join(self.virtualOf(os.path.realpath(self.real(parent)), vpath), name)

    def canonical(self, vpath: str) -> str:
        """
        The virtual path of what C{vpath} names with every symbolic link
        followed, the last one included.

        @raise ProtocolError: 553 if a link leads outside the root.
        """
        return self.virtualOf(os.path.realpath(self.real(vpath)), vpath)

    def virtualOf(self, resolved: str, vpath: str) -> str:
        """
        The virtual path of the real path C{resolved} (links already
        followed), which C{vpath} led to.

        @raise ProtocolError: 553 if it is outside the root.
        """
        if not self._inside(resolved):
            raise ProtocolError(Code.BAD_NAME, f"{vpath}: a symbolic link leads outside the root")
        relative = os.path.relpath(resolved, self.root)
        return "/" if relative == "." else "/" + relative.replace(os.sep, "/")

    def partialPath(self, vpath: str) -> str:
        """
        The real path where an upload to C{vpath} collects its data: a
        reserved name in the same directory, so the final rename is atomic.
        A name too long to take the reserved prefix gets a partial named
        by its SHA-256 instead.
        """
        parent, name = posixpath.split(self.located(vpath))
        partial = PARTIAL_PREFIX + name
        if len(partial.encode("utf-8")) > NAME_MAX:
            partial = PARTIAL_PREFIX + ".sha256." + hashlib.sha256(name.encode("utf-8")).hexdigest()
        return os.path.join(self.real(parent), partial)


def _representable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return all(c.isprintable() or c == " " for c in name)
