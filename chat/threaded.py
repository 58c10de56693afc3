"""
C{python -m chat.threaded}: the chat server (course protocol) with one
thread per connection (C{socketserver.ThreadingTCPServer}), or with
C{--forking} one process per connection (C{ForkingTCPServer}).

The protocol and its rules are L{chat.protocol}'s and L{chat.rooms}', the
options those of C{twistd chat} (L{chat.tap}); only the I/O model differs
(L{coursenet.blocking}).  Threads share the rooms in memory; forked
children reach them in the parent through L{chat.hub}.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from chat import tap
from chat.hub import ChatHub, HubForkingServer, RemoteChatServer
from chat.protocol import ChatFactory, ChatProtocol
from coursenet.blocking import ThreadedServer, TwinOptionsMixin, twinMain


class TwinProtocol(ChatProtocol):
    """
    The course protocol as the twins run it: written at once, not
    coalesced per reactor turn (their threads share one clock, and a turn
    is a reactor's).
    """

    __slots__ = ()
    coalesceOutput = False


class TwinFactory(ChatFactory):
    protocol = TwinProtocol


class Options(TwinOptionsMixin, tap.Options):
    synopsis = "--listen HOST:PORT [--forking] [twistd chat options]"
    defaultListen = "127.0.0.1:6665"

    def postOptions(self) -> None:
        if self["irc"]:
            raise usage.UsageError("the twins serve the course protocol only; no --irc")
        if self["bus"]:
            raise usage.UsageError("the twins run as one node; no --bus (twistd chat takes it)")
        super().postOptions()


def makeServer(options: Options, reactor):
    server, limits = tap.makeServer(options, reactor)
    server.turnClock = None  # no room holds events for a turn (see TwinProtocol)
    if not options["forking"]:
        return ThreadedServer(options["address"], TwinFactory(server, limits, reactor), reactor)

    def childFactory(link):
        remote = RemoteChatServer(link, reactor)
        factory = TwinFactory(remote, limits, reactor)
        return factory, lambda connection: connection.addReader(link.fileno(), remote.readEvents)

    return HubForkingServer(
        options["address"], ChatHub(server, reactor), childFactory, reactor,
        maxChildren=options["max-connections"],
    )


def main(argv: list[str] | None = None) -> int:
    return twinMain(Options(), argv, makeServer, "chat")


if __name__ == "__main__":
    sys.exit(main())
