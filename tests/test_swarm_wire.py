"""
The peer wire's framer (swarm.wire): whole messages out whatever the
chunking, limits enforced from the length prefix alone, and nothing but
WireError for hostile bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm import wire

HASH = bytes(range(20))
PEER = b"-XX0000-" + bytes(12)


def _stream() -> bytes:
    return b"".join([
        wire.handshake(HASH, PEER),
        wire.bitfield([True, False, True]),
        wire.have(2),
        wire.encode(wire.INTERESTED),
        wire.KEEPALIVE,
        wire.request(wire.REQUEST, 1, 16384, 16384),
        wire.piece(1, 0, b"xyz"),
        wire.request(wire.CANCEL, 1, 16384, 16384),
    ])


def _kinds(items):
    return [getattr(i, "kind", "hs") for i in items]


def test_wholeStreamParses():
    """A handshake followed by every kind of message comes out as those messages, with their fields."""
    items = wire.Framer(1 << 15).feed(_stream())
    assert _kinds(items) == ["hs", wire.BITFIELD, wire.HAVE, wire.INTERESTED, None, wire.REQUEST, wire.PIECE, wire.CANCEL]
    assert items[0].infoHash == HASH and items[0].peerId == PEER
    assert wire.parseBitfield(items[1].data, 3) == [True, False, True]
    assert (items[5].index, items[5].begin, items[5].length) == (1, 16384, 16384)
    assert (items[6].index, items[6].begin, items[6].data) == (1, 0, b"xyz")


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_anyChunkingGivesTheSameMessages(cuts):
    """Fed in arbitrary pieces, the framer yields exactly the messages it yields for the whole stream."""
    data = _stream()
    framer = wire.Framer(1 << 15)
    out, pos = [], 0
    for n in cuts:
        out += framer.feed(data[pos:pos + n])
        pos += n
    out += framer.feed(data[pos:])
    assert out == wire.Framer(1 << 15).feed(data)


def test_oversizedPrefixRefusedBeforeItsBody():
    """A length prefix over the limit is refused as soon as its four bytes arrive."""
    framer = wire.Framer(1000)
    framer.feed(wire.handshake(HASH, PEER))
    with pytest.raises(wire.WireError, match="over the limit"):
        framer.feed(struct.pack(">I", 1001))


def test_encryptedHandshakeRefused():
    """A first byte that is not 19 (an MSE-encrypted or foreign protocol) is refused at once."""
    with pytest.raises(wire.WireError, match="not a BitTorrent handshake"):
        wire.Framer(1000).feed(b"\x8a")


@pytest.mark.parametrize("kind,payload", [(wire.HAVE, b"\0\0\0"), (wire.REQUEST, bytes(11)), (wire.CHOKE, b"x"), (wire.PIECE, bytes(7))])
def test_badPayloadSizesRefused(kind, payload):
    """A message whose payload has the wrong size for its kind is refused."""
    framer = wire.Framer(1000)
    framer.feed(wire.handshake(HASH, PEER))
    with pytest.raises(wire.WireError):
        framer.feed(wire.encode(kind, payload))


def test_bitfieldSpareBitsAndLengthChecked():
    """A bitfield of the wrong length, or with a bit set past the last piece, is refused."""
    with pytest.raises(wire.WireError, match="bytes for"):
        wire.parseBitfield(b"\xff\xff", 3)
    with pytest.raises(wire.WireError, match="past the last piece"):
        wire.parseBitfield(b"\xf0", 3)


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=2000))
def test_fuzzFramer(data, limit):
    """Any bytes after a handshake give messages within the limit, or WireError; nothing else."""
    framer = wire.Framer(limit)
    framer.feed(wire.handshake(HASH, PEER))
    try:
        for m in framer.feed(data):
            assert len(m.data) <= limit
    except wire.WireError:
        pass


@given(st.lists(st.booleans(), min_size=1, max_size=100))
def test_bitfieldRoundTrip(bits):
    """A bitfield encodes and parses back to the same pieces."""
    (m,) = wire.Framer(1000).feed(wire.handshake(HASH, PEER) + wire.bitfield(bits))[1:]
    assert wire.parseBitfield(m.data, len(bits)) == bits
