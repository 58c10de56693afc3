"""
The C{gso} extension of the tether wire (docs/tether.md, section 3.1),
pure: the virtio-net header a TUN device opened with C{IFF_VNET_HDR} puts
in front of every packet, its checks, and the software fallback that turns
a GSO super-packet into plain IPv4 packets with complete checksums for a
peer (or a kernel) that cannot take it whole.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tether.wire import GSO, VNET_HDR_LEN

__all__ = ["GSO", "VNET_HDR_LEN", "PLAIN_HDR", "MIN_GSO_SIZE", "VnetHeader", "OffloadError", "checkHeader", "plainPackets",
           "isPlain", "tunMessages", "writeTun", "TunDevice", "VnetDevice"]


class TunDevice(Protocol):
    """
    A TUN device as the tether writes to it: a
    L{twisted.pair.tuntap.TuntapPort}, or a test's stand-in.
    """

    def write(self, packet: bytes, /) -> object:
        ...


@runtime_checkable
class VnetDevice(TunDevice, Protocol):
    """
    A TUN device opened with virtio-net headers
    (L{tether.protocol.OffloadTunPort}): every read and write starts with
    one, and it may be asked for GSO super-packets.
    """

    vnet: bool
    #: Whether the kernel may hand over super-packets now.
    offload: bool

    def writePlain(self, packet: bytes, /) -> int:
        """
        Write a complete IP packet, behind a header that says so.
        """

    def setOffload(self, on: bool, /) -> bool:
        """
        Ask the kernel for super-packets, or for none.

        @return: whether offload is now on.
        """


#: A header that says nothing: a complete packet, checksums done.
PLAIN_HDR = bytes(VNET_HDR_LEN)

NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_HDR = struct.Struct("<BBHHHH")

#: The smallest C{gso_size} a receiver takes: the IPv4 TCP default MSS
#: (RFC 879).  Smaller segments would let one 64 KiB message fan out into
#: tens of thousands of packets.
MIN_GSO_SIZE = 536
_TCP, _UDP = 6, 17


class OffloadError(ValueError):
    """
    A virtio-net header this side will not pass on; the message says why.
    """


@dataclass(frozen=True)
class VnetHeader:
    """
    The fields of C{struct virtio_net_hdr} (little-endian, as virtio 1.0
    and Linux on little-endian hosts).
    """

    flags: int = 0
    gsoType: int = GSO_NONE
    hdrLen: int = 0
    gsoSize: int = 0
    csumStart: int = 0
    csumOffset: int = 0

    @classmethod
    def parse(cls, data: bytes) -> VnetHeader:
        return cls(*_HDR.unpack_from(data))

    def pack(self) -> bytes:
        return _HDR.pack(self.flags, self.gsoType, self.hdrLen, self.gsoSize, self.csumStart, self.csumOffset)

    @property
    def plain(self) -> bool:
        """
        Whether the packet behind this header is complete as it stands.
        """
        return self.gsoType == GSO_NONE and not self.flags & NEEDS_CSUM


def checkHeader(header: VnetHeader, packet: bytes, minimum: int = MIN_GSO_SIZE) -> None:
    """
    Refuse what a well-behaved kernel never writes: unknown flags or GSO
    types, and offsets outside C{packet} (an IPv4 packet, checked
    separately), and a GSO size below C{minimum} or past the packet.

    @raise OffloadError: with the reason.
    """
    if header.flags & ~(NEEDS_CSUM | DATA_VALID):
        raise OffloadError(f"unknown flags {header.flags:#x}")
    kind = header.gsoType & ~GSO_ECN
    if kind not in (GSO_NONE, GSO_TCPV4, GSO_UDP_L4) or (kind == GSO_NONE and header.gsoType):
        raise OffloadError(f"unsupported GSO type {header.gsoType:#x}")
    if header.flags & NEEDS_CSUM and header.csumStart + header.csumOffset + 2 > len(packet):
        raise OffloadError("checksum offset outside the packet")
    if kind != GSO_NONE:
        if not header.flags & NEEDS_CSUM:
            raise OffloadError("GSO without a partial checksum")
        if not max(minimum, 1) <= header.gsoSize <= len(packet):
            raise OffloadError(f"bad GSO size {header.gsoSize}")
        protocol = packet[9] if len(packet) >= 20 else None
        if protocol != (_TCP if kind == GSO_TCPV4 else _UDP):
            raise OffloadError("GSO type does not match the IP protocol")


def checksum(data: bytes) -> int:
    """
    The Internet checksum (RFC 1071) of C{data}: the ones'-complement sum
    of 16-bit words is the number C{data} spells, modulo 0xFFFF.
    """
    if len(data) % 2:
        data += b"\0"
    folded = int.from_bytes(data, "big") % 0xFFFF
    return 0xFFFF - (folded or 0xFFFF) if any(data) else 0xFFFF


def _pseudo(ip: bytes, protocol: int, length: int) -> bytes:
    return ip[12:20] + bytes((0, protocol)) + length.to_bytes(2, "big")


def _ipHeader(ip: bytes, total: int, ident: int) -> bytes:
    header = bytearray(ip)
    header[2:4] = total.to_bytes(2, "big")
    header[4:6] = (ident & 0xFFFF).to_bytes(2, "big")
    header[10:12] = b"\0\0"
    header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header)


def plainPackets(header: VnetHeader, packet: bytes, minimum: int = MIN_GSO_SIZE) -> list[bytes]:
    """
    What the kernel would have handed over with no offloads: C{packet}
    finished (its partial checksum completed) or, for a GSO super-packet,
    cut into segments of C{gsoSize} payload bytes, each with its own IPv4
    header, TCP sequence number or UDP length, and checksums.

    @raise OffloadError: for a header L{checkHeader} refuses (with C{minimum}).
    """
    if header.plain:
        return [packet]
    checkHeader(header, packet, minimum)
    kind = header.gsoType & ~GSO_ECN
    if kind == GSO_NONE:
        start, at = header.csumStart, header.csumStart + header.csumOffset
        body = bytearray(packet)
        value = checksum(bytes(body[start:]))
        if value == 0 and packet[9] == _UDP:
            value = 0xFFFF
        body[at:at + 2] = value.to_bytes(2, "big")
        return [bytes(body)]
    ihl = (packet[0] & 0x0F) * 4
    ip = packet[:ihl]
    if kind == GSO_TCPV4:
        end = ihl + (packet[ihl + 12] >> 4) * 4
        protocol = _TCP
    else:
        end = ihl + 8
        protocol = _UDP
    transport, payload = packet[ihl:end], packet[end:]
    ident = int.from_bytes(ip[4:6], "big")
    seq = int.from_bytes(transport[4:8], "big")
    size = header.gsoSize
    offsets = range(0, len(payload), size) or range(1)
    segments = []
    for i, offset in enumerate(offsets):
        chunk = payload[offset:offset + size]
        head = bytearray(transport)
        if protocol == _TCP:
            head[4:8] = ((seq + offset) & 0xFFFFFFFF).to_bytes(4, "big")
            if offset + size < len(payload):
                head[13] &= ~0x09 & 0xFF  # FIN and PSH only on the last segment
            if i:
                head[13] &= ~0x80 & 0xFF  # CWR only on the first
        else:
            head[4:6] = (8 + len(chunk)).to_bytes(2, "big")
        at = 6 if protocol == _UDP else 16
        head[at:at + 2] = b"\0\0"
        length = len(head) + len(chunk)
        value = checksum(_pseudo(ip, protocol, length) + bytes(head) + chunk)
        if protocol == _UDP and value == 0:
            value = 0xFFFF
        head[at:at + 2] = value.to_bytes(2, "big")
        segments.append(_ipHeader(ip, ihl + length, ident + i) + bytes(head) + chunk)
    return segments


def isPlain(message: bytes) -> bool:
    """
    Whether the virtio-net header at the start of C{message} says the
    packet behind it is complete (no GSO, no partial checksum).
    """
    return not (message[0] & NEEDS_CSUM or message[1])


def tunMessages(data: bytes, vnet: bool, offload: bool) -> list[bytes]:
    """
    The data messages for what one TUN read returned.

    @param vnet: whether C{data} starts with a virtio-net header.
    @param offload: whether the link carries the C{gso} extension (the
        header and the super-packet go as they are) or not (plain packets).
    """
    if offload:
        if not vnet:
            return [PLAIN_HDR + data]
        header = VnetHeader.parse(data)
        if header.gsoType and header.gsoSize < MIN_GSO_SIZE:
            # The peer refuses such a header; our own kernel's small-MSS
            # super-packet is cut up here instead.
            return [PLAIN_HDR + p for p in plainPackets(header, data[VNET_HDR_LEN:], 1)]
        return [data]
    if not vnet:
        return [data]
    if isPlain(data):
        return [data[VNET_HDR_LEN:]]
    return plainPackets(VnetHeader.parse(data), data[VNET_HDR_LEN:])


def writeTun(tun, message: bytes, offload: bool) -> None:
    """
    Write a data message to C{tun}: as it is to a device with virtio-net
    headers (C{tun.vnet}) when the link carries them, else as plain packets,
    segmented here when the device cannot take the super-packet.

    @raise OSError: from the device.
    @raise OffloadError: for a header L{checkHeader} refuses.
    """
    vnet = getattr(tun, "vnet", False)
    writePlain = tun.writePlain if vnet else tun.write
    if not offload:
        writePlain(message)
        return
    if vnet:
        try:
            tun.write(message)
            return
        except OSError as e:
            # A kernel without this GSO type refuses it: cut it up here.
            if e.errno != errno.EINVAL or isPlain(message):
                raise
    for packet in plainPackets(VnetHeader.parse(message), message[VNET_HDR_LEN:]):
        writePlain(packet)
