"""
C{poker-threaded}: the poker server with one thread per connection
(C{socketserver.ThreadingTCPServer}), the twin of C{twistd poker} for the
benchmark.

The protocol, tables and rules are L{poker.protocol}'s, L{poker.lobby}'s
and pokerkit's, the options those of C{twistd poker} (L{poker.tap}); only
the I/O model differs (L{coursenet.blocking}).  Tables are shared in
memory by every thread, under the blocking reactor's one lock.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from coursenet.admission import Admission
from coursenet.blocking import ThreadedServer, TwinOptionsMixin, twinMain
from poker import tap
from poker.protocol import PokerFactory


class Options(TwinOptionsMixin, tap.Options):
    synopsis = "--listen HOST:PORT [twistd poker options]"
    defaultListen = "127.0.0.1:7777"

    def postOptions(self) -> None:
        if self["forking"]:
            raise usage.UsageError("the poker twin is threaded only: tables are shared in one process")
        super().postOptions()


def makeServer(options: Options, reactor):
    server = tap.makeServer(options, reactor)
    admission = Admission(options["max-connections"], options["max-per-address"])
    return ThreadedServer(options["address"], PokerFactory(server, reactor, admission), reactor)


def main(argv: list[str] | None = None) -> int:
    return twinMain(Options(), argv, makeServer, "poker")


if __name__ == "__main__":
    sys.exit(main())
