"""
The tether's C{gso} extension in memory: negotiation in hello and welcome,
virtio-net header checks, the software segmentation and checksums for
links and devices without offloads, and the server's and client's packet
paths with super-packets.  No socket, no real TUN.
"""

from __future__ import annotations

import os
import struct

import pytest
from twisted.internet.task import Clock

from tests.tether_support import ListTun, connect, makeServer
from tests.test_tether_client import WELCOME, makeClient, openLink
from tether.offload import (
    DATA_VALID,
    GSO_ECN,
    GSO_TCPV4,
    GSO_UDP_L4,
    NEEDS_CSUM,
    PLAIN_HDR,
    OffloadError,
    VnetHeader,
    checkHeader,
    checksum,
    plainPackets,
    tunMessages,
    writeTun,
)
from tether.wire import (
    GSO,
    MAX_MESSAGE,
    MAX_PACKET,
    VNET_HDR_LEN,
    Close,
    Hello,
    ProtocolError,
    Welcome,
    decodeText,
    parseHello,
    parseWelcome,
)

LAPTOP, FAR = "198.18.100.2", "198.18.2.2"


def _addr(a: str) -> bytes:
    return bytes(int(p) for p in a.split("."))


def _slowChecksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(src: str, dst: str, proto: int, body: bytes, ident: int = 100) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, 0x4000, 64, proto, 0,
                         _addr(src), _addr(dst))
    header = header[:10] + checksum(header).to_bytes(2, "big") + header[12:]
    return header + body


def superTCP(payload: bytes, src: str = LAPTOP, dst: str = FAR, flags: int = 0x18 | 0x01 | 0x80,
             seq: int = 0xFFFFF000) -> bytes:
    """
    A TCP super-packet as a kernel hands it over: IPv4 total length of the
    whole, TCP checksum field holding the pseudo-header sum only.
    """
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7, 5 << 4, flags, 512, 0, 0)
    return _ip(src, dst, 6, tcp + payload)


def validTCP(segment: bytes) -> bool:
    ihl = (segment[0] & 15) * 4
    pseudo = segment[12:20] + bytes((0, 6)) + (len(segment) - ihl).to_bytes(2, "big")
    return _slowChecksum(segment[:ihl]) == 0 and _slowChecksum(pseudo + segment[ihl:]) == 0


def gsoHeader(size: int, kind: int = GSO_TCPV4) -> bytes:
    return VnetHeader(NEEDS_CSUM, kind, 40, size, 20, 16 if kind == GSO_TCPV4 else 6).pack()


class VnetTun(ListTun):
    """
    A TUN device with virtio-net headers, as L{tether.protocol.OffloadTunPort}.
    """

    vnet = True
    offload = False

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.offloadCalls: list[bool] = []

    def write(self, message: bytes) -> int:
        if self.refuse and message[1]:
            raise OSError(22, "Invalid argument")
        return super().write(message)

    def writePlain(self, packet: bytes) -> int:
        return self.write(PLAIN_HDR + packet)

    def setOffload(self, on: bool) -> bool:
        self.offloadCalls.append(on)
        self.offload = on
        return on


def test_tinyGsoSizeRefused():
    """A gso_size below 536 (the IPv4 TCP default MSS) is refused rather than fanned out into thousands of packets."""
    packet = superTCP(bytes(60000))
    with pytest.raises(OffloadError, match="bad GSO size 1"):
        checkHeader(VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 1, 20, 16), packet)
    with pytest.raises(OffloadError, match="bad GSO size 535"):
        plainPackets(VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 535, 20, 16), packet)
    checkHeader(VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 536, 20, 16), packet)


def test_senderSegmentsItsKernelsTinyGsoSize():
    """A super-packet our own kernel made with a gso_size under 536 is sent as plain packets, not as a header the peer refuses."""
    data = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 500, 20, 16).pack() + superTCP(bytes(1200))
    messages = tunMessages(data, vnet=True, offload=True)
    assert [len(m) for m in messages] == [VNET_HDR_LEN + 540, VNET_HDR_LEN + 540, VNET_HDR_LEN + 240]
    assert all(m[:VNET_HDR_LEN] == PLAIN_HDR and validTCP(m[VNET_HDR_LEN:]) for m in messages)


def test_checksumIsRFC1071():
    """The modulo-0xFFFF checksum equals the word-by-word ones'-complement sum, odd lengths included."""
    for size in (1, 2, 3, 20, 1401, 65535):
        data = os.urandom(size)
        assert checksum(data) == _slowChecksum(data)
    assert checksum(b"\xff\xff\x00\x00") == _slowChecksum(b"\xff\xff\x00\x00") == 0


def test_tcpSuperPacketSegmented():
    """A TCPv4 super-packet becomes MSS-sized segments with their own lengths, IDs, sequence numbers, flags and valid checksums."""
    payload = os.urandom(3000)
    packet = superTCP(payload)
    segments = plainPackets(VnetHeader.parse(gsoHeader(1000)), packet)
    assert [len(s) for s in segments] == [1040, 1040, 1040]
    assert all(validTCP(s) for s in segments)
    assert b"".join(s[40:] for s in segments) == payload
    assert [int.from_bytes(s[4:6], "big") for s in segments] == [100, 101, 102]
    assert [int.from_bytes(s[24:28], "big") for s in segments] == [0xFFFFF000, 0xFFFFF3E8, 0xFFFFF7D0]
    assert [s[33] for s in segments] == [0x90, 0x10, 0x19]


def test_udpSuperPacketSegmented():
    """A UDP (USO) super-packet becomes datagrams of gso_size payload bytes with their own UDP lengths and checksums."""
    payload = os.urandom(2500)
    packet = _ip(LAPTOP, FAR, 17, struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload)
    header = VnetHeader(NEEDS_CSUM, GSO_UDP_L4, 28, 1200, 20, 6)
    segments = plainPackets(header, packet)
    assert [len(s) - 28 for s in segments] == [1200, 1200, 100]
    for s in segments:
        assert int.from_bytes(s[24:26], "big") == len(s) - 20
        pseudo = s[12:20] + bytes((0, 17)) + (len(s) - 20).to_bytes(2, "big")
        assert _slowChecksum(s[:20]) == 0 and _slowChecksum(pseudo + s[20:]) == 0


def test_partialChecksumCompleted():
    """A packet with only a partial checksum (NEEDS_CSUM, no GSO) gets its checksum completed and nothing else changed."""
    packet = bytearray(superTCP(b"hello"))
    pseudo = packet[12:20] + bytes((0, 6)) + (len(packet) - 20).to_bytes(2, "big")
    packet[36:38] = (0xFFFF - checksum(bytes(pseudo))).to_bytes(2, "big")  # the folded pseudo-header sum
    (done,) = plainPackets(VnetHeader(NEEDS_CSUM, 0, 0, 0, 20, 16), bytes(packet))
    assert validTCP(done) and done[:36] == packet[:36] and done[38:] == packet[38:]
    assert plainPackets(VnetHeader(DATA_VALID), bytes(packet)) == [bytes(packet)]


@pytest.mark.parametrize("header, why", [
    (VnetHeader(0x10), "unknown flags"),
    (VnetHeader(NEEDS_CSUM, 4, 40, 1000, 20, 16), "unsupported GSO type"),
    (VnetHeader(0, GSO_TCPV4, 40, 1000), "without a partial checksum"),
    (VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 0, 20, 16), "bad GSO size"),
    (VnetHeader(NEEDS_CSUM, 0, 0, 0, 5000, 16), "outside the packet"),
    (VnetHeader(NEEDS_CSUM, GSO_UDP_L4, 28, 1000, 20, 6), "does not match"),
])
def test_badHeadersRefused(header, why):
    """Headers a kernel would not write (unknown flags or GSO types, bad sizes or offsets, a type not matching the protocol) are refused with a reason."""
    with pytest.raises(OffloadError, match=why):
        checkHeader(header, superTCP(bytes(3000)))
    checkHeader(VnetHeader(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 40, 1000, 20, 16), superTCP(bytes(3000)))


def test_offloadNegotiatedInHelloAndWelcome():
    """A hello offers gso, unknown extensions are ignored, a non-list is refused; the welcome names what was accepted."""
    hello = Hello("lap", "secret", offload=(GSO,))
    control, _ = decodeText(hello.encode())
    assert control["offload"] == ["gso"] and parseHello(control) == hello
    assert parseHello({**control, "offload": ["zstd", "gso"]}).offload == (GSO,)
    assert "offload" not in decodeText(Hello("lap", "secret").encode())[0]
    with pytest.raises(ProtocolError) as e:
        parseHello({**control, "offload": "gso"})
    assert e.value.code == Close.BAD_MESSAGE
    welcome = Welcome("198.18.100.2", 24, "198.18.100.1", 1400, "S" * 24, offload=(GSO,))
    assert parseWelcome(decodeText(welcome.encode())[0]).offload == (GSO,)
    assert parseWelcome(decodeText(WELCOME.encode())[0]).offload == ()
    assert MAX_MESSAGE >= 4 * ((MAX_PACKET + VNET_HDR_LEN + 2) // 3)


def serverWelcome(server, offload=(GSO,), name="lap", token="secret"):
    link, ws = connect(server)
    link.textMessageReceived(Hello(name, token, offload=offload).encode())
    (welcome,) = ws.controls()
    return link, ws, welcome


def test_serverAcceptsGsoOnlyWhenOfferedAndEnabled():
    """The server accepts gso when the hello offers it, and not when it is not offered or the server runs with --no-offload."""
    assert serverWelcome(makeServer(Clock()))[2]["offload"] == ["gso"]
    assert "offload" not in serverWelcome(makeServer(Clock()), offload=())[2]
    assert "offload" not in serverWelcome(makeServer(Clock(), offload=False))[2]


def test_serverChecksInnerHeaderOfSuperPackets():
    """With gso, the policy applies to the super-packet's IPv4 header: a spoofed source or a bad header is dropped and counted; a good one goes to a vnet TUN whole."""
    server = makeServer(Clock())
    server.tun = VnetTun()
    link, _, _ = serverWelcome(server)
    good = gsoHeader(1000) + superTCP(bytes(3000))
    link.bytesMessageReceived(gsoHeader(1000) + superTCP(bytes(3000), src="198.18.100.77"))
    link.bytesMessageReceived(VnetHeader(0x10).pack() + superTCP(bytes(3000)))
    link.bytesMessageReceived(PLAIN_HDR[:4])
    link.bytesMessageReceived(good)
    assert server.tun.written == [good]
    assert link.lease.counters.drops == {"spoofed source": 1, "bad offload header": 1, "not IPv4": 1}


def test_serverSegmentsWhereTheTunCannotTakeSuperPackets():
    """A super-packet for a TUN without virtio-net headers, or one whose kernel refuses its GSO type, is written as plain segments."""
    for tun in (ListTun(), VnetTun(refuse=True)):
        server = makeServer(Clock())
        server.tun = tun
        link, _, _ = serverWelcome(server)
        link.bytesMessageReceived(gsoHeader(1000) + superTCP(bytes(2500)))
        written = [w[VNET_HDR_LEN:] if isinstance(tun, VnetTun) else w for w in tun.written]
        assert [len(w) for w in written] == [1040, 1040, 540] and all(validTCP(w) for w in written)
        assert link.lease.counters.drops == {}


def test_serverFromTunWholeOrSegmentedPerLink():
    """A super-packet the TUN reads goes whole to a gso link and as segments to a plain one."""
    server = makeServer(Clock())
    server.tun = VnetTun()
    _, gsoWS, _ = serverWelcome(server)
    _, plainWS, _ = serverWelcome(server, offload=(), name="other", token="pw")
    toGso = gsoHeader(1000) + superTCP(bytes(2000), src=FAR, dst="198.18.100.2")
    toPlain = gsoHeader(1000) + superTCP(bytes(2000), src=FAR, dst="198.18.100.3")
    server.fromTun(toGso)
    server.fromTun(toPlain)
    assert gsoWS.packets() == [toGso]
    assert [len(p) for p in plainWS.packets()] == [1040, 1040] and all(validTCP(p) for p in plainWS.packets())
    server.fromTun(PLAIN_HDR + superTCP(b"x", src=FAR, dst="198.18.100.3"))
    assert plainWS.packets()[-1] == superTCP(b"x", src=FAR, dst="198.18.100.3")


def test_clientToClientSuperPacketWholeOrSegmented():
    """Between clients (isolation off) a checked super-packet goes whole to a gso link and as valid segments to a plain one; a bad header reaches neither."""
    server = makeServer(Clock(), isolate=False)
    server.tun = VnetTun()
    sender, _, _ = serverWelcome(server)
    _, gsoWS, _ = serverWelcome(server, name="other", token="pw")
    toGso = gsoHeader(1000) + superTCP(bytes(2000), dst="198.18.100.3")
    sender.bytesMessageReceived(toGso)
    assert gsoWS.packets() == [toGso]
    plainServer = makeServer(Clock(), isolate=False)
    plainServer.tun = VnetTun()
    sender, _, _ = serverWelcome(plainServer)
    _, plainWS, _ = serverWelcome(plainServer, offload=(), name="other", token="pw")
    sender.bytesMessageReceived(gsoHeader(1000) + superTCP(bytes(2000), dst="198.18.100.3"))
    sender.bytesMessageReceived(gsoHeader(100) + superTCP(bytes(2000), dst="198.18.100.3"))
    assert [len(p) for p in plainWS.packets()] == [1040, 1040] and all(validTCP(p) for p in plainWS.packets())
    assert sender.lease.counters.drops == {"bad offload header": 1}
    assert server.tun.written == plainServer.tun.written == []


def test_clientTurnsOffloadOnWhenWelcomedWithGso():
    """The client offers gso, turns the TUN's offloads on only when the welcome accepts it, and then passes super-packets whole both ways."""
    client = makeClient()
    client.tun = VnetTun()
    link, ws = openLink(client)
    assert ws.controls()[0]["offload"] == ["gso"]
    link.textMessageReceived(Welcome("198.18.100.2", 24, "198.18.100.1", 1400, "S" * 24, offload=(GSO,)).encode())
    assert client.tun.offloadCalls == [True] and link.offload
    data = gsoHeader(1000) + superTCP(bytes(3000))
    client.fromTun(data)
    assert ws.packets() == [data]
    reply = gsoHeader(1000) + superTCP(bytes(2000), src=FAR, dst=LAPTOP)
    link.bytesMessageReceived(reply)
    assert client.tun.written == [reply]


def test_clientWithoutGsoSendsPlainPackets():
    """Welcomed without gso, the client leaves offloads off, strips headers, segments what the kernel still hands over, and writes plain packets behind an empty header."""
    client = makeClient()
    client.tun = VnetTun()
    link, ws = openLink(client)
    link.textMessageReceived(WELCOME.encode())
    assert client.tun.offloadCalls == [] and not link.offload
    client.fromTun(gsoHeader(1000) + superTCP(bytes(2000)))
    client.fromTun(PLAIN_HDR + b"\x60" + bytes(39))
    assert [len(p) for p in ws.packets()] == [1040, 1040]
    assert client.counters.drops == {"not IPv4": 1}
    reply = superTCP(b"hi", src=FAR, dst=LAPTOP)
    link.bytesMessageReceived(reply)
    assert client.tun.written == [PLAIN_HDR + reply]


def test_tunMessagesAndWriteTunWithoutVnet():
    """On a device without virtio-net headers a gso link still gets an (empty) header, and plain links get packets as read."""
    packet = superTCP(b"x")
    assert tunMessages(packet, vnet=False, offload=True) == [PLAIN_HDR + packet]
    assert tunMessages(packet, vnet=False, offload=False) == [packet]
    tun = ListTun()
    writeTun(tun, PLAIN_HDR + packet, offload=True)
    writeTun(tun, packet, offload=False)
    assert tun.written == [packet, packet]

