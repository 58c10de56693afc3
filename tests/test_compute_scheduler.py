"""
The coordinator's scheduler with no sockets: a task.Clock and the memory
store.  Leases, expiry, duplicates, garbage, cancel, restart.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from compute.interfaces import IEngine, IJobStore, IScheduler
from compute.engine import DaskEngine, parseEngine
from compute.jobs import MAX_REFUSALS, BadResult, JobError, Scheduler
from compute.series import formatScaled, leibnizChunk
from compute.store import MemoryJobStore, SQLiteJobStore


def make(store=None, leaseTimeout=10.0):
    clock = Clock()
    store = store or MemoryJobStore()
    return Scheduler(store, reactor=clock, leaseTimeout=leaseTimeout, now=clock.seconds), clock, store


def value(lease):
    return leibnizChunk(lease.start, lease.stop, lease.digits)


def fired(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_interfacesAreImplemented(tmp_path):
    """The scheduler, both stores and the Dask engine provide their interfaces."""
    scheduler, clock, store = make()
    sqlite = SQLiteJobStore(str(tmp_path / "j.sqlite"), reactor=clock)
    try:
        assert verifyObject(IScheduler, scheduler)
        assert verifyObject(IJobStore, store) and verifyObject(IJobStore, sqlite)
        assert verifyObject(IEngine, DaskEngine(scheduler, "tcp://127.0.0.1:1", reactor=clock))
    finally:
        sqlite._pool.stop()


def test_jobRunsToTheExactSum():
    """Leasing and completing every chunk finishes the job with the exact sum, and status follows it."""
    s, clock, _ = make()
    job = fired(s.submit("leibniz", 1000, 300, 40))
    assert s.status(job)["state"] == "queued" and s.status(job)["chunks_total"] == 4
    for _ in range(4):
        lease = fired(s.lease("w"))
        assert fired(s.complete(lease.id, lease.job, lease.index, value(lease), "w")) == (True, "accepted")
    status = s.status(job)
    assert status["state"] == "done" and status["chunks_done"] == 4 and status["terms_done"] == 1000
    assert s.result(job) == formatScaled(leibnizChunk(0, 1000, 40), 40)


def test_expiredLeaseIsIssuedAgainAndProgressExtendsIt():
    """A lease without progress expires and its chunk goes to the next worker; progress keeps a lease alive."""
    s, clock, _ = make(leaseTimeout=10)
    fired(s.submit("leibniz", 200, 100, 20))
    slow, kept = fired(s.lease("a")), fired(s.lease("b"))
    waiting = s.lease("c")
    clock.advance(6)
    assert s.progress(kept.id, 50) is True
    clock.advance(6)
    again = fired(waiting)
    assert (again.job, again.index) == (slow.job, slow.index)
    assert kept.id in s.leases and slow.id not in s.leases
    assert s.progress(slow.id, 10) is False


def test_duplicateResultIsDroppedByChunkId():
    """A second result for a done chunk, even from the holder of an expired lease, is dropped as a duplicate."""
    s, clock, _ = make(leaseTimeout=5)
    job = fired(s.submit("leibniz", 200, 100, 20))
    first = fired(s.lease("a"))
    clock.advance(6)
    second = fired(s.lease("b"))
    assert (second.index, second.job) == (first.index, first.job)
    assert fired(s.complete(first.id, job, first.index, value(first), "a")) == (True, "accepted")
    accepted, reason = fired(s.complete(second.id, job, second.index, value(second), "b"))
    assert not accepted and reason.startswith("duplicate")


def test_garbageIsRefusedAndTheChunkIssuedAgain():
    """An out-of-range value raises BadResult naming the range, and the chunk is leased again; repeated garbage fails the job."""
    s, clock, _ = make()
    job = fired(s.submit("leibniz", 100, 100, 20))
    for attempt in range(MAX_REFUSALS):
        lease = fired(s.lease("bad"))
        with pytest.raises(BadResult, match="it must lie in"):
            s.complete(lease.id, job, 0, value(lease) + 10**20, "bad")
    assert s.status(job)["state"] == "failed" and "refused" in s.status(job)["error"]
    with pytest.raises(JobError, match="failed"):
        s.result(job)


def test_lostWorkersLeasesGoBackFirst():
    """When a worker's connection is lost, its leases are issued again before the rest of the queue."""
    s, clock, _ = make()
    fired(s.submit("leibniz", 300, 100, 20))
    lost = fired(s.lease("gone"))
    s.release("gone")
    assert fired(s.lease("new")).index == lost.index


def test_cancelStopsIssuingAndDropsResults():
    """A cancelled job's chunks are not issued and its late results are dropped."""
    s, clock, _ = make()
    job = fired(s.submit("leibniz", 300, 100, 20))
    lease = fired(s.lease("w"))
    assert fired(s.cancel(job)) == "cancelled"
    waiting = s.lease("w")
    assert not waiting.called
    accepted, reason = fired(s.complete(lease.id, job, lease.index, value(lease), "w"))
    assert not accepted and "cancelled" in reason
    waiting.cancel()


def test_submitChecksArguments():
    """submit refuses an unknown series, non-integers and too many chunks, each with a message that says why."""
    s, clock, _ = make()
    for args, text in [(("pi", 10, 1, 1), "unknown series"), (("leibniz", "10", 1, 1), "integer"),
                       (("leibniz", 10**6, 1, 1), "use chunk >= 10"), (("leibniz", 10, 1, 0), "digits must be")]:
        with pytest.raises(JobError, match=text):
            s.submit(*args)


def test_restartResumesFromTheSQLiteStore(tmp_path):
    """Chunks kept in SQLite survive a new scheduler: only the missing ones are issued, and the sum is exact."""
    from twisted.internet import reactor as real

    path = str(tmp_path / "jobs.sqlite")
    store = SQLiteJobStore(path, reactor=real)
    # Write the rows directly: the store's thread answers through the real reactor.
    jobId = store._db.execute("INSERT INTO jobs (series, terms, chunk, digits, state, created)"
                              " VALUES ('leibniz', 500, 100, 30, 'running', 0)").lastrowid
    for index in (0, 2):
        store._db.execute("INSERT INTO chunks VALUES (?, ?, ?, 'w')",
                          (jobId, index, str(leibnizChunk(index * 100, index * 100 + 100, 30))))
    store._pool.stop()
    store._db.close()
    again = Scheduler(SQLiteJobStore(path, reactor=real), reactor=Clock())
    try:
        again.resume()
        status = again.status(jobId)
        assert status["chunks_done"] == 2 and status["state"] == "running"
        issued = []
        while (lease := again._next("w")) is not None:
            issued.append(lease.index)
            again.jobs[jobId].values[lease.index] = value(lease)
        assert sorted(issued) == [1, 3, 4]
        assert sum(again.jobs[jobId].values.values()) == leibnizChunk(0, 500, 30)
    finally:
        again.store._pool.stop()


def test_engineArgument():
    """--engine takes 'workers' or dask://HOST:PORT and refuses anything else with the accepted forms."""
    assert parseEngine("workers") is None
    assert parseEngine("dask://127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="dask://HOST:PORT"):
        parseEngine("spark://x:1")


def test_whenFinishedFiresAtTheEndAndCanBeCancelled():
    """whenFinished fires when the last chunk is in, at once for a finished job, and a cancelled watch is forgotten."""
    s, clock, _ = make()
    job = fired(s.submit("leibniz", 100, 100, 20))
    watch, dropped = s.whenFinished(job), s.whenFinished(job)
    dropped.cancel()
    assert not watch.called and s._watchers[job] == [watch]
    lease = fired(s.lease("w"))
    fired(s.complete(lease.id, job, 0, value(lease), "w"))
    assert watch.called and fired(s.whenFinished(job)) is None
