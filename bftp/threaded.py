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
import shutil
import sys
import tempfile

from bftp import tap
from coursenet.blocking import (
    ForkingServer,
    SharedNameSet,
    ThreadedServer,
    TwinOptionsMixin,
    twinMain,
)


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
