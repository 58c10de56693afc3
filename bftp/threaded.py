"""
C{python -m bftp.threaded}: the BFTP server with one thread per connection
(C{socketserver.ThreadingTCPServer}), or with C{--forking} one process per
connection (C{ForkingTCPServer}).

The protocol and its rules are L{bftp.protocol}'s, the options those of
C{twistd bftp} (L{bftp.tap}); only the I/O model differs
(L{coursenet.blocking}).  Forked children share no memory: the upload
locks live in lock files (L{SharedNameSet}), while the connection limits
per address and the failed-login counts are each child's own.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile

from bftp import tap
from coursenet.blocking import ForkingServer, ThreadedServer, TwinOptionsMixin, twinMain


class SharedNameSet:
    """
    A set of names (C{in}, C{add}, C{discard}, iteration) shared by forked
    processes: a name is in the set while some process holds an
    C{flock} on its file in C{directory}.  A process that dies drops its
    names with its locks.
    """

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._held: dict[str, int] = {}

    def _file(self, name: str) -> str:
        return os.path.join(self._dir, hashlib.sha256(name.encode("utf-8")).hexdigest())

    @staticmethod
    def _locked(path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __contains__(self, name: str) -> bool:
        return name in self._held or self._locked(self._file(name))

    def add(self, name: str) -> None:
        if name in self._held:
            return
        fd = os.open(self._file(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Another process took it since the caller checked: refuse
            # rather than wait under the reactor lock.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, name.encode("utf-8"))
        self._held[name] = fd

    def discard(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)

    def __iter__(self):
        names = set(self._held)
        for entry in os.listdir(self._dir):
            path = os.path.join(self._dir, entry)
            if self._locked(path):
                with open(path, "rb") as f:
                    names.add(f.read().decode("utf-8"))
        return iter(names)


class Options(TwinOptionsMixin, tap.Options):
    synopsis = "--listen HOST:PORT [--forking] [twistd bftp options]"
    defaultListen = "127.0.0.1:9021"


def makeServer(options: Options, reactor):
    if not options["forking"]:
        return ThreadedServer(options["address"], tap.makeFactory(options, reactor), reactor)
    locks = tempfile.mkdtemp(prefix="bftp-uploads-")
    atexit.register(shutil.rmtree, locks, True)
    factory = tap.makeFactory(options, reactor, uploads=SharedNameSet(locks))
    return ForkingServer(options["address"], factory, reactor, maxChildren=options["max-connections"])


def main(argv: list[str] | None = None) -> int:
    return twinMain(Options(), argv, makeServer, "bftp")


if __name__ == "__main__":
    sys.exit(main())
