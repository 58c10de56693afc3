"""
One computation per key at a time, its result shared by every caller who
asked for it while it ran.
"""

from __future__ import annotations

from typing import Callable, Hashable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class Coalescer:
    """
    Run C{start()} for a key unless a run for that key is already under
    way, in which case wait for that one.  Every caller gets its own
    L{Deferred} with the same result or failure.
    """

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[Deferred]] = {}

    def run(self, key: Hashable, start: Callable[[], Deferred]) -> Deferred:
        d: Deferred = Deferred()
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[key] = [d]

        def done(result):
            for w in self._waiting.pop(key):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        start().addBoth(done)
        return d
