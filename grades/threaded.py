"""
C{grades-threaded}: the grades server with one thread per connection
(C{socketserver.ThreadingTCPServer}), or with C{--forking} one process per
connection (C{ForkingTCPServer}).

The protocol and its rules are L{grades.protocol}'s, the options those of
C{twistd grades} (L{grades.tap}); only the I/O model differs
(L{coursenet.blocking}).  Each connection's thread (or process) runs its
queries itself, on a database connection of its own.
"""

from __future__ import annotations

import sys

from coursenet.blocking import ForkingServer, ThreadedServer, TwinOptionsMixin, twinMain
from grades import tap


class Options(TwinOptionsMixin, tap.Options):
    synopsis = "--listen HOST:PORT [--forking] [twistd grades options]"
    defaultListen = "127.0.0.1:7070"


def makeServer(options: Options, reactor):
    store = tap.makeStore(options, reactor, pool=reactor.getThreadPool())
    factory = tap.makeFactory(options, store, reactor)
    if not options["forking"]:
        return ThreadedServer(options["address"], factory, reactor)
    return ForkingServer(options["address"], factory, reactor, maxChildren=options["max-connections"])


def main(argv: list[str] | None = None) -> int:
    return twinMain(Options(), argv, makeServer, "grades")


if __name__ == "__main__":
    sys.exit(main())
