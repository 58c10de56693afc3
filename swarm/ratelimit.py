"""
Upload and download rate limits for a peer: one L{RateLimit} a direction,
shared by every connection of every torrent of one L{swarm.client.Peer}
(a byte is a token of L{coursenet.bucket.TokenBucket}).

Uploading, a connection sends a block, takes its bytes from the bucket and,
if that overdraws it, serves no more requests until the debt is paid:
requests wait in the connection's bounded queue, no data is buffered.
Downloading, a connection that receives a block overdrawing the bucket
stops reading from its socket (C{transport.pauseProducing}) until the debt
is paid, so TCP's flow control slows the sender.  Either way the limit may
be exceeded by one block a connection, and by the burst (a quarter of a
second's worth, at least two blocks).
"""

from __future__ import annotations

import re
from typing import Any

from coursenet.bucket import TokenBucket
from swarm import wire

_RATE = re.compile(r"(\d+(?:\.\d+)?)([kmg]?)(?:i?b?(?:/s)?)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parseRate(text: str) -> int:
    """
    Bytes a second from C{500K}, C{4M}, C{1.5M} or C{65536} (K = 1024, as
    aria2c's options); 0 means no limit.

    @raise ValueError: not a rate.
    """
    m = _RATE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a rate: bytes a second, e.g. 500K or 4M")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class RateLimit:
    """
    One direction's limit, C{rate} bytes a second, on C{clock}.
    """

    def __init__(self, rate: float, clock: Any) -> None:
        if rate <= 0:
            raise ValueError("a rate limit must be above 0 bytes a second")
        self.rate = rate
        self.clock = clock
        self.bucket = TokenBucket(rate, max(2 * wire.BLOCK, int(rate / 4)), clock)

    def take(self, n: int) -> float:
        """
        Count C{n} bytes sent or received.

        @return: the seconds to wait before the next (0: none).
        """
        return self.bucket.take(n)


def rateLimit(rate: float | None, clock: Any) -> RateLimit | None:
    """
    A L{RateLimit}, or None for no limit (C{rate} None or 0).
    """
    return RateLimit(rate, clock) if rate else None
