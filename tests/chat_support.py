"""
Test support for chat: a server on a L{Clock} with history in memory, and
peers that talk to it through L{StringTransport}s, with no socket at all;
and, for the tests over real sockets, both front doors listening on
127.0.0.1 (L{listenAll}).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chat.irc import IRCFactory
from chat.protocol import ChatFactory
from chat.rooms import ChatServer
from chat.session import Limits
from chat.store import MemoryHistory
from coursenet.tls import serverContextFactory


class World:
    """
    One chat server with both front doors, on a clock.
    """

    def __init__(self, limits: Limits = Limits(floodRate=0), store=None, **serverArgs) -> None:
        self.clock = Clock()
        self.store = store if store is not None else MemoryHistory()
        self.server = ChatServer(self.store, reactor=self.clock, **serverArgs)
        self.chat = ChatFactory(self.server, limits, reactor=self.clock)
        self.irc = IRCFactory(self.server, limits, reactor=self.clock)
        self._port = 40000

    def connect(self, irc: bool = False) -> "Peer":
        self._port += 1
        return Peer(self.irc if irc else self.chat, self._port)

    def user(self, nick: str, *rooms: str) -> "Peer":
        """
        A course-protocol peer called C{nick}, in C{rooms}, output cleared.
        """
        peer = self.connect()
        peer.send(f"NICK {nick}")
        for room in rooms:
            peer.send(f"JOIN {room}")
        peer.lines()
        return peer


class Peer:
    def __init__(self, factory, port: int) -> None:
        addr = IPv4Address("TCP", "127.0.0.1", port)
        self.proto = factory.buildProtocol(addr)
        self.clock = factory.reactor
        self.transport = StringTransport(peerAddress=addr)
        self.proto.makeConnection(self.transport)

    def endTurn(self) -> None:
        """
        End the reactor turn: output coalesced in it is written out.
        """
        self.clock.advance(0)

    def send(self, line: str | bytes) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.proto.dataReceived(line + b"\r\n")

    def lines(self) -> list[str]:
        """
        The lines received since the last call.
        """
        self.endTurn()
        data = self.transport.value()
        self.transport.clear()
        return data.decode("utf-8").split("\r\n")[:-1]

    def lose(self) -> None:
        self.proto.connectionLost(None)


def codes(lines: list[str]) -> list[int]:
    return [int(line[:3]) for line in lines if line[:3].isdigit()]


@dataclass
class Listening:
    """
    One chat server's front doors on 127.0.0.1: the course protocol, in
    plain TCP and (given a certificate) TLS, and IRC.
    """

    server: ChatServer
    ports: list
    chatPort: int
    ircPort: int
    tlsPort: int | None

    async def stop(self) -> None:
        for port in self.ports:
            await port.stopListening()


async def listenAll(reactor, limits: Limits = Limits(), tls: tuple[str, str] | None = None, **serverArgs) -> Listening:
    """
    Both front doors of one new server (history in memory) on port 0.

    @param tls: C{(cert, key)}: also the course protocol over TLS.
    """
    server = ChatServer(MemoryHistory(), reactor=reactor, **serverArgs)
    chat = ChatFactory(server, limits, reactor=reactor)
    irc = IRCFactory(server, limits, reactor=reactor)
    tcp = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    ports = [await tcp.listen(chat), await tcp.listen(irc)]
    if tls is not None:
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, serverContextFactory(*tls), interface="127.0.0.1")
        ports.append(await endpoint.listen(chat))
    numbers = [p.getHost().port for p in ports]
    return Listening(server, ports, numbers[0], numbers[1], numbers[2] if tls else None)
