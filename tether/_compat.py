"""
Every private name of Twisted that the tether relies on, in one place.

Twisted 26.10's WebSocket server neither bounds a message's size, nor
echoes a subprotocol, nor lets a link write through an outbox
(L{tether.protocol}); the tether adds these around Twisted's own wire
protocol, which is private, as is the HTTP channel's hand-over to it.  Its
TUN device is Twisted's, opened with one more flag than Twisted offers.
C{tests/test_tether_compat.py} checks each name here against the
installed Twisted, so an upgrade that renames or reshapes one fails
there, loudly, instead of in a tunnel.
"""

from __future__ import annotations

from typing import Any

from constantly import FlagConstant
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, ITransport
from twisted.pair import tuntap
from twisted.pair.tuntap import TuntapPort
from twisted.web import _websocket_impl as _ws
from twisted.web.http import HTTPChannel
from twisted.web.websocket import WebSocketTransport

#: Twisted's WebSocket wire protocol: RFC 6455 through wsproto on one
#: connection, delivering to a L{twisted.web.websocket.WebSocketProtocol}.
#: The tether's wire subclasses it (C{tether.protocol._LimitedWire}),
#: constructed as C{WebSocketWire(wsprotoConnection, bootstrap, link)}.
WebSocketWire = _ws._WebSocketWireProtocol
#: What Twisted's wire does with one wsproto event: deliver a message
#: once whole, answer a ping or a close, complete the handshake.  The
#: tether's wire calls it for each event it lets through.
handleEvent = _ws._handleEvent
#: The server side's first step once upgraded: nothing to send.
serverBootstrap = _ws.serverBootstrap
#: Where a TUN device is opened; tests register
#: L{twisted.pair.testing.Tunnel} at it in a C{MemoryIOSystem}.
TUN_DEVICE: bytes = tuntap._TUN_KO_PATH

#: Methods of Twisted's private classes that classes here override: the
#: class, the name, and the parameters Twisted calls it with.
OVERRIDDEN: list[tuple[type, str, tuple[str, ...]]] = [
    (WebSocketWire, "makeConnection", ("self", "transport")),
    (WebSocketWire, "dataReceived", ("self", "data")),
    (WebSocketWire, "connectionLost", ("self", "reason")),
    (TuntapPort, "_openTunnel", ("self", "name", "mode")),
]

#: Private callables called here, with the parameters they are called with
#: (the wire's constructor: the first three, positionally).
CALLED: list[tuple[object, str, tuple[str, ...]]] = [
    (WebSocketWire, "__init__", ("self", "_wsconn", "_bootstrap", "_wsp")),
    (WebSocketWire, "loseConnection", ("self", "code", "reason")),
    (_ws, "_handleEvent", ("event", "proto")),
    (_ws, "serverBootstrap", ("wsc", "t")),
    (HTTPChannel, "_protocolUpgradeForWebsockets", ("self", "protocol")),
]


def upgradeToWebSocket(channel: HTTPChannel, wire: IProtocol) -> None:
    """
    Hand C{channel}'s connection over to C{wire}: from now on it gets the
    bytes read and the connection's loss, as in Twisted's own
    C{WebSocketResource.render_GET}.
    """
    channel._protocolUpgradeForWebsockets(wire)


def pendingMessage(wire: WebSocketWire[Any], text: bool) -> _ws.Buffer[Any]:
    """
    What C{wire} holds of a text (or binary) message whose last frame has
    not come yet: a buffer with C{data} and C{done()}, which empties it.
    """
    return wire._textBuffer if text else wire._bytesBuffer


def handshakeDone(wire: WebSocketWire[Any]) -> Deferred[Any]:
    """
    The L{Deferred} of a client C{wire} that fires with its WebSocket
    protocol once the server accepts (Twisted's client endpoint awaits
    it), or fails with C{ConnectionRejected}.
    """
    return wire._done


def takeHandshakeDone(wire: WebSocketWire[Any]) -> Deferred[Any] | None:
    """
    Take away C{wire}'s handshake L{Deferred}, if it has not fired: a
    connection lost before the handshake must fail it, which Twisted's
    wire does not do.
    """
    done: Deferred[Any] | None = vars(wire).pop("_done", None)
    return done


def closeWebSocket(transport: WebSocketTransport, code: int, reason: str) -> None:
    """
    Close a WebSocket with C{code} and a reason phrase.  Twisted's wire
    takes the reason; L{WebSocketTransport} declares only the code.
    """
    wire: Any = transport
    wire.loseConnection(code, reason)


def connectionUnder(transport: WebSocketTransport) -> ITransport:
    """
    The connection (TCP, or TLS over it) a WebSocket runs on: Twisted's
    wire keeps it as C{transport}, which L{WebSocketTransport} does not
    declare.
    """
    wire: Any = transport
    connection: ITransport = wire.transport
    return connection


def openTunnel(port: TuntapPort, name: bytes, mode: FlagConstant) -> tuple[int, bytes]:
    """
    Twisted's opening of the TUN device C{name} with the L{TunnelFlags}
    C{mode}; the override in C{tether.protocol.OffloadTunPort} adds
    C{IFF_VNET_HDR}, which L{TuntapPort} has no parameter for.

    @return: the file descriptor and the name the kernel gave, as a
        named pair.
    """
    return TuntapPort._openTunnel(port, name, mode)
