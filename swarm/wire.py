"""
The peer wire protocol's bytes (BEP 3), with no transport: the handshake,
then length-prefixed messages.

L{Framer} takes bytes as they arrive and returns whole messages; it never
holds more than one message of at most C{maxLength} bytes plus what has
arrived after it, and refuses a length prefix over C{maxLength} as soon as
its four bytes are in (the connection is then closed, nothing allocated).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTOCOL = b"BitTorrent protocol"
HANDSHAKE_LENGTH = 1 + len(PROTOCOL) + 8 + 20 + 20
#: Blocks are requested and served 16 KiB at a time (BEP 3: 2^14).
BLOCK = 1 << 14
#: The largest block this peer serves; bigger requests close the
#: connection, as BEP 3 says clients commonly do past 2^17.
MAX_REQUEST = 1 << 17

CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE, CANCEL, PORT = range(10)
NAMES = {
    CHOKE: "choke", UNCHOKE: "unchoke", INTERESTED: "interested", NOT_INTERESTED: "not interested",
    HAVE: "have", BITFIELD: "bitfield", REQUEST: "request", PIECE: "piece", CANCEL: "cancel", PORT: "port",
}
_NO_PAYLOAD = (CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED)
_FIXED = {HAVE: 4, REQUEST: 12, CANCEL: 12, PORT: 2}


class WireError(ValueError):
    """
    Bytes that break the peer wire protocol; the message says what.
    """


@dataclass(frozen=True)
class Handshake:
    reserved: bytes
    infoHash: bytes
    peerId: bytes


@dataclass(frozen=True)
class Message:
    """
    One message: C{kind} is None for a keep-alive; C{index}, C{begin},
    C{length} are set for have/request/cancel/piece; C{data} holds a
    bitfield or a piece's block (or an unknown message's payload).
    """

    kind: int | None
    index: int = 0
    begin: int = 0
    length: int = 0
    data: bytes = b""


def handshake(infoHash: bytes, peerId: bytes) -> bytes:
    """
    Our handshake: no extension bits set.
    """
    return bytes([len(PROTOCOL)]) + PROTOCOL + bytes(8) + infoHash + peerId


def parseHandshake(data: bytes) -> Handshake:
    """
    @raise WireError: if C{data} is not a BitTorrent handshake (an
        encrypted one, MSE, is refused here too).
    """
    if data[0] != len(PROTOCOL) or data[1:20] != PROTOCOL:
        raise WireError("not a BitTorrent handshake (encrypted or another protocol)")
    return Handshake(data[20:28], data[28:48], data[48:68])


def parsePayload(kind: int, payload: bytes) -> Message:
    """
    A message from its id and payload.

    @raise WireError: if the payload's size is wrong for its kind.
    """
    if kind in _NO_PAYLOAD:
        if payload:
            raise WireError(f"{NAMES[kind]} with a {len(payload)}-byte payload")
        return Message(kind)
    if kind in _FIXED:
        if len(payload) != _FIXED[kind]:
            raise WireError(f"{NAMES[kind]} of {len(payload)} bytes, not {_FIXED[kind]}")
        if kind == HAVE:
            return Message(kind, index=struct.unpack(">I", payload)[0])
        if kind == PORT:
            return Message(kind, index=struct.unpack(">H", payload)[0])
        index, begin, length = struct.unpack(">III", payload)
        return Message(kind, index=index, begin=begin, length=length)
    if kind == PIECE:
        if len(payload) < 8:
            raise WireError(f"piece of {len(payload)} bytes, shorter than its header")
        index, begin = struct.unpack_from(">II", payload)
        return Message(kind, index=index, begin=begin, length=len(payload) - 8, data=payload[8:])
    # BITFIELD, and kinds this peer does not speak (extensions): kept whole.
    return Message(kind, data=payload)


class Framer:
    """
    Bytes in, handshake and messages out.

    @ivar maxLength: the largest message (id and payload) accepted.
    """

    def __init__(self, maxLength: int) -> None:
        self.maxLength = maxLength
        self._buffer = bytearray()
        self.handshake: Handshake | None = None

    def feed(self, data: bytes) -> list[Handshake | Message]:
        """
        The handshake and messages completed by C{data}, in order.

        @raise WireError: on the first byte that breaks the protocol; the
            caller closes the connection.
        """
        self._buffer += data
        buf = self._buffer
        out: list[Handshake | Message] = []
        pos = 0
        if self.handshake is None:
            if len(buf) and buf[0] != len(PROTOCOL):
                raise WireError("not a BitTorrent handshake (encrypted or another protocol)")
            if len(buf) < HANDSHAKE_LENGTH:
                return out
            self.handshake = parseHandshake(bytes(buf[:HANDSHAKE_LENGTH]))
            out.append(self.handshake)
            pos = HANDSHAKE_LENGTH
        while len(buf) - pos >= 4:
            (length,) = struct.unpack_from(">I", buf, pos)
            if length > self.maxLength:
                raise WireError(f"message of {length} bytes, over the limit of {self.maxLength}")
            if len(buf) - pos - 4 < length:
                break
            if length == 0:
                out.append(Message(None))
            elif buf[pos + 4] == PIECE and length >= 9:
                index, begin = struct.unpack_from(">II", buf, pos + 5)
                block = bytes(buf[pos + 13:pos + 4 + length])
                out.append(Message(PIECE, index=index, begin=begin, length=len(block), data=block))
            else:
                kind = buf[pos + 4]
                out.append(parsePayload(kind, bytes(buf[pos + 5:pos + 4 + length])))
            pos += 4 + length
        del buf[:pos]
        return out


def encode(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


KEEPALIVE = b"\0\0\0\0"


def have(index: int) -> bytes:
    return encode(HAVE, struct.pack(">I", index))


def request(kind: int, index: int, begin: int, length: int) -> bytes:
    """
    A request or a cancel.
    """
    return encode(kind, struct.pack(">III", index, begin, length))


def piece(index: int, begin: int, block: bytes) -> bytes:
    return struct.pack(">IBII", len(block) + 9, PIECE, index, begin) + block


def bitfield(pieces: list[bool]) -> bytes:
    """
    The bitfield message of C{pieces}: bit 7 of byte 0 is piece 0, spare
    bits zero.
    """
    out = bytearray((len(pieces) + 7) // 8)
    for i, got in enumerate(pieces):
        if got:
            out[i >> 3] |= 0x80 >> (i & 7)
    return encode(BITFIELD, bytes(out))


def parseBitfield(data: bytes, count: int) -> list[bool]:
    """
    @raise WireError: if C{data} is not C{count} bits long (rounded up to
        whole bytes) or sets a spare bit.
    """
    if len(data) != (count + 7) // 8:
        raise WireError(f"bitfield of {len(data)} bytes for {count} pieces")
    bits = [bool(data[i >> 3] & (0x80 >> (i & 7))) for i in range(count)]
    for i in range(count, len(data) * 8):
        if data[i >> 3] & (0x80 >> (i & 7)):
            raise WireError("bitfield sets a bit past the last piece")
    return bits
