"""
Test support for the tether: fake WebSocket transports and requests, a
client of the real web site over a L{StringTransport}, a command runner
that records, IPv4 packets, and a server on a L{Clock} whose TUN is a
list.  No socket, no real TUN.
"""

from __future__ import annotations

import json
import struct

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request
from zope.interface import implementer

from tether.interfaces import ICommandRunner
from tether.server import TetherServer
from tether.wire import Hello, decodeText

POOL = "198.18.100.0/24"


def ip4(src: str, dst: str, payload: bytes = b"x" * 8, proto: int = 17) -> bytes:
    """
    An IPv4 packet from C{src} to C{dst} (checksum left zero: nothing here
    checks it).
    """
    def packed(a: str) -> bytes:
        return bytes(int(p) for p in a.split("."))
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       packed(src), packed(dst)) + payload


class FakeWebSocket:
    """
    A L{twisted.web.websocket.WebSocketTransport} that keeps what is sent.
    """

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None

    def sendTextMessage(self, text: str) -> None:
        self.sent.append(text)

    def sendBytesMessage(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def loseConnection(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def ping(self, payload: bytes = b"") -> None:
        pass

    def controls(self) -> list[dict]:
        return [json.loads(m) for m in self.sent if isinstance(m, str) and m.startswith("{")]

    def packets(self) -> list[bytes]:
        return [m if isinstance(m, bytes) else decodeText(m)[1]
                for m in self.sent if not (isinstance(m, str) and m.startswith("{"))]


class FakeRequest:
    def __init__(self, secure: bool = True, port: int = 40000, key: bytes | None = None) -> None:
        self._secure = secure
        self._address = IPv4Address("TCP", "198.18.0.1", port)
        self.args = {b"key": [key]} if key is not None else {}

    def isSecure(self) -> bool:
        return self._secure

    def getClientAddress(self):
        return self._address


def connect(factory, request=None):
    """
    A link from C{factory} over a L{FakeWebSocket}, negotiated.

    @return: C{(link, transport)}
    """
    link = factory.buildProtocol(request or FakeRequest())
    ws = FakeWebSocket()
    link.negotiationStarted(ws)
    link.negotiationFinished()
    return link, ws


class SiteClient:
    """
    A WebSocket client of a tether web site (C{TetherServer.site()}): the
    site's own HTTP channel on a L{StringTransport}, the upgrade, then
    wsproto frames both ways.

    @ivar transport: the connection's real transport; once upgraded its
        producer is the link's L{coursenet.receiver.Outbox}.
    @ivar events: what the server sent during the upgrade.
    """

    def __init__(self, site, path: str = "/tether/v1", port: int = 40000, host: str = "198.18.0.1") -> None:
        peer = IPv4Address("TCP", host, port)
        self.transport = StringTransport(peerAddress=peer, lenient=True)
        self.channel = site.buildProtocol(peer)
        self.channel.makeConnection(self.transport)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.channel.dataReceived(self.ws.send(Request(host="198.18.1.1", target=path)))
        self.events = self.read()

    def send(self, *events) -> None:
        """
        Send C{events} in one read, as one TCP segment could bring them.
        """
        self.channel.dataReceived(b"".join(self.ws.send(e) for e in events))

    def read(self) -> list:
        """
        The events the server has sent since the last read.
        """
        data = self.transport.value()
        self.transport.clear()
        self.ws.receive_data(data)
        return list(self.ws.events())

    def fill(self) -> None:
        """
        Tell the outbox that the transport's buffer is past its high-water
        mark, as a real transport does when the client does not read.
        """
        self.transport.producer.pauseProducing()

    def drain(self) -> None:
        self.transport.producer.resumeProducing()

    @property
    def outbox(self):
        return self.transport.producer


def lose(link) -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    link.connectionLost(Failure(ConnectionDone()))


class ListTun:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, packet: bytes) -> int:
        self.written.append(packet)
        return len(packet)


def makeServer(clock, **kw) -> TetherServer:
    checker = InMemoryUsernamePasswordDatabaseDontUse(lap=b"secret", other=b"pw")
    server = TetherServer(checker, kw.pop("pool", POOL), reactor=clock, **kw)
    server.tun = ListTun()
    return server


def welcomed(server, name: str = "lap", token: str = "secret", session=None, binary=True, request=None):
    """
    A link that has said hello and been welcomed: C{(link, transport, welcome)}.
    """
    link, ws = connect(server, request)
    link.textMessageReceived(Hello(name, token, session, binary).encode())
    (welcome,) = ws.controls()
    assert welcome["type"] == "welcome", welcome
    return link, ws, welcome


class NullNetwork:
    """
    A client's L{tether.netconf.ClientNetwork} that configures nothing.
    """

    async def apply(self, *config, server=None) -> None:
        pass

    async def restore(self) -> None:
        pass


@implementer(ICommandRunner)
class RecordingRunner:
    """
    Records every command; answers from C{outputs} by the command's first
    words, or with an empty string.
    """

    def __init__(self, outputs: dict[tuple[str, ...], str] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.outputs = outputs or {}

    def run(self, argv):
        self.commands.append(list(argv))
        for prefix, out in self.outputs.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return succeed(out)
        return succeed("")


class Logged:
    """
    The log events emitted while in a C{with} block.
    """

    def __enter__(self) -> EventLoggingObserver:
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        return self.observer

    def __exit__(self, *exc) -> None:
        globalLogPublisher.removeObserver(self.observer)


def formatted(observer) -> str:
    from twisted.logger import formatEvent
    return "\n".join(formatEvent(e) for e in observer)
