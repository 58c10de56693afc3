"""
Running chunks on a Dask cluster (C{--engine dask://HOST:PORT}): the engine
takes leases from the scheduler like a worker with many slots, hands each
chunk to C{dask.distributed} as a task of L{compute.series.computeChunk},
and completes the lease with the task's value.  The scheduler, the store,
the range checks and the XML-RPC door are the same.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from compute.interfaces import IEngine
from compute.jobs import BadResult, Lease
from compute.series import computeChunk


#: Seconds between attempts to reach the Dask scheduler.
RETRY = 5.0


def parseEngine(text: str) -> str | None:
    """
    The Dask scheduler address of an C{--engine} value (C{tcp://HOST:PORT}),
    or L{None} for C{workers}.

    @raise ValueError: for anything else.
    """
    if text == "workers":
        return None
    if text.startswith("dask://"):
        address = text[len("dask://"):]
        host, sep, port = address.rpartition(":")
        if sep and host and port.isdigit():
            return f"tcp://{address}"
    raise ValueError(f"--engine takes 'workers' or dask://HOST:PORT, not {text!r}")


@implementer(IEngine)
class DaskEngine:
    """
    Chunks as Dask tasks, at most C{slots} at once (by default four times the
    cluster's threads when it connects).
    """

    _log = Logger()
    name = "dask"

    def __init__(self, scheduler, address: str, reactor=None, slots: int | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.scheduler = scheduler
        self.address = address
        self.slots = slots
        self.client: Any = None
        self._waiting: set[Deferred] = set()
        self._stopping = False
        self._retry: Any = None

    def _inThread(self, f, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def start(self) -> Deferred:
        def connect():
            from distributed import Client

            client = Client(self.address, timeout=30, set_as_default=False)
            threads = sum(client.nthreads().values())
            return client, threads

        def connected(result) -> None:
            self.client, threads = result
            slots = self.slots or max(4, 4 * threads)
            self._log.info("dask engine: {address}, {threads} threads, {slots} chunks at once",
                           address=self.address, threads=threads, slots=slots)
            for _ in range(slots):
                self._take()

        def failed(failure) -> None:
            self._log.error("dask engine: cannot reach the scheduler at {address} ({error}); trying again in"
                            " {delay} s", address=self.address, error=failure.value, delay=RETRY)
            if not self._stopping:
                self._retry = self._reactor.callLater(RETRY, self.start)

        return self._inThread(connect).addCallbacks(connected, failed)

    def _take(self) -> None:
        if self._stopping:
            return
        d = self.scheduler.lease(self)
        self._waiting.add(d)
        d.addBoth(self._leased, d)

    def _leased(self, lease, d: Deferred) -> None:
        self._waiting.discard(d)
        if not isinstance(lease, Lease):
            return None
        future = self.client.submit(computeChunk, lease.series, lease.start, lease.stop, lease.digits, pure=False)

        def done(f) -> None:
            self._reactor.callFromThread(self._finished, lease, f)

        future.add_done_callback(done)
        return None

    def _finished(self, lease, future) -> None:
        try:
            value = future.result()
        except BaseException as e:
            self._log.warn("dask task for job {job} chunk {index} failed: {error}",
                           job=lease.job, index=lease.index, error=e)
            self.scheduler.abandon(lease.id)
            self._reactor.callLater(1.0, self._take)
            return
        d = maybeDeferred(self.scheduler.complete, lease.id, lease.job, lease.index, value, self)
        d.addErrback(lambda f: f.trap(BadResult, CancelledError))
        d.addBoth(lambda _: self._take())

    def stop(self) -> Deferred:
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for d in list(self._waiting):
            d.cancel()
        self.scheduler.release(self)
        client, self.client = self.client, None
        if client is None:
            return Deferred.fromCoroutine(_nothing())
        return self._inThread(client.close)


async def _nothing() -> None:
    return None
