"""
C{twistd compute}: the coordinator, with its XML-RPC front door and its AMP
door for workers (or a Dask cluster behind it).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from twisted.application import service, strports
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from compute.engine import DaskEngine, parseEngine
from compute.jobs import Scheduler
from compute.protocol import WorkerDoorFactory
from compute.rpc import makeSite
from compute.interfaces import IJobStore
from compute.store import MemoryJobStore, SQLiteJobStore
from coursenet.accounts import PasswordChecker
from coursenet.admission import Admission
from coursenet.options import AccountOptionsMixin, AdmissionOptionsMixin, atLeast
from coursenet.throttle import GuessOptionsMixin
from coursenet.tls import serverContextFactory

DEFAULT_RPC = "tcp:8790:interface=127.0.0.1"
DEFAULT_DB = "var/compute/jobs.sqlite"


class Options(AccountOptionsMixin, AdmissionOptionsMixin, GuessOptionsMixin, usage.Options):
    synopsis = "--workers ENDPOINT --passwd FILE [--rpc ENDPOINT] [options]"
    longdesc = (
        "The compute coordinator (docs/compute.md): jobs submitted over XML-RPC on --rpc"
        " (default " + DEFAULT_RPC + "), split into chunks and leased to compute-worker"
        " processes over AMP on --workers (TLS, tokens from --passwd/--user), or run on a Dask"
        " cluster with --engine dask://HOST:PORT.  Jobs and finished chunks are kept in --db."
    )
    optFlags = [
        ["allow-plain", None, "let --workers be a plain TCP endpoint (tokens in clear; tests only)"],
    ]
    optParameters = [
        ["rpc", None, DEFAULT_RPC, "endpoint of the XML-RPC front door"],
        ["workers", None, None,
         "endpoint of the AMP door for workers: ssl:PORT:privateKey=...:certKey=..., or tcp:PORT with --tls-cert/--tls-key"],
        ["tls-cert", None, None, "PEM certificate: TLS on a tcp: --workers endpoint"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
        ["passwd", None, None, "password file of the workers' tokens (coursenet-passwd FILE NAME)"],
        ["db", None, DEFAULT_DB, "SQLite file of jobs and finished chunks (:memory: for none)"],
        ["engine", None, "workers", "where chunks run: 'workers' (the AMP door) or dask://HOST:PORT"],
        ["lease-timeout", None, 30.0, "seconds a chunk's lease lives without a progress report", float],
        ["max-jobs", None, 100, "jobs queued or running at once", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["local-workers"] = []

    def opt_local_worker(self, arguments: str) -> None:
        """
        Run a compute-worker with these arguments as a child process,
        restarted if it dies (repeatable), e.g. "--connect 127.0.0.1:8791
        --cafile cert.pem --token-file w.token --procs 2"
        """
        try:
            self["local-workers"].append(shlex.split(arguments))
        except ValueError as e:
            raise usage.UsageError(f"--local-worker: {e}")

    def postOptions(self) -> None:
        # Files readable, endpoints parseable: one line naming the option,
        # before anything listens.
        self.checkStartOptions([("rpc", self["rpc"]), *([("workers", self["workers"])] if self["workers"] else [])])
        self.checkAdmission()
        self.setdefault("users", [])
        try:
            self["dask"] = parseEngine(self["engine"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["workers"]:
            if not (self["passwd"] or self["users"]):
                raise usage.UsageError("--workers needs tokens: give --passwd FILE or --user NAME:TOKEN")
            tls = self["workers"].startswith("ssl:") or self["tls-cert"]
            if not tls and not self["allow-plain"]:
                raise usage.UsageError(
                    "--workers would take tokens in clear: use an ssl: endpoint or --tls-cert/--tls-key"
                    " (or --allow-plain)")
        elif self["dask"] is None:
            raise usage.UsageError("no workers: give --workers ENDPOINT or --engine dask://HOST:PORT")
        if not self["lease-timeout"] > 0:
            raise usage.UsageError(f"--lease-timeout {self['lease-timeout']:g}: must be more than 0 seconds")
        atLeast("max-jobs", self["max-jobs"], 1)


class CoordinatorService(service.MultiService):
    """
    The scheduler, resumed from the store before the doors open; on stop,
    the doors close, then the engine, then the store.
    """

    def __init__(self, scheduler: Scheduler, engine: DaskEngine | None = None) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.engine = engine

    def startService(self) -> None:
        # Read once at start, before any listener serves: nothing waits on it.
        self.scheduler.resume()
        super().startService()
        if self.engine is not None:
            self.engine.start()

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        self.scheduler.stop()
        if self.engine is not None:
            d = DeferredList([d, self.engine.stop()], consumeErrors=True)
        return d.addBoth(lambda _: self.scheduler.store.close())


def makeCoordinator(options: Options, reactor=None) -> CoordinatorService:
    """
    The coordinator the options describe, on C{reactor}.
    """
    store: IJobStore = MemoryJobStore() if options["db"] == ":memory:" else SQLiteJobStore(options["db"], reactor=reactor)
    scheduler = Scheduler(store, reactor=reactor, leaseTimeout=options["lease-timeout"],
                          maxActive=options["max-jobs"])
    engine = DaskEngine(scheduler, options["dask"], reactor=reactor) if options["dask"] else None
    top = CoordinatorService(scheduler, engine)
    strports.service(options["rpc"], makeSite(scheduler, reactor)).setServiceParent(top)
    if options["workers"]:
        checker = PasswordChecker(options["passwd"], options["users"], reactor=reactor, rule=options.guessRule())
        factory = WorkerDoorFactory(
            scheduler, checker, reactor=reactor,
            admission=Admission(options["max-connections"], options["max-per-address"]),
        )
        wrapped: Any = factory
        if options["tls-cert"] and not options["workers"].startswith("ssl:"):
            wrapped = TLSMemoryBIOFactory(serverContextFactory(options["tls-cert"], options["tls-key"]), False, factory)
        strports.service(options["workers"], wrapped).setServiceParent(top)
    if options["local-workers"]:
        from twisted.runner.procmon import ProcessMonitor

        monitor = ProcessMonitor(reactor) if reactor is not None else ProcessMonitor()
        for n, arguments in enumerate(options["local-workers"]):
            monitor.addProcess(f"worker{n}", [sys.executable, "-m", "compute.worker", *arguments],
                               env=dict(os.environ))
        monitor.setServiceParent(top)
    return top


def makeService(options: Options) -> service.IService:
    return makeCoordinator(options)
