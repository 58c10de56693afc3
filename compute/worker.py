"""
C{compute-worker --connect ENDPOINT --token-file F [--procs N]}: connects out
to a coordinator (so it works from behind NAT), logs in, and computes the
chunks it leases in N local processes, exactly, reporting progress.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.task import deferLater
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from compute.protocol import Complete, Lease, Login, LoginFailed, Progress, Refused
from compute.series import computeChunk
from coursenet.accounts import readTokenFile
from coursenet.tls import clientEndpoint

#: A chunk is computed in slices of at least this many terms, with a
#: progress report after each: about 50 ms of work a slice at 60 digits.
MIN_SLICE = 250_000
#: Slices a chunk is split into at most.
MAX_SLICES = 8


def slices(start: int, stop: int) -> list[tuple[int, int]]:
    """
    The slices of C{[start, stop)} a worker computes one after another.
    """
    count = max(1, min(MAX_SLICES, (stop - start) // MIN_SLICE))
    size = -(-(stop - start) // count)
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def dieWithParent() -> None:
    """
    In a computing process: be killed when the worker dies, even by
    SIGKILL (Linux's PR_SET_PDEATHSIG), rather than wait forever for work.
    """
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class WorkerProtocol(amp.AMP):
    """
    The worker's end of the connection: answers L{Refused}.
    """

    _log = Logger()

    @Refused.responder
    def refused(self, reason: str) -> dict:
        self._log.error("the coordinator refused this worker: {reason}", reason=reason)
        return {}


class Worker:
    """
    The lease loops of one worker: C{procs} loops, each computing one chunk
    at a time in the process pool.
    """

    _log = Logger()

    def __init__(self, name: str, token: str, procs: int, reactor=None,
                 pool: concurrent.futures.Executor | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.name = name
        self.token = token
        self.procs = procs
        # spawn: the children do not inherit the reactor's threads or sockets.
        self.pool = pool or concurrent.futures.ProcessPoolExecutor(
            procs, mp_context=multiprocessing.get_context("spawn"), initializer=dieWithParent)
        self.chunksDone = 0
        self.termsDone = 0
        self._reported = 0.0

    def _inPool(self, f, *args) -> Deferred:
        d: Deferred = Deferred()
        future = self.pool.submit(f, *args)

        def done(fut) -> None:
            def fire() -> None:
                try:
                    d.callback(fut.result())
                except BaseException as e:
                    d.errback(e)

            self._reactor.callFromThread(fire)

        future.add_done_callback(done)
        return d

    async def serve(self, proto: amp.AMP) -> None:
        """
        Log in on C{proto}, then run the lease loops until the connection
        is lost.
        """
        await proto.callRemote(Login, name=self.name, token=self.token)
        self._log.info("logged in as {name}; computing with {procs} processes", name=self.name, procs=self.procs)
        loops = [Deferred.fromCoroutine(self._loop(proto)) for _ in range(self.procs)]
        for d in loops:
            try:
                await d
            except ConnectionClosed:
                pass

    async def _loop(self, proto: amp.AMP) -> None:
        # The next lease is asked for while this one computes, and a result
        # is sent without waiting for its answer: the process never waits
        # for a round trip between two chunks.
        following = self._askLease(proto)
        while True:
            lease = await following
            if lease is None:
                return
            following = self._askLease(proto)
            value = 0
            done = 0
            wanted = True
            for a, b in slices(lease["start"], lease["stop"]):
                value += await self._inPool(computeChunk, lease["series"], a, b, lease["digits"])
                done += b - a
                if done < lease["stop"] - lease["start"]:
                    answer = await proto.callRemote(Progress, lease=lease["lease"], done=done)
                    if not answer["wanted"]:
                        wanted = False
                        break
            if not wanted:
                continue
            sent = proto.callRemote(Complete, lease=lease["lease"], job=lease["job"], index=lease["index"], value=value)
            sent.addCallbacks(self._completed, self._refused, callbackArgs=(lease,), errbackArgs=(lease,))

    @staticmethod
    def _askLease(proto: amp.AMP) -> Deferred:
        """
        A Lease call that fires with L{None} when the connection is lost
        (it may never be awaited then).
        """
        return proto.callRemote(Lease).addErrback(lambda f: f.trap(ConnectionClosed) and None)

    def _completed(self, answer: dict, lease: dict) -> None:
        self.chunksDone += 1
        self.termsDone += lease["stop"] - lease["start"]
        now = self._reactor.seconds()
        if not answer["accepted"] or now - self._reported >= 5:
            self._reported = now
            self._log.info("{chunks} chunks ({terms} terms) done; last: job {job} chunk {index}: {outcome}",
                           chunks=self.chunksDone, terms=self.termsDone, job=lease["job"], index=lease["index"],
                           outcome=answer["reason"])

    def _refused(self, failure, lease: dict) -> None:
        if failure.check(ConnectionClosed):
            return
        self._log.error("job {job} chunk {index} refused: {why}", job=lease["job"], index=lease["index"],
                        why=failure.value)


def connectEndpoint(reactor, text: str, cafile: str | None):
    """
    The client endpoint of C{--connect}: C{HOST:PORT} is TLS, verified
    (against C{cafile} if given); a Twisted client endpoint string
    (C{tcp:...}, C{tls:...}) is used as it is.
    """
    if text.startswith(("tcp:", "tls:", "unix:")):
        return endpoints.clientFromString(reactor, text)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--connect takes HOST:PORT or a client endpoint string, not {text!r}")
    return clientEndpoint(reactor, host.strip("[]"), int(port), tls=True, cafile=cafile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compute-worker", description="Compute chunks for a compute coordinator.")
    parser.add_argument("--connect", required=True, metavar="ENDPOINT",
                        help="the coordinator's worker door: HOST:PORT (TLS) or a client endpoint string")
    parser.add_argument("--token-file", required=True, metavar="F", help="a file with one line NAME:TOKEN")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes computing chunks")
    parser.add_argument("--cafile", help="PEM certificates to trust for the coordinator")
    args = parser.parse_args(argv)
    if args.procs < 1:
        parser.error("--procs must be at least 1")
    if args.cafile and not os.path.isfile(args.cafile):
        parser.error(f"--cafile {args.cafile}: no such file")
    try:
        name, token = readTokenFile(args.token_file)
    except (OSError, ValueError) as e:
        parser.error(f"--token-file {args.token_file}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    try:
        endpoint = connectEndpoint(reactor, args.connect, args.cafile)
    except ValueError as e:
        parser.error(str(e))
    worker = Worker(name, token, args.procs, reactor)
    client = ClientService(endpoint, Factory.forProtocol(WorkerProtocol),
                           retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=10.0))
    status: list[int] = []

    async def run() -> None:
        while True:
            proto: Any = await client.whenConnected(failAfterFailures=None)
            try:
                await worker.serve(proto)
            except LoginFailed as e:
                Logger().error("login refused: {why}", why=e)
                status.append(2)
                reactor.stop()
                return
            except amp.RemoteAmpError as e:
                Logger().error("coordinator error: {why}", why=e)
            except ConnectionClosed:
                pass
            # The connection is gone (or useless): drop it, and give the
            # service a moment to notice before asking it for the next one.
            if proto.transport is not None:
                proto.transport.loseConnection()
            await deferLater(reactor, 0.5)

    client.startService()
    Deferred.fromCoroutine(run()).addErrback(lambda f: Logger().failure("worker stopped", f))
    reactor.run()
    worker.pool.shutdown(wait=False, cancel_futures=True)
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
