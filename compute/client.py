"""
An asynchronous client of the coordinator's XML-RPC door, on
C{twisted.web.xmlrpc.Proxy}: for Twisted programs that submit jobs and wait
for them without blocking.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.xmlrpc import Proxy

FINISHED = ("done", "failed", "cancelled")


class ComputeClient:
    """
    The coordinator at C{url} (C{http://HOST:PORT/}).
    """

    def __init__(self, url: str, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._proxy = Proxy(url.encode("ascii"), reactor=reactor)

    def _call(self, method: str, *args: Any) -> Deferred:
        return self._proxy.callRemote(method, *args)

    def submit(self, series: str, terms: int, chunk: int, digits: int) -> Deferred:
        """
        Fire with the new job's id.
        """
        return self._call("submit", series, terms, chunk, digits)

    def status(self, job: int) -> Deferred:
        return self._call("status", job)

    def result(self, job: int) -> Deferred:
        return self._call("result", job)

    def cancel(self, job: int) -> Deferred:
        return self._call("cancel", job)

    async def wait(self, job: int, interval: float = 0.2, progress=None) -> dict:
        """
        Poll C{status} every C{interval} seconds until the job finishes;
        call C{progress(status)} after each poll.

        @return: the last status.
        """
        while True:
            status = await self.status(job)
            if progress is not None:
                progress(status)
            if status["state"] in FINISHED:
                return status
            await deferLater(self._reactor, interval)

    async def compute(self, series: str, terms: int, chunk: int, digits: int) -> str:
        """
        Submit a job, wait for it, fire with its result (a fault if it
        failed or was cancelled).
        """
        job = await self.submit(series, terms, chunk, digits)
        await self.wait(job)
        return await self.result(job)
