"""
The tether wire format and the pure helpers around it: messages, base64
data, IPv4 headers, routes, NAT rules, backoff.
"""

from __future__ import annotations

import pytest

from tests.tether_support import ip4
from tether.client import Backoff
from tether.netconf import parseRouteGet, tableRules, tunnelRoutes
from tether.wire import (
    MAX_CONTROL,
    Close,
    Hello,
    ProtocolError,
    Welcome,
    decodeText,
    encodePacketText,
    ipv4Addresses,
    parseHello,
    parseWelcome,
)


def test_helloRoundTrip():
    """A hello survives encoding and parsing, session and text mode included."""
    hello = Hello("laptop", "s3cret", "A" * 24, binary=False)
    control, packet = decodeText(hello.encode())
    assert packet is None
    assert parseHello(control) == hello


@pytest.mark.parametrize("message, code", [
    ({"type": "hello", "version": 2, "name": "a", "token": "t"}, Close.VERSION),
    ({"type": "hello", "version": 1, "name": "a b", "token": "t"}, Close.BAD_MESSAGE),
    ({"type": "hello", "version": 1, "name": "a", "token": ""}, Close.BAD_MESSAGE),
    ({"type": "hello", "version": 1, "name": "a", "token": "t", "session": "short"}, Close.BAD_MESSAGE),
    ({"type": "ping", "version": 1}, Close.BAD_MESSAGE),
])
def test_badHelloRefused(message, code):
    """A hello of another version, or with a bad name, token or session, is refused with its close code."""
    with pytest.raises(ProtocolError) as e:
        parseHello(message)
    assert e.value.code == code


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_nonIntegerVersionRefused(version):
    """A hello whose version is not a JSON integer (true, 1.0, "1", missing) is refused as malformed."""
    with pytest.raises(ProtocolError) as e:
        parseHello({"type": "hello", "version": version, "name": "a", "token": "t"})
    assert e.value.code == Close.BAD_MESSAGE


def test_base64TextData():
    """A text message that is not JSON is a base64 packet; malformed base64 is refused."""
    packet = ip4("198.18.100.2", "198.18.2.2")
    assert decodeText(encodePacketText(packet)) == (None, packet)
    with pytest.raises(ProtocolError) as e:
        decodeText("not base64!")
    assert e.value.code == Close.BAD_MESSAGE


def test_controlLimits():
    """Oversized control messages are refused as too big, non-object JSON as bad."""
    with pytest.raises(ProtocolError) as e:
        decodeText("{" + " " * MAX_CONTROL + "}")
    assert e.value.code == Close.TOO_BIG
    with pytest.raises(ProtocolError) as e:
        decodeText("{broken")
    assert e.value.code == Close.BAD_MESSAGE


def test_welcomeRoundTripAndRanges():
    """A welcome parses back to itself; an MTU below IPv4's minimum is refused."""
    welcome = Welcome("198.18.100.2", 24, "198.18.100.1", 1400, "S" * 24, routes=("0.0.0.0/0",))
    assert parseWelcome(decodeText(welcome.encode())[0]) == welcome
    with pytest.raises(ProtocolError):
        parseWelcome({**decodeText(welcome.encode())[0], "mtu": 100})


def test_ipv4Addresses():
    """Source and destination come from well-formed IPv4 only: not IPv6, not truncated, not mislabelled."""
    packet = ip4("198.18.100.2", "198.18.2.2")
    assert ipv4Addresses(packet) == (bytes([198, 18, 100, 2]), bytes([198, 18, 2, 2]))
    assert ipv4Addresses(bytes([0x60]) + packet[1:]) is None
    assert ipv4Addresses(packet[:19]) is None
    assert ipv4Addresses(packet + b"extra") is None


def test_defaultRouteSplitInHalves():
    """A default route is installed as two /1 halves so the original default stays; others as given."""
    assert tunnelRoutes("0.0.0.0/0") == ["0.0.0.0/1", "128.0.0.0/1"]
    assert tunnelRoutes("198.18.2.0/24") == ["198.18.2.0/24"]


def test_parseRouteGet():
    """The original gateway and device come from `ip route get`; a direct link has no gateway."""
    assert parseRouteGet("198.18.1.1 via 198.18.0.2 dev wlan0 src 198.18.0.1 uid 0\n    cache\n") == ("198.18.0.2", "wlan0")
    assert parseRouteGet("198.18.0.2 dev wlan0 src 198.18.0.1 uid 0") == (None, "wlan0")
    with pytest.raises(ValueError):
        parseRouteGet("RTNETLINK answers: Network is unreachable")


def test_natRulesOneTransaction():
    """NAT is one nft command: masquerade for the pool, denied networks dropped, no new connections inward, the host's services closed to clients."""
    argv = tableRules("tether0", "198.18.100.0/24", ["198.18.9.0/24"])
    assert argv is not None and argv[0] == "nft" and len(argv) == 2
    script = argv[1]
    assert 'ip saddr 198.18.100.0/24 oifname != "tether0" masquerade' in script
    assert 'iifname "tether0" ip daddr { 198.18.9.0/24 } drop' in script
    assert 'oifname "tether0" ct state new drop' in script
    assert 'input iifname "tether0" ip protocol != icmp drop' in script


def test_inputFilterWithoutNatUnlessAllowed():
    """Without NAT the table still closes the host's services to clients (and drops denied networks), but neither masquerades nor refuses inward connections; allowing the server leaves no input rule, and nothing to do leaves no table."""
    argv = tableRules("tether0", "198.18.100.0/24", ["198.18.9.0/24"], nat=False)
    assert argv is not None
    script = argv[1]
    assert 'input iifname "tether0" ip protocol != icmp drop' in script
    assert 'ip daddr { 198.18.9.0/24 } drop' in script
    assert "masquerade" not in script and "ct state new" not in script
    allowed = tableRules("tether0", "198.18.100.0/24", [], nat=True, allowServer=True)
    assert allowed is not None and "input" not in allowed[1] and "masquerade" in allowed[1]
    assert tableRules("tether0", "198.18.100.0/24", [], nat=False, allowServer=True) is None


def test_backoffDoublesToMaximumAndResets():
    """Reconnect delays double up to the maximum (jitter at most 25%) and start over after a reset."""
    backoff = Backoff(0.5, 4.0, rng=lambda: 0.0)
    assert [backoff.delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.delay() == 0.5
    assert Backoff(1.0, 4.0, rng=lambda: 1.0).delay() == 1.25
