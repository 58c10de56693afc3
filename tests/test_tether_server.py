"""
The tether server in memory: sessions, addresses, refusals and the packet
path, on a L{Clock} with a list for a TUN and fake WebSocket transports.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.pair.testing import MemoryIOSystem, Tunnel

from tests.tether_support import (
    Logged,
    RecordingRunner,
    connect,
    formatted,
    ip4,
    lose,
    makeServer,
    welcomed,
)
from tether._compat import TUN_DEVICE
from tether.netconf import ForwardingLedger, ServerNetwork, natTable
from tether.server import ServerService
from tether.wire import Close, Hello, encodePacketText


def test_helloGetsAddressAndLink():
    """A good hello is welcomed with the pool's first client address, the gateway, MTU and routes."""
    server = makeServer(Clock(), mtu=1300, routes=["0.0.0.0/0"])
    _, _, welcome = welcomed(server)
    assert (welcome["address"], welcome["prefix"], welcome["gateway"]) == ("198.18.100.2", 24, "198.18.100.1")
    assert welcome["mtu"] == 1300 and welcome["routes"] == ["0.0.0.0/0"]
    _, _, second = welcomed(server, "other", "pw")
    assert second["address"] == "198.18.100.3"


def test_wrongTokenRefusedWithReason():
    """A wrong token is answered by an error message and close 4401, and the refusal is logged."""
    server = makeServer(Clock())
    with Logged() as events:
        link, ws = connect(server)
        link.textMessageReceived(Hello("lap", "wrong").encode())
    assert ws.controls() == [{"type": "error", "code": 4401, "reason": "authentication failed: wrong name or token"}]
    assert ws.closed[0] == Close.AUTH
    assert "refused 198.18.0.1:40000: authentication failed" in formatted(events)


def test_plainTokenRefusedUnlessAllowed():
    """Over plain ws:// a hello is refused with 4403 unless the server allows plain links."""
    from tests.tether_support import FakeRequest
    link, ws = connect(makeServer(Clock()), FakeRequest(secure=False))
    link.textMessageReceived(Hello("lap", "secret").encode())
    assert ws.closed[0] == Close.PLAIN
    _, _, welcome = welcomed(makeServer(Clock(), allowPlain=True), request=FakeRequest(secure=False))
    assert welcome["address"] == "198.18.100.2"


def test_dataBeforeHelloRefused():
    """A packet before the welcome closes the link with 4400 and reaches no TUN."""
    server = makeServer(Clock())
    link, ws = connect(server)
    link.bytesMessageReceived(ip4("198.18.100.2", "198.18.2.2"))
    assert ws.closed[0] == Close.BAD_MESSAGE
    assert server.tun.written == []


def test_helloTimeout():
    """A connection that says nothing is closed with 4408 after the hello timeout."""
    clock = Clock()
    link, ws = connect(makeServer(clock, helloTimeout=5))
    clock.advance(4.9)
    assert ws.closed is None
    clock.advance(0.2)
    assert ws.closed[0] == Close.TIMEOUT


def test_goodPacketToTun():
    """A packet from the client's own address goes to the TUN device unchanged and is counted."""
    server = makeServer(Clock())
    link, _, _ = welcomed(server)
    packet = ip4("198.18.100.2", "198.18.2.2")
    link.bytesMessageReceived(packet)
    assert server.tun.written == [packet]
    assert (link.lease.counters.packetsIn, link.lease.counters.bytesIn) == (1, len(packet))


def test_spoofedSourceDroppedCountedLoggedOnce():
    """A packet whose source is not the client's address is dropped, counted each time, logged once."""
    server = makeServer(Clock())
    link, _, _ = welcomed(server)
    with Logged() as events:
        for _ in range(3):
            link.bytesMessageReceived(ip4("198.18.100.77", "198.18.2.2"))
    assert server.tun.written == []
    assert link.lease.counters.drops == {"spoofed source": 3}
    assert formatted(events).count("spoofed source: 198.18.100.77") == 1


def test_isolationAndEgressPolicy():
    """Client-to-client, loopback and configured networks are dropped; the gateway is reachable."""
    server = makeServer(Clock(), deny=["198.18.9.0/24"])
    link, _, _ = welcomed(server)
    for dst in ("198.18.100.3", "127.0.0.1", "198.18.9.9", "224.0.0.1"):
        link.bytesMessageReceived(ip4("198.18.100.2", dst))
    link.bytesMessageReceived(ip4("198.18.100.2", "198.18.100.1"))
    assert len(server.tun.written) == 1
    assert link.lease.counters.drops == {"client to client": 1, "denied destination": 3}


def test_clientToClientDeliveredDirectlyWhenAllowed():
    """Without isolation a packet to another client's address goes straight to that client's link, never to the TUN (where NAT's forward rules would refuse it); to an address no client holds it is dropped and counted."""
    server = makeServer(Clock(), isolate=False)
    sender, _, _ = welcomed(server)
    _, receiverWS, _ = welcomed(server, "other", "pw", binary=False)
    packet = ip4("198.18.100.2", "198.18.100.3")
    sender.bytesMessageReceived(packet)
    sender.bytesMessageReceived(ip4("198.18.100.2", "198.18.100.9"))
    assert receiverWS.packets() == [packet]
    assert server.tun.written == []
    assert sender.lease.counters.drops == {"no client for destination": 1}


def test_tunPacketsReachTheirClientBinaryOrBase64():
    """Packets the TUN reads go to the client owning the destination: binary, or base64 text if asked."""
    server = makeServer(Clock())
    _, binaryWS, _ = welcomed(server)
    _, textWS, _ = welcomed(server, "other", "pw", binary=False)
    toFirst, toSecond = ip4("198.18.2.2", "198.18.100.2"), ip4("198.18.2.2", "198.18.100.3")
    server.fromTun(toFirst)
    server.fromTun(toSecond)
    server.fromTun(ip4("198.18.2.2", "198.18.100.99"))
    assert binaryWS.sent[-1] == toFirst
    assert textWS.sent[-1] == encodePacketText(toSecond)
    assert server.counters.drops == {"no client for destination": 1}


def test_base64DataFromClient():
    """A client's base64 text message is a packet like a binary one."""
    server = makeServer(Clock())
    link, _, _ = welcomed(server, binary=False)
    packet = ip4("198.18.100.2", "198.18.2.2")
    link.textMessageReceived(encodePacketText(packet))
    assert server.tun.written == [packet]


def test_resumeWithinGraceKeepsAddressAndReplacesOldLink():
    """A reconnect naming its session within the grace period gets the same address; a live old link is closed 4409."""
    clock = Clock()
    server = makeServer(clock, grace=30)
    first, firstWS, welcome = welcomed(server)
    second, _, again = welcomed(server, session=welcome["session"])
    assert again["address"] == welcome["address"]
    assert firstWS.closed[0] == Close.REPLACED
    lose(first)
    server.fromTun(ip4("198.18.2.2", welcome["address"]))
    assert second.lease.counters.packetsOut == 1
    lose(second)
    clock.advance(29)
    _, _, third = welcomed(server, session=welcome["session"])
    assert third["address"] == welcome["address"]


def test_addressReleasedAfterGrace():
    """After the grace period a lost client's address returns to the pool and its session is forgotten."""
    clock = Clock()
    server = makeServer(clock, grace=30, pool="198.18.100.0/30")
    link, _, welcome = welcomed(server)
    lose(link)
    refused, ws = connect(server)
    refused.textMessageReceived(Hello("other", "pw").encode())
    assert ws.closed[0] == Close.POOL
    clock.advance(31)
    _, _, fresh = welcomed(server, session=welcome["session"])
    assert fresh["address"] == welcome["address"] and fresh["session"] != welcome["session"]


def test_keepalivePingsThenTimesOut():
    """The server pings every keepalive interval and closes 4408 after the timeout with nothing heard."""
    clock = Clock()
    server = makeServer(clock, keepalive=10, timeout=25)
    link, ws, _ = welcomed(server)
    clock.advance(10)
    assert ws.controls()[-1] == {"type": "ping", "id": 1}
    link.textMessageReceived('{"type":"pong","id":1}')
    clock.advance(20)
    assert ws.closed is None
    clock.advance(15)
    assert ws.closed[0] == Close.TIMEOUT


def test_pingAnswered():
    """A ping from the client is answered with a pong carrying its id."""
    link, ws, _ = welcomed(makeServer(Clock()))
    link.textMessageReceived('{"type":"ping","id":7}')
    assert ws.controls()[-1] == {"type": "pong", "id": 7}


def test_stopClosesLinksGoingAway():
    """Stopping the server closes every link with 1001 and frees every address."""
    server = makeServer(Clock())
    _, ws, _ = welcomed(server)
    server.stop()
    assert ws.closed[0] == Close.GOING_AWAY
    assert server.pool.take().exploded == "198.18.100.3"


def test_serviceConfiguresTunAndNatThenUndoesIt(tmp_path):
    """The service opens the TUN, configures it and NAT, carries TUN reads to clients, and removes NAT on stop."""
    clock = MemoryReactorClock()
    server = makeServer(clock)
    system = MemoryIOSystem()
    system.registerSpecialDevice(TUN_DEVICE, Tunnel)
    runner = RecordingRunner()
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    ledger = ForwardingLedger(str(tmp_path / "state"), str(sysctl), namespace="test")
    svc = ServerService(server, "tether0", lambda tun: ServerNetwork(
        runner, tun, "198.18.100.1", "198.18.100.0/24", 1400, nat=True, deny=[], forwarding=ledger), system=system)
    svc.startService()
    tun = svc._port.interface.decode()
    assert ["ip", "addr", "add", "198.18.100.1/24", "dev", tun] in runner.commands
    assert any(c[0] == "nft" and "masquerade" in c[1] for c in runner.commands)
    assert sysctl.read_text() == "1"
    _, ws, _ = welcomed(server)
    packet = ip4("198.18.2.2", "198.18.100.2")
    system.getTunnel(svc._port).addToReadBuffer(packet)
    svc._port.doRead()
    assert ws.sent[-1] == packet
    runner.commands.clear()
    svc.stopService()
    clock.advance(1)
    assert sysctl.read_text() == "0"
    assert ["nft", "delete", "table", "ip", natTable(tun)] in runner.commands
    assert ws.closed[0] == Close.GOING_AWAY


def hello(server, name: str, token: str, session=None):
    """
    A link that has sent a hello: C{(link, transport)}, welcomed or not.
    """
    link, ws = connect(server)
    link.textMessageReceived(Hello(name, token, session).encode())
    return link, ws


def test_oneNameCannotTakeThePool():
    """A name holds one address by default: its further sessions are refused 4429 with a reason, and another name still gets an address from a small pool."""
    server = makeServer(Clock(), pool="198.18.100.0/29")
    _, _, first = welcomed(server)
    for _ in range(6):
        _, ws = hello(server, "lap", "secret")
        assert ws.closed[0] == Close.NAME_LIMIT
    assert ws.controls()[-1]["reason"].startswith("lap already holds 1 address (limit 1 a name)")
    _, _, other = welcomed(server, "other", "pw")
    assert other["address"] == "198.18.100.3"
    assert len(server.pool) == 3


def test_leasesPerNameConfigurable():
    """With maxLeasesPerName 3 a name gets three addresses and a fourth session is refused 4429, not 4503, while the pool has room."""
    server = makeServer(Clock(), pool="198.18.100.0/28", maxLeasesPerName=3)
    addresses = {welcomed(server)[2]["address"] for _ in range(3)}
    assert len(addresses) == 3
    _, ws = hello(server, "lap", "secret")
    assert ws.closed[0] == Close.NAME_LIMIT
    assert welcomed(server, "other", "pw")[2]["address"] not in addresses


def test_graceLeaseCountsForItsNameOnly():
    """A lease kept for the grace period counts against its own name only: another name gets an address meanwhile, and a new session of the same name takes the kept address over at once."""
    clock = Clock()
    server = makeServer(clock, grace=60, pool="198.18.100.0/29")
    link, _, first = welcomed(server)
    lose(link)
    _, _, other = welcomed(server, "other", "pw")
    assert other["address"] != first["address"]
    _, _, again = welcomed(server)
    assert again["address"] == first["address"] and again["session"] != first["session"]
    assert len(server.pool) == 3
    _, ws = hello(server, "lap", "secret", session=first["session"])
    assert ws.closed[0] == Close.NAME_LIMIT
    clock.advance(61)
    assert len(server.pool) == 3


def test_maxLeasesOptionReachesTheServer(tmp_path):
    """--max-leases-per-token sets the server's limit; below 1 it is a usage error."""
    import pytest
    from twisted.python import usage

    from tether.tap import ServerOptions, makeServerService

    args = ["--pool", "198.18.100.0/24", "--user", "lap:secret"]
    options = ServerOptions()
    options.parseOptions([*args, "--max-leases-per-token", "4"])
    service = makeServerService(options, reactor=MemoryReactorClock(), runner=RecordingRunner())
    assert service.server.maxLeasesPerName == 4
    options = ServerOptions()
    options.parseOptions(args)
    assert options["max-leases-per-token"] == 1
    with pytest.raises(usage.UsageError, match="at least 1"):
        ServerOptions().parseOptions([*args, "--max-leases-per-token", "0"])


def ledgers(tmp_path, *pids: int) -> tuple[object, list[ForwardingLedger]]:
    """
    A fake C{ip_forward} holding 0, and a ledger for each of C{pids} on
    one state directory.
    """
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    return sysctl, [ForwardingLedger(str(tmp_path / "run"), str(sysctl), pid=p, namespace="ns") for p in pids]


def test_forwardingStaysOnWhileAnotherServerUsesIt(tmp_path):
    """Of two servers, the first to stop leaves ip_forward on; the last restores the original and removes the state file."""
    import os
    sysctl, (first, second) = ledgers(tmp_path, os.getpid(), os.getppid())
    assert first.acquire() == "0" and sysctl.read_text() == "1"
    assert second.acquire() == "0"
    assert first.release() is None and sysctl.read_text() == "1"
    assert second.release() == "0" and sysctl.read_text() == "0"
    assert os.listdir(tmp_path / "run") == ["lock"]


def test_forwardingOriginalSurvivesACrash(tmp_path):
    """A server killed without stopping leaves its record: the next one restores the original recorded there, not the 1 the dead one set; once the record is gone the value found is the original."""
    import os
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    sysctl, (crashed, restarted, other) = ledgers(tmp_path, dead.pid, os.getpid(), os.getppid())
    crashed.acquire()
    assert sysctl.read_text() == "1"
    assert restarted.acquire() == "0"
    assert restarted.release() == "0" and sysctl.read_text() == "0"
    sysctl.write_text("1\n")
    assert other.acquire() == "1"
    assert other.release() == "1" and sysctl.read_text() == "1"


def test_noNatStillClosesTheHostToClients(tmp_path):
    """With --no-nat the server still installs its table with the input filter (and removes it on stop), but leaves ip_forward alone."""
    from twisted.internet.defer import Deferred

    runner = RecordingRunner()
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    ledger = ForwardingLedger(str(tmp_path / "state"), str(sysctl), namespace="test")
    network = ServerNetwork(runner, "tether0", "198.18.100.1", "198.18.100.0/24", 1400, nat=False, deny=[],
                            forwarding=ledger)
    Deferred.fromCoroutine(network.start())
    (nft,) = [c for c in runner.commands if c[0] == "nft" and c[1] != "delete"]
    assert 'iifname "tether0" ip protocol != icmp drop' in nft[1] and "masquerade" not in nft[1]
    runner.commands.clear()
    Deferred.fromCoroutine(network.stop())
    assert runner.commands == [["nft", "delete", "table", "ip", natTable("tether0")]]
    assert sysctl.read_text() == "0\n" and not (tmp_path / "state").exists()
