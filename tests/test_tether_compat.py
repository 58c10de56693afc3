"""
The private names of Twisted the tether relies on (tether/_compat.py)
still exist, take what the tether passes them and behave as it expects:
an upgrade of Twisted that changes one fails here.
"""

from __future__ import annotations

import inspect

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.pair.testing import MemoryIOSystem, Tunnel
from twisted.pair.tuntap import TunnelFlags, TuntapPort
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from tether import _compat
from tether.protocol import OffloadTunPort, TunProtocol


def named(entries):
    return [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name, _ in entries]


@pytest.mark.parametrize("owner, name, params", _compat.OVERRIDDEN, ids=named(_compat.OVERRIDDEN))
def test_overriddenMethodsKeepTheirSignature(owner, name, params):
    """Each private Twisted method overridden here exists and takes exactly the parameters the override does."""
    assert tuple(inspect.signature(getattr(owner, name)).parameters) == params


@pytest.mark.parametrize("owner, name, params", _compat.CALLED, ids=named(_compat.CALLED))
def test_calledNamesTakeWhatWePass(owner, name, params):
    """Each private Twisted callable called here exists, takes our arguments first, and needs no others."""
    parameters = list(inspect.signature(getattr(owner, name)).parameters.values())
    assert tuple(p.name for p in parameters[: len(params)]) == params
    assert all(p.default is not inspect.Parameter.empty for p in parameters[len(params):])


class Link:
    """
    A L{twisted.web.websocket.WebSocketProtocol} that keeps what it hears.
    """

    def __init__(self) -> None:
        self.transport = None
        self.finished = False
        self.received: list = []
        self.lost: list[Failure] = []

    def negotiationStarted(self, transport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        self.finished = True

    def pongReceived(self, payload: bytes) -> None:
        self.received.append(("pong", payload))

    def textMessageReceived(self, message: str) -> None:
        self.received.append(message)

    def bytesMessageReceived(self, data) -> None:
        self.received.append(bytes(data))

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class Upgraded:
    """
    Twisted's wire on the server side of an upgraded connection (C{wire}),
    its wsproto connection, link and transport, and the client's framing.
    """

    def __init__(self) -> None:
        self.link, self.transport = Link(), StringTransport()
        self.server = Connection(ConnectionType.SERVER)
        self.wire = _compat.WebSocketWire(self.server, _compat.serverBootstrap, self.link)
        self.wire.makeConnection(self.transport)
        self.client = Connection(ConnectionType.CLIENT)

    def feed(self, *events) -> None:
        """
        C{events} from the client, handled one by one as the tether's wire
        does: wsproto parses, L{_compat.handleEvent} acts.
        """
        self.server.receive_data(b"".join(self.client.send(e) for e in events))
        for event in self.server.events():
            _compat.handleEvent(event, self.wire)

    def sent(self) -> list:
        self.client.receive_data(self.transport.value())
        self.transport.clear()
        return list(self.client.events())


def test_serverWireStartsTheLinkAndSendsNothing():
    """The wire, built from a wsproto connection, a bootstrap and a link, starts the link with itself as its transport; the server bootstrap sends nothing."""
    up = Upgraded()
    assert up.link.transport is up.wire and up.transport.value() == b""
    assert _compat.connectionUnder(up.wire) is up.transport


def test_handleEventBuffersUntilTheLastFrame():
    """A message in pieces waits in the wire's pending buffer, text and binary apart, and reaches the link whole."""
    up = Upgraded()
    up.feed(TextMessage("hel", message_finished=False))
    assert up.link.received == []
    assert _compat.pendingMessage(up.wire, True).data == "hel" and _compat.pendingMessage(up.wire, False).data == b""
    up.feed(TextMessage("lo"), BytesMessage(b"\x45\x00", message_finished=False))
    assert up.link.received == ["hello"]
    assert _compat.pendingMessage(up.wire, True).data == "" and _compat.pendingMessage(up.wire, False).data == b"\x45\x00"
    up.feed(BytesMessage(b"\x01"))
    assert up.link.received == ["hello", b"\x45\x00\x01"] and _compat.pendingMessage(up.wire, False).data == b""


def test_pendingMessageDoneEmptiesIt():
    """Emptying the pending buffer drops what was held, so the message's rest starts afresh."""
    up = Upgraded()
    up.feed(BytesMessage(b"abc", message_finished=False))
    assert _compat.pendingMessage(up.wire, False).done() == b"abc"
    up.feed(BytesMessage(b"d"))
    assert up.link.received == [b"d"]


def test_handleEventAnswersPingsAndPongs():
    """A WebSocket ping is answered with a pong by the wire itself; a pong reaches the link."""
    up = Upgraded()
    up.feed(Ping(b"p1"), Pong(b"p2"))
    assert [(type(e), e.payload) for e in up.sent()] == [(Pong, b"p1")]
    assert up.link.received == [("pong", b"p2")]


def test_closeWebSocketSendsCodeAndReason():
    """Closing through the wire sends a close frame with the code and the reason, then closes the connection."""
    up = Upgraded()
    _compat.closeWebSocket(up.wire, 4401, "wrong token")
    (close,) = up.sent()
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (4401, "wrong token")
    assert up.transport.disconnecting


def clientWire():
    link, transport = Link(), StringTransport()
    ws = WSConnection(ConnectionType.CLIENT)
    wire = _compat.WebSocketWire(ws, lambda wsc, t: t.write(wsc.send(Request("example.test", "/"))), link)
    wire.makeConnection(transport)
    return wire, link, transport


def test_handshakeDoneFiresWithTheLinkOnAcceptance():
    """A client wire's handshake Deferred fires with its link once the server's 101 arrives, and the link is told."""
    wire, link, transport = clientWire()
    done = _compat.handshakeDone(wire)
    assert isinstance(done, Deferred) and not done.called
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(transport.value())
    assert [type(e) for e in server.events()] == [Request]
    wire.dataReceived(server.send(AcceptConnection()))
    assert done.result is link and link.finished


def test_takeHandshakeDoneTakesItOnce():
    """Taking the handshake Deferred leaves none behind: a second take finds nothing, and acceptance cannot fire it."""
    wire, _, _ = clientWire()
    done = _compat.takeHandshakeDone(wire)
    assert isinstance(done, Deferred)
    assert _compat.takeHandshakeDone(wire) is None
    wire.connectionLost(Failure(ConnectionDone()))
    assert not done.called


def test_upgradeHandsTheConnectionToTheWire():
    """After the upgrade, bytes read and the connection's loss go to the wire, which writes to the channel's transport."""
    channel = HTTPChannel()
    channel.timeOut = None
    channel.callLater = Clock().callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    link = Link()
    wire = _compat.WebSocketWire(Connection(ConnectionType.SERVER), _compat.serverBootstrap, link)
    _compat.upgradeToWebSocket(channel, wire)
    assert _compat.connectionUnder(wire) is transport
    client = Connection(ConnectionType.CLIENT)
    channel.dataReceived(client.send(TextMessage("through")))
    assert link.received == ["through"]
    channel.connectionLost(Failure(ConnectionDone()))
    assert len(link.lost) == 1


def test_openTunnelAddsTheModeGiven():
    """The TUN device is opened at TUN_DEVICE with the flags given: the offload port's override adds IFF_VNET_HDR to Twisted's, and Twisted takes the name it returns."""
    system = MemoryIOSystem()
    system.registerSpecialDevice(_compat.TUN_DEVICE, Tunnel)
    plain = TuntapPort(b"tun%d", TunProtocol(list), reactor=MemoryReactor(), system=system)
    offload = OffloadTunPort(b"tun%d", TunProtocol(list), reactor=MemoryReactor(), system=system)
    plain.startListening()
    offload.startListening()
    mode = TunnelFlags.IFF_TUN | TunnelFlags.IFF_NO_PI
    assert system.getTunnel(plain).tunnelMode == mode.value
    assert system.getTunnel(offload).tunnelMode == (mode | TunnelFlags.IFF_VNET_HDR).value
    assert offload.interface == system.getTunnel(offload).name != b"tun%d"
