"""
The tether's WebSocket masker gives exactly the bytes RFC 6455 defines.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import frame_protocol

from tether import masking


class ByteMasker:
    """
    RFC 6455, section 5.3, literally: byte i XOR key[i mod 4], the key
    going on where the previous piece of the payload stopped.
    """

    def __init__(self, key: bytes) -> None:
        self.key = bytes(key)

    def process(self, data: bytes) -> bytearray:
        out = bytearray(b ^ self.key[i % 4] for i, b in enumerate(data))
        turn = len(data) % 4
        self.key = self.key[turn:] + self.key[:turn]
        return out


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=4), st.lists(st.binary(max_size=300), max_size=6))
def test_sameBytesAsTheDefinition(key, pieces):
    """Masking successive pieces of one payload matches the byte-by-byte XOR, key rotation included."""
    ours, reference = masking.WordMasker(key), ByteMasker(key)
    for piece in pieces:
        assert ours.process(piece) == reference.process(piece)


def test_installedInWsproto():
    """Importing the tether's protocol module puts the fast masker in wsproto's place, and it unmasks what it masked."""
    import tether.protocol  # noqa: F401

    assert frame_protocol.XorMaskerSimple is masking.WordMasker
    data = bytes(range(256)) * 257
    key = b"\x01\x02\x03\x04"
    assert masking.WordMasker(key).process(masking.WordMasker(key).process(data)) == data
