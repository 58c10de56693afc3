"""
The tether over Twisted's real WebSocket code: the handshake, subprotocol
and size limit in memory (iosim), and wss:// certificate checks on
127.0.0.1.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.test import iosim
from twisted.web.server import Site

from coursenet.tls import tlsListenString
from tests.tether_support import Logged, NullNetwork, formatted, ip4, makeServer
from tether.client import ClientLink, TetherClient
from tether.protocol import clientWire, connectWebSocket
from tether.wire import MAX_MESSAGE, Close, ProtocolError


def pair(server, client: TetherClient):
    """
    A client link joined to C{server}'s web site by iosim, handshake done.
    """
    site = Site(server.resource())
    link = ClientLink(client)
    wire = clientWire("ws://198.18.1.1:8780/tether/v1", link)
    serverProto, clientProto, pump = iosim.connectedServerAndClient(
        lambda: site.buildProtocol(IPv4Address("TCP", "198.18.1.1", 8780)),
        lambda: wire,
        greet=False,
    )
    pump.flush()
    return link, wire, pump


def test_handshakeHelloWelcomeAndPackets():
    """Over Twisted's WebSocket framing the client is welcomed and a packet crosses each way."""
    clock = Clock()
    server = makeServer(clock, allowPlain=True)
    client = TetherClient("lap", "secret", NullNetwork(), reactor=clock)
    client.tun = type("T", (), {"written": [], "write": lambda self, p: self.written.append(p)})()
    link, wire, pump = pair(server, client)
    assert link.welcomed and client.config[0] == "198.18.100.2"
    client.link = link
    packet = ip4("198.18.100.2", "198.18.2.2", b"y" * 1000)
    client.fromTun(packet)
    pump.flush()
    assert server.tun.written == [packet]
    reply = ip4("198.18.2.2", "198.18.100.2")
    server.fromTun(reply)
    pump.flush()
    assert client.tun.written == [reply]


def test_oversizedMessageRefused1009():
    """A message larger than the limit is refused with close 1009 before it is buffered whole, and logged."""
    clock = Clock()
    server = makeServer(clock, allowPlain=True)
    client = TetherClient("lap", "secret", NullNetwork(), reactor=clock)
    link, wire, pump = pair(server, client)
    with Logged() as events:
        wire.sendBytesMessage(b"\x45" + bytes(MAX_MESSAGE + 10))
        pump.flush()
    assert not link.connected
    assert "message larger than" in formatted(events)
    assert link.closeReason.code == Close.TOO_BIG
    assert server.tun.written == []


class RawHTTP(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def handshake(subprotocol: str, path: str = "/tether/v1") -> bytes:
    site = Site(makeServer(Clock()).resource())
    headers = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
    )
    raw = RawHTTP(headers.encode())
    _, _, pump = iosim.connectedServerAndClient(
        lambda: site.buildProtocol(IPv4Address("TCP", "198.18.1.1", 8780)), lambda: raw, greet=False)
    pump.flush()
    return raw.received


@pytest.mark.parametrize("offered, status, header", [
    ("chat, tether.v1", b"101", b"sec-websocket-protocol: tether.v1"),
    ("chat", b"400", None),
])
def test_subprotocolEchoedOrRefused(offered, status, header):
    """A browser offering tether.v1 gets it echoed (101); offering only others gets 400 with a JSON reason."""
    reply = handshake(offered)
    assert reply.split(b" ")[1] == status
    if header:
        assert header in reply.lower()
    else:
        assert b'"reason":"unsupported subprotocol' in reply


@pytest_twisted.ensureDeferred
async def test_wssVerifiesServerCertificate(reactor, devCert):
    """wss:// with --cafile trusting the dev certificate is welcomed; without it the TLS handshake fails."""
    cert, key = devCert
    server = makeServer(reactor)
    port = await endpoints.serverFromString(
        reactor, tlsListenString(0, cert, key, "127.0.0.1")).listen(Site(server.resource()))
    url = f"wss://localhost:{port.getHost().port}/tether/v1"
    client = TetherClient("lap", "secret", NullNetwork(), reactor=reactor)
    welcomed: list = []
    client.welcomed = lambda link, welcome: welcomed.append(welcome)
    try:
        link = await connectWebSocket(reactor, url, ClientLink(client), cafile=cert)
        for _ in range(100):
            if welcomed:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert [w.address for w in welcomed] == ["198.18.100.2"]
        link.refuse(ProtocolError(Close.NORMAL, "done"))
        with pytest.raises(SSL.Error):
            await connectWebSocket(reactor, url, ClientLink(client))
    finally:
        await port.stopListening()
