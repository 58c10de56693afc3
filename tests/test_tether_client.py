"""
The tether client in memory: hello and welcome, the TUN path, reconnects,
the relay endpoint's key, and the routes it adds and removes.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.tether_support import FakeRequest, FakeWebSocket, ListTun, RecordingRunner, ip4, lose
from tether.client import Backoff, ClientLink, DirectConnector, RelayLinks, TetherClient
from tether.netconf import ClientNetwork
from tether.wire import Close, Welcome, errorMessage

WELCOME = Welcome("198.18.100.2", 24, "198.18.100.1", 1400, "S" * 24, routes=("0.0.0.0/0",))


class FakeNetwork:
    def __init__(self) -> None:
        self.applied: list[tuple] = []
        self.restored = 0

    async def apply(self, *config, server=None) -> None:
        self.applied.append((*config, server))

    async def restore(self) -> None:
        self.restored += 1


def makeClient(clock=None) -> TetherClient:
    client = TetherClient("lap", "secret", FakeNetwork(), reactor=clock or Clock())
    client.tun = ListTun()
    return client


def openLink(client: TetherClient, server: str | None = None) -> tuple[ClientLink, FakeWebSocket]:
    link = ClientLink(client, server)
    ws = FakeWebSocket()
    link.negotiationStarted(ws)
    client.attach(link)
    link.negotiationFinished()
    return link, ws


def test_helloThenWelcomeConfiguresTunnel():
    """The client says hello first; the welcome's address, MTU and routes are applied, with the server's address."""
    client = makeClient()
    link, ws = openLink(client, "198.18.1.1")
    (hello,) = ws.controls()
    assert (hello["type"], hello["name"], hello["token"], hello["binary"]) == ("hello", "lap", "secret", True)
    link.textMessageReceived(WELCOME.encode())
    assert client.network.applied == [("198.18.100.2", 24, 1400, ("0.0.0.0/0",), "198.18.1.1")]


def test_packetsBothWaysOnlyWhenUp():
    """TUN packets cross only a welcomed link (dropped and counted otherwise); link packets go to the TUN."""
    client = makeClient()
    packet = ip4("198.18.100.2", "198.18.2.2")
    client.fromTun(packet)
    link, ws = openLink(client)
    client.fromTun(packet)
    assert client.counters.drops == {"link down": 2}
    link.textMessageReceived(WELCOME.encode())
    client.fromTun(packet)
    client.fromTun(b"\x60" + bytes(39))
    assert ws.sent[-1] == packet
    assert client.counters.drops["not IPv4"] == 1
    reply = ip4("198.18.2.2", "198.18.100.2")
    link.bytesMessageReceived(reply)
    assert client.tun.written == [reply]


def test_nextHelloResumesSession():
    """After a welcome, the next link's hello names the session; the same config is not applied again."""
    client = makeClient()
    link, _ = openLink(client)
    link.textMessageReceived(WELCOME.encode())
    lose(link)
    again, ws = openLink(client)
    assert ws.controls()[0]["session"] == WELCOME.session
    again.textMessageReceived(WELCOME.encode())
    assert len(client.network.applied) == 1


def test_authRefusalIsFatal():
    """An error 4401 before any welcome stops the client: retrying a wrong token cannot help."""
    client = makeClient()
    stopped = []
    client.onFatal = stopped.append
    link, _ = openLink(client)
    link.textMessageReceived(errorMessage(Close.AUTH, "authentication failed: wrong name or token"))
    lose(link)
    assert [e.code for e in stopped] == [Close.AUTH]


@pytest_twisted.ensureDeferred
async def test_directConnectorReconnectsWithBackoff():
    """When the link is lost the connector waits the backoff delay, then connects again with a fresh link."""
    clock = Clock()
    client = makeClient(clock)
    links = []

    async def connect(reactor, url, link, **kw):
        ws = FakeWebSocket()
        link.negotiationStarted(ws)
        ws.transport = type("T", (), {"getPeer": lambda self: IPv4Address("TCP", "198.18.1.1", 8780)})()
        link.negotiationFinished()
        links.append(link)
        return link

    connector = DirectConnector(client, "ws://198.18.1.1:8780/tether/v1",
                                backoff=Backoff(1.0, 8.0, rng=lambda: 0.0), connect=connect)
    connector.start()
    assert len(links) == 1 and client.link is links[0]
    lose(links[0])
    clock.advance(0.9)
    assert len(links) == 1
    clock.advance(0.2)
    assert len(links) == 2
    connector.stop()
    lose(links[1])
    clock.advance(10)
    assert len(links) == 2
    await connector.done


def test_relayKeyChecked():
    """The relay endpoint refuses a page without the right key, and the newest page's link replaces the older."""
    client = makeClient()
    relay = RelayLinks(client, "k3y")
    assert "wrong relay key" in relay.refusal(FakeRequest(key=b"nope"))
    assert relay.refusal(FakeRequest(key=b"k3y")) is None
    first = relay.buildProtocol(FakeRequest(key=b"k3y"))
    ws = FakeWebSocket()
    first.negotiationStarted(ws)
    first.negotiationFinished()
    relay.buildProtocol(FakeRequest(key=b"k3y"))
    assert ws.closed[0] == Close.REPLACED


def test_clientRoutesAddedThenRemoved():
    """The client keeps a host route to the server via the original gateway, routes the rest into the TUN, and removes all on restore."""
    runner = RecordingRunner({("ip", "route", "get"): "198.18.1.1 via 198.18.0.2 dev wlan0 src 198.18.0.1\n"})
    network = ClientNetwork(runner, "tether0")
    d = Deferred.fromCoroutine(network.apply("198.18.100.2", 24, 1400, ("0.0.0.0/0",), server="198.18.1.1"))
    assert d.called
    commands = [" ".join(c) for c in runner.commands]
    host = commands.index("ip route replace 198.18.1.1/32 via 198.18.0.2 dev wlan0")
    assert host < commands.index("ip route replace 0.0.0.0/1 dev tether0")
    assert "ip route replace 128.0.0.0/1 dev tether0" in commands
    runner.commands.clear()
    Deferred.fromCoroutine(network.restore())
    assert [" ".join(c) for c in runner.commands] == [
        "ip route del 0.0.0.0/1 dev tether0",
        "ip route del 128.0.0.0/1 dev tether0",
        "ip route del 198.18.1.1/32 via 198.18.0.2 dev wlan0",
    ]
