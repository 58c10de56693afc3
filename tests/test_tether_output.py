"""
The tether's bounds on what waits to be sent (docs/tether.md, section
7.1), through its real web site on a L{StringTransport} and a L{Clock}:
packets tail-dropped while a client's output is full, reading stopped,
cut-offs at the cap and the drain deadline, refusals aborted when not
read, the keepalive's lower bound, and quiet logs for what anyone can
cause.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python import usage
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, TextMessage
from wsproto.handshake import H11Handshake

from coursenet.receiver import Outbox
from tests.tether_support import FakeRequest, Logged, SiteClient, connect, formatted, ip4, makeServer
from tether.client import ClientLink, TetherClient
from tether.protocol import OUTPUT_FULL, OutputLimits, TetherLink, clientWire
from tether.server import TetherServer
from tether.tap import ServerOptions
from tether.wire import Hello

LIMITS = OutputLimits(queue=10_000, limit=20_000, drainTimeout=30.0, closeTimeout=5.0)


def loggedIn(clock=None, limits=LIMITS):
    """
    A server and a client of its site that has been welcomed (address
    198.18.100.2): C{(server, client)}.
    """
    server = makeServer(clock or Clock(), allowPlain=True, limits=limits)
    client = SiteClient(server.site())
    client.send(TextMessage(Hello("lap", "secret").encode()))
    (welcome,) = client.read()
    assert json.loads(welcome.data)["type"] == "welcome"
    return server, client


def controls(events) -> list[dict]:
    return [json.loads(e.data) for e in events if isinstance(e, TextMessage)]


def test_upgradeWritesThroughAnOutbox():
    """After the upgrade the link's outbox, not the HTTP channel, is the transport's producer."""
    server = makeServer(Clock(), allowPlain=True)
    client = SiteClient(server.site())
    assert [type(e) for e in client.events] == [AcceptConnection]
    assert isinstance(client.outbox, Outbox)
    assert client.outbox.limit == server.limits.limit and client.outbox.drainTimeout == server.limits.drainTimeout


def test_tunPacketsTailDroppedWhileOutputFullThenFlowAgain():
    """While a client's output is full, its TUN packets are queued up to the queue limit, then dropped, counted and logged once; after it drains they flow again."""
    server, client = loggedIn()
    packet = ip4("198.18.2.2", "198.18.100.2", b"x" * 980)
    client.fill()
    with Logged() as events:
        for _ in range(30):
            server.fromTun(packet)
    counters = server._byAddress[packet[16:20]].counters
    queued = LIMITS.queue // (len(packet) + 4)
    assert counters.packetsOut == queued
    assert counters.drops == {OUTPUT_FULL: 30 - queued}
    assert formatted(events).count("dropping packets to lap (198.18.100.2): its output is full") == 1
    assert not client.transport.disconnected
    client.drain()
    server.fromTun(packet)
    assert counters.packetsOut == queued + 1
    assert [e.data for e in client.read()][-1] == packet


def test_readingStopsWhileOutputFull():
    """A client whose output is full is not read: its pings wait unanswered, also those already received, until the output drains."""
    server = makeServer(Clock(), allowPlain=True, limits=LIMITS)
    client = SiteClient(server.site())
    client.fill()
    assert client.transport.producerState == "paused"
    client.send(*[Ping(b"%d" % n) for n in range(5)], TextMessage('{"type":"ping","id":7}'))
    assert client.read() == []
    client.drain()
    assert client.transport.producerState == "producing"
    events = client.read()
    assert [e.payload for e in events if isinstance(e, Pong)] == [b"%d" % n for n in range(5)]
    assert controls(events) == [{"type": "pong", "id": 7}]


def test_readingStopsMidReadWhenOutputFills():
    """Messages after the one whose answer fills the output wait in the receiver until it drains."""
    server = makeServer(Clock(), allowPlain=True, limits=LIMITS)
    client = SiteClient(server.site())
    outbox = client.outbox
    answered = []
    write = outbox.wrappedTransport.write

    def writeThenFill(data):
        write(data)
        answered.append(data)
        if len(answered) == 2:
            client.fill()

    outbox.wrappedTransport.write = writeThenFill
    outbox._direct(True)  # the outbox keeps the write it found when made
    client.send(*[Ping(b"%d" % n) for n in range(5)])
    assert [e.payload for e in client.read()] == [b"0", b"1"]
    client.drain()
    assert [e.payload for e in client.read()] == [b"2", b"3", b"4"]


def test_cutOffPastTheHardCap():
    """Anything written to a full output past the hard cap aborts the connection."""
    server, client = loggedIn()
    link = server._byAddress[bytes([198, 18, 100, 2])].link
    client.fill()
    for _ in range(LIMITS.limit // 1000):
        if client.outbox.waiting + 2000 > LIMITS.limit:
            break
        link.sendControl({"type": "ping", "id": "p" * 990})
    assert LIMITS.limit - 2000 < client.outbox.waiting <= LIMITS.limit
    assert not client.transport.disconnected
    link.sendControl({"type": "ping", "id": "p" * 990})
    link.sendControl({"type": "ping", "id": "p" * 990})
    assert client.transport.disconnected


def test_cutOffAfterTheDrainDeadline():
    """A client whose output stays full for the drain deadline is aborted; one that drains in time is not."""
    clock = Clock()
    server, client = loggedIn(clock)
    client.fill()
    clock.advance(LIMITS.drainTimeout - 1)
    client.drain()
    client.fill()
    clock.advance(LIMITS.drainTimeout - 0.1)
    assert not client.transport.disconnected
    clock.advance(0.2)
    assert client.transport.disconnected


@pytest.mark.parametrize("cause", ["hello timeout", "wrong token", "protocol error"])
def test_refusalsNotReadAreAborted(cause):
    """A refusal before hello closes with its reason and aborts the connection if the client has not taken it within the close timeout."""
    clock = Clock()
    server = makeServer(clock, allowPlain=True, limits=LIMITS, helloTimeout=10)
    client = SiteClient(server.site())
    if cause == "hello timeout":
        clock.advance(10)
    elif cause == "wrong token":
        client.send(TextMessage(Hello("lap", "wrong").encode()))
    else:
        client.send(TextMessage('{"type":"bogus"}'))
    events = client.read()
    assert controls(events)[-1]["type"] == "error"
    assert isinstance(events[-1], CloseConnection)
    assert client.transport.disconnecting and not client.transport.disconnected
    clock.advance(LIMITS.closeTimeout)
    assert client.transport.disconnected


def test_httpRefusalClosesAndIsAborted():
    """An HTTP refusal (an unknown subprotocol) closes the connection, and aborts it if the client has not read it within the close timeout."""
    clock = Clock()
    site = makeServer(clock, limits=LIMITS).site()
    transport = StringTransport(lenient=True)
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(
        b"GET /tether/v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n\r\n"
    )
    reply = transport.value()
    assert reply.startswith(b"HTTP/1.1 400 ") and b"connection: close" in reply.lower()
    assert transport.disconnecting and not transport.disconnected
    clock.advance(LIMITS.closeTimeout)
    assert transport.disconnected


def test_clientKeepsReadingAndDropsWhileOutputFull():
    """The connecting end never stops reading (the server does), and drops its own TUN packets while its output is full."""
    clock = Clock()
    tether = TetherClient("lap", "secret", None, reactor=clock)
    link = ClientLink(tether)
    wire = clientWire("ws://198.18.1.1:8780/tether/v1", link, limits=LIMITS)
    transport = StringTransport(lenient=True)
    wire.makeConnection(transport)
    server = H11Handshake(ConnectionType.SERVER)
    server.receive_data(transport.value())
    list(server.events())
    wire.dataReceived(server.send(AcceptConnection()))
    transport.producer.pauseProducing()
    assert transport.producerState == "producing"
    link.welcomed = True
    tether.link = link
    packet = ip4("198.18.100.2", "198.18.2.2", b"x" * 980)
    for _ in range(30):
        tether.fromTun(packet)
    assert tether.counters.packetsOut == LIMITS.queue // (len(packet) + 8)
    assert tether.counters.drops[OUTPUT_FULL] == 30 - tether.counters.packetsOut


@pytest.mark.parametrize("keepalive, timeout", [(0, 45), (-1, 45), (15, 15), (20, 10)])
def test_keepaliveMustBePositiveAndBelowTimeout(keepalive, timeout):
    """A keepalive delay of zero or less, or not below the timeout, is refused by the server, its options and the link."""
    with pytest.raises(ValueError, match="keepalive"):
        TetherServer(None, "198.18.100.0/24", keepalive=keepalive, timeout=timeout, reactor=Clock())
    with pytest.raises(ValueError, match="keepalive"):
        TetherLink(Clock()).startKeepalive(keepalive, timeout)
    options = ServerOptions()
    with pytest.raises(usage.UsageError, match="--keepalive|--timeout"):
        options.parseOptions(["--pool", "198.18.100.0/24", "--user", "lap:secret",
                              "--keepalive", str(keepalive), "--timeout", str(timeout)])


def test_refusalsBeforeHelloLoggedWithinABudget():
    """A flood of refused hellos writes at most the budget's lines a minute, then one line that counts the rest; a welcomed client's lines are not held back."""
    clock = Clock()
    server = makeServer(clock, allowPlain=True)
    with Logged() as events:
        for n in range(100):
            link, _ = connect(server, FakeRequest(port=40000 + n))
            link.textMessageReceived(Hello("lap", "wrong").encode())
        budget = server.logBudget.burst
        assert formatted(events).count("refused 198.18.0.1") + formatted(events).count("closing link") == budget
        clock.advance(60)
        link, _ = connect(server, FakeRequest(port=41000))
        link.textMessageReceived(Hello("lap", "wrong").encode())
    text = formatted(events)
    assert "not logged (over 20 lines in 60 s): 180 refusals" in text
    assert text.count("refused 198.18.0.1") + text.count("closing link") == budget + 2


def test_httpAccessLogIsDebugAndWithinABudget():
    """The site's access log writes no line per request at info or above, and at most the budget's debug lines a minute."""
    clock = Clock()
    site = makeServer(clock).site()
    with Logged() as events:
        for _ in range(100):
            SiteClient(site, path="/nothing-here")
    access = [e for e in events if "/nothing-here" in formatted([e])]
    assert len(access) == site.budget.burst
    assert {e["log_level"] for e in access} == {LogLevel.debug}
    assert not [e for e in events if e["log_level"] >= LogLevel.info and "/nothing-here" in formatted([e])]
