"""
Space kept in bounds: per-student quotas, and unfinished uploads that
expire.

A student's usage is everything under their home and hand-in folder,
unfinished uploads included.  It is measured (in a thread) when an upload
starts while no other upload of theirs runs, and kept current from then on
by every byte written and every file replaced or removed through BFTP.  So
files changed behind the server's back are counted again at the student's
next upload.
"""

from __future__ import annotations

import collections
import os
import stat
import time
from collections.abc import Callable, Container, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from bftp.fs import PARTIAL_PREFIX, Jail
from bftp.policy import Policy


def diskUsage(paths: Iterable[str]) -> int:
    """
    The bytes of the regular files below C{paths}, links not followed.
    """
    total = 0
    for top in paths:
        for directory, _, files in os.walk(top):
            for name in files:
                try:
                    st = os.lstat(os.path.join(directory, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


class Quotas:
    """
    The usage of every student with an upload running, against
    L{Policy.quota}.  With no quota, or for paths no student owns
    (C{owner} L{None}), every method does nothing.
    """

    def __init__(self, jail: Jail, policy: Policy, reactor) -> None:
        self._jail = jail
        self._policy = policy
        self._reactor = reactor
        self._used: dict[str, int] = {}
        self._active: collections.Counter[str] = collections.Counter()
        self._measuring: dict[str, list[Deferred[None]]] = {}

    def _applies(self, owner: str | None) -> bool:
        return owner is not None and self._policy.quota is not None

    async def begin(self, owner: str | None) -> None:
        """
        An upload counted against C{owner} starts: measure their usage
        unless another of their uploads already keeps it current.

        @raise OSError: if the usage cannot be measured.
        """
        if not self._applies(owner):
            return
        assert owner is not None
        self._active[owner] += 1
        if owner in self._measuring:
            waiter: Deferred[None] = Deferred()
            self._measuring[owner].append(waiter)
            await waiter
            if owner not in self._used:
                self.end(owner)
                raise OSError(f"the usage of {owner} could not be measured")
            return
        if self._active[owner] > 1 and owner in self._used:
            return
        self._measuring[owner] = []
        folders = [self._jail.real(p) for p in self._policy.ownedBy(owner)]
        pool = self._reactor.getThreadPool()
        try:
            self._used[owner] = await deferToThreadPool(self._reactor, pool, diskUsage, folders)
        except BaseException:
            self.end(owner)
            raise
        finally:
            for waiter in self._measuring.pop(owner):
                waiter.callback(None)

    def end(self, owner: str | None) -> None:
        """
        An upload that L{begin} counted is over.
        """
        if not self._applies(owner):
            return
        assert owner is not None
        self._active[owner] -= 1
        if self._active[owner] <= 0:
            del self._active[owner]
            # Measured afresh at the next upload.
            self._used.pop(owner, None)

    def refusal(self, owner: str | None, n: int) -> str | None:
        """
        Why C{n} more bytes would not fit in C{owner}'s quota, or L{None}.
        """
        if not self._applies(owner) or owner not in self._used:
            return None
        assert owner is not None and self._policy.quota is not None
        used = self._used[owner]
        if used + n > self._policy.quota:
            return (
                f"quota of {self._policy.quota} bytes for {owner} exceeded"
                f" ({used} bytes in use, unfinished uploads included)"
            )
        return None

    def charge(self, owner: str, n: int) -> str | None:
        """
        Count C{n} bytes written for C{owner} (a negative C{n} gives them
        back), unless L{refusal} says they do not fit.
        """
        why = self.refusal(owner, n) if n > 0 else None
        if why is None and owner in self._used:
            self._used[owner] += n
        return why

    def freed(self, owner: str | None, n: int | None) -> None:
        """
        C{n} bytes of C{owner}'s were removed (L{None}: an unknown amount,
        so measure again at the next upload that is alone).
        """
        if owner is None or owner not in self._used:
            return
        if n is None:
            if not self._active[owner]:
                del self._used[owner]
            return
        self._used[owner] = max(0, self._used[owner] - n)


def stalePartials(root: str, cutoff: float) -> list[str]:
    """
    The unfinished uploads below C{root} last written before C{cutoff}.
    """
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            if name.startswith(PARTIAL_PREFIX):
                path = os.path.join(directory, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        found.append(path)
                except OSError:
                    continue
    return found


class PartialSweeper:
    """
    Remove unfinished uploads older than L{Policy.partialMaxAge}: at start,
    then every quarter of that age (at most hourly).  The tree is walked in
    a thread; each file is checked again and removed on the reactor, where
    no upload can start on it in between.
    """

    _log = Logger()

    def __init__(
        self,
        jail: Jail,
        policy: Policy,
        quotas: Quotas,
        reactor,
        busy: Callable[[], Container[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """
        @param busy: the real paths of the partial files uploads use now.
        """
        self._jail = jail
        self._policy = policy
        self._quotas = quotas
        self._reactor = reactor
        self._busy = busy
        self._clock = clock
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        age = self._policy.partialMaxAge
        if age <= 0 or self._loop is not None:
            return
        def sweep() -> Deferred[None]:
            # A failed pass is logged; the next one runs all the same.
            return Deferred.fromCoroutine(self.sweep()).addCallbacks(
                lambda _: None,
                lambda f: self._log.failure("sweeping unfinished uploads failed", f),
            )

        self._loop = LoopingCall(sweep)
        self._loop.clock = self._reactor
        self._loop.start(max(1.0, min(age / 4, 3600.0)), now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    async def sweep(self) -> int:
        """
        One pass; how many unfinished uploads it removed.
        """
        cutoff = self._clock() - self._policy.partialMaxAge
        pool = self._reactor.getThreadPool()
        found = await deferToThreadPool(self._reactor, pool, stalePartials, self._jail.root, cutoff)
        busy = self._busy()
        removed = 0
        for path in found:
            if path in busy:
                continue
            try:
                st = os.lstat(path)
                if st.st_mtime >= cutoff:
                    continue
                os.unlink(path)
            except OSError:
                continue
            removed += 1
            vdir = self._jail.virtualOf(os.path.dirname(path), path)
            self._quotas.freed(self._policy.ownerOf(vdir + "/x"), st.st_size)
            self._log.info(
                "removed an unfinished upload in {dir}: {n} bytes, untouched for {age} s",
                dir=vdir, n=st.st_size, age=int(self._clock() - st.st_mtime),
            )
        return removed
