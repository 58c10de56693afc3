"""
How many connections the tether's web site takes (docs/tether.md, section
7.3): caps in total and per address, each HTTP or WebSocket connection
counted until it closes, the others answered 503 and closed; the HTTP
idle timeout before a request is complete, and none once upgraded.  In
memory on a L{Clock}, then with real clients on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.web.websocket import ConnectionRejected
from wsproto.events import TextMessage
from zope.interface.verify import verifyObject

from coursenet.admission import Admission, defaultMaxConnections
from tests.tether_support import Logged, NullNetwork, RecordingRunner, SiteClient, formatted, makeServer
from tether.client import ClientLink, TetherClient
from tether.protocol import HTTP_IDLE_TIMEOUT, TetherSite, busyReply, connectWebSocket
from tether.tap import ServerOptions, makeServerService
from tether.wire import Close, Hello, ProtocolError


class Raw:
    """
    A connection to a site from C{host}, over a L{StringTransport}.
    """

    def __init__(self, site, host: str = "198.18.0.1", port: int = 40000) -> None:
        peer = IPv4Address("TCP", host, port)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol = site.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def capped(clock, maxConnections: int = 1000, maxPerAddress: int = 256):
    """
    A tether server and its site with these caps: C{(server, site)}.
    """
    server = makeServer(clock, allowPlain=True, admission=Admission(maxConnections, maxPerAddress))
    return server, server.site()


def parse503(reply: bytes) -> dict:
    """
    The JSON error of a busy reply, after checking its status line,
    headers and one-line body.
    """
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    assert headers[b"connection"] == b"close" and headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body) and body.count(b"\n") == 1 and body.endswith(b"\n")
    return json.loads(body)


def test_busyReplyIsA503WithAOneLineReason():
    """The busy reply is an HTTP 503 closing the connection, its body one JSON line with the reason."""
    assert parse503(busyReply("server full")) == {"type": "error", "code": 503, "reason": "server full"}


def test_connectionsPastTheTotalGet503ThenAreClosedAndAborted():
    """Past the total cap a connection is answered 503 with the reason before any request, closed, and aborted 5 s later if not read."""
    clock = Clock()
    _, site = capped(clock, maxConnections=2)
    first, second = Raw(site, port=1), Raw(site, "198.18.0.2", port=2)
    with Logged() as events:
        third = Raw(site, "198.18.0.3", port=3)
    assert first.transport.value() == second.transport.value() == b""
    assert not (first.transport.disconnecting or second.transport.disconnecting)
    assert parse503(third.transport.value())["reason"] == "server full (2 connections); try again later"
    assert third.transport.disconnecting and not third.transport.disconnected
    assert "refused 198.18.0.3:3: server full" in formatted(events)
    clock.advance(5)
    assert third.transport.disconnected


def test_siteBuildsProtocolsAdmittedOrNot():
    """What the site builds, for an admitted connection or a refused one, provides IProtocol."""
    _, site = capped(Clock(), maxConnections=1)
    assert verifyObject(IProtocol, Raw(site, port=1).protocol)
    assert verifyObject(IProtocol, Raw(site, port=2).protocol)


def test_connectionsPastThePerAddressCapGet503():
    """Past the per-address cap a connection from that address is refused; one from another address is taken."""
    _, site = capped(Clock(), maxPerAddress=1)
    Raw(site, port=1)
    again = Raw(site, port=2)
    assert parse503(again.transport.value())["reason"] == (
        "too many connections from 198.18.0.1 (limit 1); try again later")
    other = Raw(site, "198.18.0.2")
    assert other.transport.value() == b"" and not other.transport.disconnecting


def test_refusedConnectionsAreNotCounted():
    """A refused connection takes no place: closing it frees nothing, and the count stays at the cap."""
    _, site = capped(Clock(), maxConnections=1)
    Raw(site, port=1)
    refused = Raw(site, port=2)
    refused.close()
    assert site.admission.connections == 1
    assert parse503(Raw(site, port=3).transport.value())["code"] == 503


def test_httpConnectionCountedUntilItCloses():
    """A plain HTTP connection holds its place, answered or not, until it closes; then another is taken."""
    _, site = capped(Clock(), maxConnections=1)
    web = Raw(site, port=1)
    web.protocol.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert web.transport.value().startswith(b"HTTP/1.1 404")
    assert site.admission.connections == 1 and site.admission.count("198.18.0.1") == 1
    web.close()
    assert site.admission.connections == 0 and site.admission.count("198.18.0.1") == 0
    assert Raw(site, port=2).transport.value() == b""


def test_webSocketCountedUntilItCloses():
    """An upgraded tether link holds its place while it is open, however it ends, and frees it when closed."""
    _, site = capped(Clock(), maxConnections=1)
    client = SiteClient(site)
    client.send(TextMessage(Hello("lap", "secret").encode()))
    assert client.read() and site.admission.connections == 1
    assert parse503(Raw(site, "198.18.0.2").transport.value())["code"] == 503
    client.channel.connectionLost(Failure(ConnectionDone()))
    assert site.admission.connections == 0
    assert Raw(site, "198.18.0.2").transport.value() == b""


@pytest.mark.parametrize("sent", [b"", b"GET /tether/v1 HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half a request"])
def test_idleHTTPConnectionClosedBeforeItsRequestCompletes(sent):
    """An HTTP connection that does not complete a request within the idle timeout (30 s) is closed."""
    clock = Clock()
    _, site = capped(clock)
    web = Raw(site)
    web.protocol.dataReceived(sent)
    clock.advance(HTTP_IDLE_TIMEOUT - 0.5)
    assert not web.transport.disconnecting
    clock.advance(1)
    assert web.transport.disconnecting
    assert HTTP_IDLE_TIMEOUT == 30


def test_upgradedLinkIsNotCutByTheHTTPTimeout():
    """Once upgraded, a link that talks outlives the HTTP idle timeout many times over; only the tether's keepalive closes it (4408)."""
    clock = Clock()
    server, site = capped(clock)
    client = SiteClient(site)
    client.send(TextMessage(Hello("lap", "secret").encode()))
    client.read()
    for n in range(12):
        clock.advance(10)
        client.send(TextMessage(json.dumps({"type": "ping", "id": n})))
        client.read()
    assert not client.transport.disconnecting
    clock.advance(server.timeout + server.keepalive)
    closes = [json.loads(e.data) for e in client.read() if isinstance(e, TextMessage) and '"error"' in e.data]
    assert [c["code"] for c in closes] == [Close.TIMEOUT]


def test_tapOptionsSetTheCaps():
    """--max-connections and --max-per-address cap the server's site, every listener through one Admission."""
    options = ServerOptions()
    options.parseOptions(["--pool", "198.18.100.0/24", "--user", "lap:secret", "--listen", "tcp:0",
                          "--listen", "tcp:0:interface=127.0.0.2", "--max-connections", "40",
                          "--max-per-address", "7"])
    top = makeServerService(options, reactor=MemoryReactorClock(), runner=RecordingRunner())
    admissions = {id(s.factory.admission): s.factory.admission for s in top}
    assert len(admissions) == 1
    (admission,) = admissions.values()
    assert (admission.maxConnections, admission.maxPerAddress) == (40, 7)


def test_defaultCapsFitTheDescriptorLimit():
    """Without the options, the cap is what fits under the descriptor limit (one each), 256 per address at most."""
    options = ServerOptions()
    options.parseOptions(["--pool", "198.18.100.0/24", "--user", "lap:secret"])
    (service,) = makeServerService(options, reactor=MemoryReactorClock(), runner=RecordingRunner())
    admission = service.factory.admission
    assert admission.maxConnections == defaultMaxConnections(fdsPerConnection=1)
    assert admission.maxPerAddress == min(256, admission.maxConnections)
    assert TetherSite(None, reactor=Clock()).admission.maxConnections == admission.maxConnections


@pytest_twisted.ensureDeferred
async def test_realClientsSeeTheBusyReply(reactor):
    """Over real sockets, with the one place taken, the tether's client is rejected with 503 and curl reads the reason."""
    if shutil.which("curl") is None:
        from tests.conftest import skipOrFail

        skipOrFail("curl is not installed (make sysdeps)")
    server, site = capped(reactor, maxConnections=1)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"ws://127.0.0.1:{port.getHost().port}/tether/v1"
    client = TetherClient("lap", "secret", NullNetwork(), reactor=reactor)
    try:
        first = await connectWebSocket(reactor, url, ClientLink(client))
        with pytest.raises(ConnectionRejected) as rejected:
            await connectWebSocket(reactor, url, ClientLink(client))
        assert rejected.value.response.code == 503
        out, err, code = await getProcessOutputAndValue(
            "curl", ["-sS", "-i", "-m", "10", url.replace("ws", "http", 1)], env={})
        assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), (out, err, code)
        assert b'"reason":"server full (1 connections); try again later"' in out
        first.refuse(ProtocolError(Close.NORMAL, "done"))
        await first.lost
    finally:
        server.stop()
        await port.stopListening()
