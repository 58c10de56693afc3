"""
Log lines name peers as C{ADDRESS:PORT [user]} (issue 13), as pyftpdlib
does and BFTP already does: the tether server's connect, disconnect and
close lines, and its IPv6 peers, whose host still reaches the guess
throttle without brackets.
"""

from __future__ import annotations

from twisted.internet.address import IPv6Address
from twisted.internet.task import Clock

from tests.tether_support import FakeRequest, Logged, connect, formatted, lose, makeServer, welcomed
from tether.wire import Close, Hello, ProtocolError


def test_tetherServerNamesItsClientsByAddressPortAndToken():
    """Connect, close and disconnect lines of the tether server read ADDRESS:PORT [name]."""
    server = makeServer(Clock())
    with Logged() as events:
        link, _, welcome = welcomed(server)
        link.refuse(ProtocolError(Close.TIMEOUT, "no ping answered"))
        lose(link)
    text = formatted(events)
    assert f"198.18.0.1:40000 [lap] connected: address {welcome['address']}, session" in text
    assert "closing link to 198.18.0.1:40000 [lap]: 4408 no ping answered" in text
    assert f"198.18.0.1:40000 [lap] disconnected (address {welcome['address']})" in text
    assert "IPv4Address" not in text


def test_tetherServerBracketsIPv6Peers():
    """An IPv6 client is [HOST]:PORT in the log, and its wrong token is counted for the bare HOST."""
    server = makeServer(Clock())
    hosts = []
    check = server.checker.requestAvatarId

    def recording(credentials):
        hosts.append(credentials.address)
        return check(credentials)

    server.checker.requestAvatarId = recording
    request = FakeRequest()
    request._address = IPv6Address("TCP", "2001:db8::7", 40001)
    with Logged() as events:
        link, _ = connect(server, request)
        link.textMessageReceived(Hello("lap", "wrong").encode())
    assert "refused [2001:db8::7]:40001: authentication failed" in formatted(events)
    assert hosts == ["2001:db8::7"]
