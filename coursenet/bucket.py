"""
A token bucket, shared by everything that limits a rate: the chat's flood
limit (a token a line) and the swarm peer's upload and download limits (a
token a byte).
"""

from __future__ import annotations


class TokenBucket:
    """
    A token bucket: C{burst} tokens, refilled at C{rate} a second.  A
    token may be taken before it is there: the taker is told how long to
    wait for it (ngircd's penalty, Ergo's fakelag).
    """

    def __init__(self, rate: float, burst: int, clock) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock.seconds()
        self.level = self._tokens

    def take(self, n: int = 1) -> float:
        """
        Take C{n} tokens.

        @return: the seconds until they are there: 0 if they were.
        """
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        #: What was there before this take: how far the taker is from its limit.
        self.level = self._tokens
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
