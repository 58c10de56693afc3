"""
The coordinator's jobs, chunks and leases, in memory, with the store behind
them.

A job is split into chunks (L{compute.series.chunkRanges}).  Chunks wait in
one queue, in job order; a worker asks for one (L{Scheduler.lease}) and
gets a lease on it, which lives L{Scheduler.leaseTimeout} seconds and is
extended by every progress report.  A lease that expires, or whose holder
goes away, puts its chunk back at the head of the queue.  A result is taken
by chunk id, C{(job, index)}, from whoever sends it, lease or no lease: the
first one in range is kept, later ones are dropped as duplicates, one out
of range is refused and its chunk issued again.
"""

from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from compute.interfaces import IJobStore, IScheduler
from compute.series import MAX_DIGITS, SERIES, chunkBounds, chunkRanges, formatScaled

#: Most terms a job may have: XML-RPC integers are 32-bit.
MAX_TERMS = 2**31 - 1
#: Most chunks a job may be split into.
MAX_CHUNKS = 100_000
#: Times a chunk may be refused as garbage before its job fails.
MAX_REFUSALS = 5
#: Finished jobs remembered in memory (the store keeps them all).
KEEP_FINISHED = 10_000

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


class JobError(Exception):
    """
    A request about a job that cannot be met; C{code} is the XML-RPC fault
    code (L{BAD_ARGUMENT}, L{NO_SUCH_JOB}, L{NOT_DONE}, L{BUSY}).
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


BAD_ARGUMENT, NO_SUCH_JOB, NOT_DONE, BUSY = 1, 2, 3, 4


class BadResult(Exception):
    """
    A chunk result out of range: garbage.
    """


@dataclass
class Job:
    id: int
    series: str
    terms: int
    chunk: int
    digits: int
    state: str = "queued"
    values: dict[int, int] = field(default_factory=dict)
    refusals: collections.Counter[int] = field(default_factory=collections.Counter)
    progress: dict[int, int] = field(default_factory=dict)
    result: str | None = None
    error: str | None = None
    created: float = 0.0
    finished: float | None = None
    #: Chunks done when the job finished (its values are then dropped).
    doneCount: int = 0
    #: Chunks whose values the store has kept (what status calls done).
    kept: int = 0

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return chunkRanges(self.terms, self.chunk)

    @property
    def total(self) -> int:
        return -(-self.terms // self.chunk)

    def chunkRange(self, index: int) -> tuple[int, int]:
        start = index * self.chunk
        return start, min(start + self.chunk, self.terms)


@dataclass
class Lease:
    """
    A chunk lent to C{holder}: terms C{[start, stop)} of job C{job}.
    """

    id: int
    job: int
    index: int
    series: str
    start: int
    stop: int
    digits: int
    holder: Any
    expiry: Any = None


@implementer(IScheduler)
class Scheduler:
    """
    Jobs, the chunk queue and the leases (see the module docstring).
    """

    _log = Logger()

    def __init__(self, store: IJobStore, reactor=None, leaseTimeout: float = 30.0,
                 maxActive: int = 100, now=time.time) -> None:
        """
        @param maxActive: jobs queued or running at once; more are refused.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.store = store
        self.leaseTimeout = leaseTimeout
        self.maxActive = maxActive
        self._now = now
        self.jobs: dict[int, Job] = {}
        self._finished: collections.deque[int] = collections.deque()
        self._queue: collections.deque[tuple[int, int]] = collections.deque()
        self._queued: set[tuple[int, int]] = set()
        self.leases: dict[int, Lease] = {}
        self._leased: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
        self._waiters: collections.deque[tuple[Any, Deferred]] = collections.deque()
        self._ids = itertools.count(1)
        self._watchers: dict[int, list[Deferred]] = collections.defaultdict(list)

    # Restart

    def resume(self) -> None:
        """
        Take up the store's jobs: unfinished ones queue their missing chunks.
        """
        for stored in self.store.load():
            job = Job(stored.id, stored.series, stored.terms, stored.chunk, stored.digits,
                      state=stored.state, values=dict(stored.chunks), result=stored.result,
                      error=stored.error, created=stored.created, finished=stored.finished)
            self.jobs[job.id] = job
            if job.state in FINISHED:
                job.doneCount = job.total if job.state == "done" else 0
                self._remember(job.id)
                continue
            job.kept = len(job.values)
            job.state = "running" if job.values else "queued"
            missing = [i for i in range(job.total) if i not in job.values]
            self._log.info("resuming job {job}: {done}/{total} chunks done",
                           job=job.id, done=len(job.values), total=job.total)
            if not missing:
                self._finish(job)
            for index in missing:
                self._enqueue(job.id, index)

    # The front door

    def submit(self, series: str, terms: int, chunk: int, digits: int) -> Deferred:
        checkJob(series, terms, chunk, digits)
        active = sum(1 for j in self.jobs.values() if j.state not in FINISHED)
        if active >= self.maxActive:
            raise JobError(BUSY, f"{active} jobs are queued or running (limit {self.maxActive}); try again later")
        created = self._now()

        def added(jobId: int) -> int:
            job = Job(jobId, series, terms, chunk, digits, created=created)
            self.jobs[jobId] = job
            self._log.info("job {job}: {series}, {terms} terms in {chunks} chunks, {digits} digits",
                           job=jobId, series=series, terms=terms, chunks=job.total, digits=digits)
            for index in range(job.total):
                self._enqueue(jobId, index)
            return jobId

        return self.store.addJob(series, terms, chunk, digits, created).addCallback(added)

    def _job(self, jobId: Any) -> Job:
        job = self.jobs.get(jobId) if isinstance(jobId, int) and not isinstance(jobId, bool) else None
        if job is None:
            raise JobError(NO_SUCH_JOB, f"no job {jobId!r}: give the id submit returned")
        return job

    def status(self, jobId: int) -> dict[str, Any]:
        job = self._job(jobId)
        running = sum(job.progress.values())
        doneTerms = sum(stop - start for i, (start, stop) in enumerate(job.ranges) if i in job.values)
        status: dict[str, Any] = {
            "job": job.id,
            "state": job.state,
            "series": job.series,
            "terms": job.terms,
            "chunk": job.chunk,
            "digits": job.digits,
            "chunks_done": job.doneCount if job.state in FINISHED else job.kept,
            "chunks_total": job.total,
            "chunks_leased": sum(1 for i in range(job.total) if self._leased.get((job.id, i))),
            "terms_done": doneTerms + running if job.state != "done" else job.terms,
        }
        if job.error is not None:
            status["error"] = job.error
        return status

    def result(self, jobId: int) -> str:
        job = self._job(jobId)
        if job.state == "done":
            assert job.result is not None
            return job.result
        if job.state in ("failed", "cancelled"):
            raise JobError(NOT_DONE, f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))
        raise JobError(NOT_DONE, f"job {job.id} is {job.state}: {job.kept}/{job.total} chunks done;"
                                 " call status until its state is done")

    def cancel(self, jobId: int) -> Deferred:
        job = self._job(jobId)
        if job.state in FINISHED:
            return succeed(job.state)
        job.state = "cancelled"
        self._log.info("job {job} cancelled", job=job.id)
        return self._close(job).addCallback(lambda _: job.state)

    def whenFinished(self, jobId: int) -> Deferred:
        """
        A L{Deferred} that fires (with L{None}) when the job is done, failed
        or cancelled; cancel it to stop waiting.
        """
        job = self._job(jobId)
        if job.state in FINISHED:
            return succeed(None)
        watchers = self._watchers[job.id]

        def cancelled(d: Deferred) -> None:
            if d in watchers:
                watchers.remove(d)

        d: Deferred = Deferred(cancelled)
        watchers.append(d)
        return d

    # The worker door

    def lease(self, holder: Any) -> Deferred:
        lease = self._next(holder)
        if lease is not None:
            return succeed(lease)
        entry: list = []

        def cancelled(d: Deferred) -> None:
            if entry and entry[0] in self._waiters:
                self._waiters.remove(entry[0])

        d: Deferred = Deferred(cancelled)
        entry.append((holder, d))
        self._waiters.append(entry[0])
        return d

    def _next(self, holder: Any) -> Lease | None:
        while self._queue:
            key = self._queue.popleft()
            self._queued.discard(key)
            job = self.jobs.get(key[0])
            if job is None or job.state in FINISHED or key[1] in job.values:
                continue
            job.state = "running"
            start, stop = job.chunkRange(key[1])
            lease = Lease(next(self._ids), job.id, key[1], job.series, start, stop, job.digits, holder)
            lease.expiry = self._reactor.callLater(self.leaseTimeout, self._expire, lease.id)
            self.leases[lease.id] = lease
            self._leased[key].add(lease.id)
            return lease
        return None

    def _enqueue(self, jobId: int, index: int, front: bool = False) -> None:
        key = (jobId, index)
        if key in self._queued:
            return
        self._queued.add(key)
        if front:
            self._queue.appendleft(key)
        else:
            self._queue.append(key)
        while self._waiters and self._queue:
            holder, d = self._waiters.popleft()
            lease = self._next(holder)
            if lease is None:
                self._waiters.appendleft((holder, d))
                break
            d.callback(lease)

    def _drop(self, leaseId: int) -> Lease | None:
        lease = self.leases.pop(leaseId, None)
        if lease is None:
            return None
        if lease.expiry is not None and lease.expiry.active():
            lease.expiry.cancel()
        key = (lease.job, lease.index)
        self._leased[key].discard(leaseId)
        if not self._leased[key]:
            del self._leased[key]
        job = self.jobs.get(lease.job)
        if job is not None:
            job.progress.pop(lease.index, None)
        return lease

    def _reissue(self, lease: Lease) -> None:
        job = self.jobs.get(lease.job)
        if job is not None and job.state not in FINISHED and lease.index not in job.values:
            if not self._leased.get((lease.job, lease.index)):
                self._enqueue(lease.job, lease.index, front=True)

    def _expire(self, leaseId: int) -> None:
        lease = self.leases.get(leaseId)
        if lease is None:
            return
        lease.expiry = None
        self._log.info("lease {lease} on job {job} chunk {index} expired; issued again",
                       lease=leaseId, job=lease.job, index=lease.index)
        self._drop(leaseId)
        self._reissue(lease)

    def progress(self, leaseId: int, done: int) -> bool:
        lease = self.leases.get(leaseId)
        if lease is None:
            return False
        job = self.jobs.get(lease.job)
        if job is None or job.state in FINISHED or lease.index in job.values:
            self._drop(leaseId)
            return False
        if lease.expiry is not None and lease.expiry.active():
            lease.expiry.reset(self.leaseTimeout)
        job.progress[lease.index] = max(0, min(done, lease.stop - lease.start))
        return True

    def complete(self, leaseId: int, jobId: int, index: int, value: int, holder: Any) -> Deferred:
        lease = self.leases.get(leaseId)
        if lease is not None and (lease.job, lease.index) == (jobId, index) and lease.holder is holder:
            self._drop(leaseId)
        else:
            lease = None
        job = self.jobs.get(jobId)
        if job is None:
            return succeed((False, f"no job {jobId}"))
        if not 0 <= index < job.total:
            return succeed((False, f"job {jobId} has no chunk {index} (it has {job.total})"))
        if job.state in FINISHED:
            return succeed((False, f"job {jobId} is {job.state}"))
        if index in job.values:
            return succeed((False, f"duplicate: chunk {index} of job {jobId} is already done"))
        start, stop = job.chunkRange(index)
        lo, hi = chunkBounds(start, stop, job.digits)
        if not lo <= value <= hi:
            job.refusals[index] += 1
            self._log.warn("refused job {job} chunk {index} from {holder}: out of range",
                           job=jobId, index=index, holder=getattr(holder, "name", holder))
            if job.refusals[index] >= MAX_REFUSALS:
                job.state = "failed"
                job.error = f"chunk {index} refused as out of range {MAX_REFUSALS} times"
                self._close(job)
            elif lease is not None:
                self._reissue(lease)
            raise BadResult(
                f"value out of range for job {jobId} chunk {index} (terms {start}..{stop}, {job.digits} digits):"
                f" it must lie in [{lo}, {hi}]"
            )
        job.values[index] = value
        job.progress.pop(index, None)
        for other in list(self._leased.get((jobId, index), ())):
            # Another holder's lease on the same chunk: its result will be a duplicate.
            self._drop(other)
        d = self.store.addChunk(jobId, index, value, str(getattr(holder, "name", holder)))

        def kept(_) -> Any:
            job.kept += 1
            if job.kept == job.total:
                return self._finish(job)
            return None

        return d.addCallback(kept).addCallback(lambda _: (True, "accepted"))

    def abandon(self, leaseId: int) -> None:
        """
        The holder gives a lease up: its chunk is issued again.
        """
        lease = self._drop(leaseId)
        if lease is not None:
            self._reissue(lease)

    def release(self, holder: Any) -> None:
        for waiter in [w for w in self._waiters if w[0] is holder]:
            self._waiters.remove(waiter)
        for lease in [lease for lease in self.leases.values() if lease.holder is holder]:
            self._drop(lease.id)
            self._reissue(lease)

    # Ends

    def _finish(self, job: Job) -> Deferred:
        if job.state in FINISHED:
            return succeed(None)
        job.result = formatScaled(sum(job.values.values()), job.digits)
        job.state = "done"
        self._log.info("job {job} done: {result}", job=job.id, result=job.result)
        return self._close(job)

    def _close(self, job: Job) -> Deferred:
        job.finished = self._now()
        job.doneCount = job.total if job.state == "done" else job.kept
        job.values = {}
        job.progress = {}
        for key in [key for key in self._leased if key[0] == job.id]:
            for leaseId in list(self._leased.get(key, ())):
                self._drop(leaseId)
        self._remember(job.id)
        for watcher in self._watchers.pop(job.id, []):
            watcher.callback(None)
        return self.store.setState(job.id, job.state, job.result, job.error, job.finished)

    def _remember(self, jobId: int) -> None:
        self._finished.append(jobId)
        while len(self._finished) > KEEP_FINISHED:
            self.jobs.pop(self._finished.popleft(), None)

    def stop(self) -> None:
        """
        Cancel the waiting workers' requests and the lease timers.
        """
        while self._waiters:
            _, d = self._waiters.popleft()
            d.cancel()
        for lease in list(self.leases.values()):
            if lease.expiry is not None and lease.expiry.active():
                lease.expiry.cancel()


def checkJob(series: Any, terms: Any, chunk: Any, digits: Any) -> None:
    """
    @raise JobError: unless the arguments make a job this coordinator runs.
    """
    if series not in SERIES:
        raise JobError(BAD_ARGUMENT, f"unknown series {series!r}: use one of {', '.join(SERIES)}")
    for name, value in (("terms", terms), ("chunk", chunk), ("digits", digits)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise JobError(BAD_ARGUMENT, f"{name} must be an integer, not {type(value).__name__}")
    if not 1 <= terms <= MAX_TERMS:
        raise JobError(BAD_ARGUMENT, f"terms must be 1..{MAX_TERMS}, not {terms}")
    if not 1 <= digits <= MAX_DIGITS:
        raise JobError(BAD_ARGUMENT, f"digits must be 1..{MAX_DIGITS}, not {digits}")
    if not 1 <= chunk:
        raise JobError(BAD_ARGUMENT, f"chunk must be at least 1, not {chunk}")
    if -(-terms // chunk) > MAX_CHUNKS:
        raise JobError(BAD_ARGUMENT, f"{terms} terms in chunks of {chunk} make more than {MAX_CHUNKS} chunks:"
                                     f" use chunk >= {-(-terms // MAX_CHUNKS)}")


__all__ = ["Scheduler", "Job", "Lease", "JobError", "BadResult", "checkJob", "STATES", "CancelledError"]
