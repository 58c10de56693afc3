"""
C{twistd chat}: the chat server, course protocol and IRC front door, as a
twistd plugin.
"""

from __future__ import annotations

import os

from twisted.application import service, strports
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import usage

from chat.bus import RedisBus, parseBusURL
from chat.interfaces import IHistoryStore
from chat.irc import IRCFactory
from chat.protocol import ChatFactory
from chat.rooms import ChatServer
from chat.session import Limits
from chat.store import MemoryHistory, SQLiteHistory
from coursenet.accounts import PasswordChecker, parseUserSpec
from coursenet.options import AccountOptionsMixin, AdmissionOptionsMixin, atLeast
from coursenet.throttle import GuessOptionsMixin
from coursenet.tls import tlsListenString

DEFAULT_LISTEN = "tcp:6665:interface=127.0.0.1"
DEFAULT_TLS_PORT = 6666
DEFAULT_HISTORY_DB = "var/chat/history.sqlite"


class Options(AccountOptionsMixin, AdmissionOptionsMixin, GuessOptionsMixin, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A multi-room chat server: the course chat protocol (docs/chat.md) on"
        " --listen endpoints, the same rooms for IRC clients on --irc endpoints."
        " With no --listen, listens on " + DEFAULT_LISTEN + "."
    )
    optFlags = [
        ["accounts-only", None, "refuse nicknames that are not accounts"],
    ]
    optParameters = [
        ["passwd", None, None, "password file of scrypt hashes: its accounts are registered nicknames"],
        ["tls-cert", None, None, "PEM certificate: also listen with TLS on --tls-port"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
        ["tls-port", None, DEFAULT_TLS_PORT, "port of the --tls-cert listener", int],
        ["history-db", None, DEFAULT_HISTORY_DB, "SQLite file for room history and topics (:memory: for none)"],
        ["history", None, 50, "messages replayed to whoever joins a room", int],
        ["flood-rate", None, 10.0, "lines a second a connection may send, PONG included (0: no limit)", float],
        ["flood-burst", None, 20, "lines a connection may send at once", int],
        ["flood-cut", None, Limits.floodCut,
         "seconds a connection may stay behind its flood limit (its lines waiting) before it is cut off", float],
        ["max-output", None, Limits.maxOutput,
         "bytes waiting for a client, beyond the transport's own 64 KiB, before it is cut off", int],
        ["drain-timeout", None, Limits.drainTimeout,
         "seconds a client may read none of the output waiting for it before it is cut off", float],
        ["idle-timeout", None, 120.0, "seconds of silence before PING", float],
        ["ping-timeout", None, 60.0, "seconds to answer PING", float],
        ["max-rooms", None, 1000, "rooms on the server", int],
        ["irc-hostname", None, "coursenet.chat", "server name the IRC front door announces"],
        ["bus", None, None, "share the rooms with other chat nodes through Redis: redis://HOST:PORT/DB"],
        ["bus-heartbeat", None, 5.0, "seconds between this node's presence announcements on the bus", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["irc"] = []
        self["users"] = []
        self["instructors"] = []

    def opt_listen(self, description: str) -> None:
        """
        Serve the course protocol on this endpoint (repeatable), e.g.
        tcp:6665 or ssl:6666:privateKey=key.pem:certKey=cert.pem
        """
        self["listen"].append(description)

    def opt_irc(self, description: str) -> None:
        """
        Serve IRC clients on this endpoint (repeatable), e.g. tcp:6667
        """
        self["irc"].append(description)

    def opt_redis(self, url: str) -> None:
        """
        The same as --bus
        """
        self["bus"] = url

    def opt_instructor(self, name: str) -> None:
        """
        An account that is an operator of every room (repeatable)
        """
        self["instructors"].append(name)

    def opt_user(self, spec: str) -> None:
        """
        Add an account NAME:PASSWORD (repeatable; for quick starts)
        """
        try:
            self["users"].append(parseUserSpec(spec))
        except ValueError as e:
            raise usage.UsageError(str(e))

    def postOptions(self) -> None:
        # Files readable, endpoints parseable, numbers in range: one line
        # naming the option, before anything listens.
        self.checkStartOptions([*self.listenEndpoints(), *(("irc", d) for d in self["irc"])])
        self.checkAdmission()
        if not 0 < self["tls-port"] < 65536:
            raise usage.UsageError(f"--tls-port {self['tls-port']}: must be a TCP port, 1 to 65535")
        for name, low in (("history", 0), ("flood-rate", 0), ("flood-burst", 1), ("max-output", 0), ("max-rooms", 1)):
            atLeast(name, self[name], low)
        for name in ("flood-cut", "drain-timeout", "idle-timeout", "ping-timeout"):
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} {self[name]:g}: must be more than 0 seconds")
        if self["bus"] is not None:
            try:
                parseBusURL(self["bus"])
            except ValueError as e:
                raise usage.UsageError(f"--bus {e}")
        if not self["bus-heartbeat"] > 0:
            raise usage.UsageError(f"--bus-heartbeat {self['bus-heartbeat']:g}: must be more than 0 seconds")
        if self["accounts-only"] and not (self["passwd"] or self["users"]):
            raise usage.UsageError("--accounts-only needs accounts: give --passwd or --user")
        if not self["listen"]:
            self["listen"].append(DEFAULT_LISTEN)
        if self["tls-cert"]:
            self["listen"].append(
                tlsListenString(self["tls-port"], self["tls-cert"], self["tls-key"], "127.0.0.1")
            )


class ChatService(service.MultiService):
    """
    The listeners, the bus to other nodes (if any), and the history
    store, closed after them.
    """

    def __init__(self, store: IHistoryStore, server: ChatServer | None = None) -> None:
        super().__init__()
        self.store = store
        self.server = server

    def startService(self) -> None:
        super().startService()
        if self.server is not None and self.server.bus is not None:
            self.server.bus.start(self.server)

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        if self.server is not None and self.server.bus is not None:
            bus = self.server.bus
            d.addBoth(lambda _: bus.stop())
        return d.addBoth(lambda _: self.store.close())


def makeStore(path: str, reactor=None, rooms: int = 1000) -> IHistoryStore:
    """
    The history store at C{path}, keeping history for at most C{rooms} rooms.
    """
    if path == ":memory:":
        return MemoryHistory(rooms=rooms)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return SQLiteHistory(path, reactor=reactor, rooms=rooms)


def makeServer(options: Options, reactor=None) -> tuple[ChatServer, Limits]:
    """
    The rooms and the per-connection limits the options describe, on
    C{reactor} (the global one by default); shared by twistd and the
    threaded and forking twins (L{chat.threaded}).
    """
    checker = None
    if options["passwd"] or options["users"]:
        checker = PasswordChecker(options["passwd"], options["users"], reactor=reactor, rule=options.guessRule())
    server = ChatServer(
        makeStore(options["history-db"], reactor, rooms=options["max-rooms"]),
        checker=checker,
        anonymous=not options["accounts-only"],
        historySize=options["history"],
        maxRooms=options["max-rooms"],
        maxConnections=options["max-connections"],
        maxPerAddress=options["max-per-address"],
        reactor=reactor,
        instructors=options["instructors"],
        bus=RedisBus(options["bus"], reactor, options["bus-heartbeat"]) if options["bus"] else None,
    )
    limits = Limits(
        floodRate=options["flood-rate"],
        floodBurst=options["flood-burst"],
        floodCut=options["flood-cut"],
        maxOutput=options["max-output"],
        drainTimeout=options["drain-timeout"],
        idleTimeout=options["idle-timeout"],
        pingTimeout=options["ping-timeout"],
    )
    return server, limits


def makeService(options: Options) -> service.IService:
    server, limits = makeServer(options)
    # Both front doors admit through the server's Admission: one cap for both.
    top = ChatService(server.store, server)
    chat = ChatFactory(server, limits)
    for description in options["listen"]:
        strports.service(description, chat).setServiceParent(top)
    irc = IRCFactory(server, limits, hostname=options["irc-hostname"])
    for description in options["irc"]:
        strports.service(description, irc).setServiceParent(top)
    return top
