"""
Helpers for the compute tests: a C{twistd compute} coordinator and
C{compute-worker} processes on 127.0.0.1, the seed's parallel C{bc} pipes,
and a stdlib XML-RPC wait loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from decimal import Decimal, localcontext

from coursenet.procs import freePort, stopProcess, waitForPort

BIN = os.path.dirname(sys.executable)

#: The seed's bc program (the course slides' IPC/pipe_to_bc_3.py).
BC_PSUM = """
define psum(m,n) {
    auto i
    s=0
    for (i=m; i < n; ++i)
        s = s + (-1)^i * 4.0/(2*i+1.0)
    return (s)
}
"""


def bcPipes(terms: int, chunk: int, scale: int = 60, timeout: float | None = None) -> str:
    """
    The seed's way: one C{bc} process per chunk over pipes, all at once,
    the outputs added exactly (with enough precision for every digit,
    where the seed's C{getcontext().prec = 60} would round the last one).

    @raise subprocess.TimeoutExpired: after C{timeout} seconds (the
        processes are killed).
    """
    procs = []
    env = {**os.environ, "BC_LINE_LENGTH": "0"}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for start in range(0, terms, chunk):
            p = subprocess.Popen(["bc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            procs.append(p)
            assert p.stdin is not None
            p.stdin.write(BC_PSUM + f"scale={scale}\npsum({start},{min(start + chunk, terms)})\n")
            p.stdin.close()
        total = Decimal(0)
        with localcontext() as ctx:
            ctx.prec = scale + 20
            for p in procs:
                assert p.stdout is not None
                p.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
                total += Decimal(p.stdout.read().strip())
        return f"{total:.{scale}f}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()


@dataclass
class Coordinator:
    """
    A C{twistd compute} process: XML-RPC on C{rpcPort}, TLS AMP for workers
    on C{workerPort}, one token C{NAME:TOKEN} in C{tokenFile}.
    """

    tmp: str
    cert: str
    key: str
    extra: list[str] = field(default_factory=list)
    rpcPort: int = 0
    workerPort: int = 0
    proc: subprocess.Popen | None = None
    tokenFile: str = ""
    workers: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rpcPort = self.rpcPort or freePort()
        self.workerPort = self.workerPort or freePort()
        self.tokenFile = os.path.join(self.tmp, "worker.token")
        with open(self.tokenFile, "w") as f:
            f.write("w1:tok-en\n")
        self.db = os.path.join(self.tmp, "jobs.sqlite")

    def start(self, leaseTimeout: float = 30.0) -> "Coordinator":
        command = [
            os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile", os.path.join(self.tmp, "coordinator.log"),
            "compute", "--rpc", f"tcp:{self.rpcPort}:interface=127.0.0.1",
            "--workers", f"tcp:{self.workerPort}:interface=127.0.0.1",
            "--tls-cert", self.cert, "--tls-key", self.key, "--user", "w1:tok-en",
            "--db", self.db, "--lease-timeout", str(leaseTimeout), *self.extra,
        ]
        self.proc = subprocess.Popen(command, cwd=self.tmp)
        waitForPort(self.rpcPort, self.proc)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rpcPort}/"

    def proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.url)

    def worker(self, procs: int = 1, tokenFile: str | None = None) -> subprocess.Popen:
        """
        Start a C{compute-worker} in a session of its own (so a SIGKILL to
        its group takes its computing processes too).
        """
        p = subprocess.Popen(
            [os.path.join(BIN, "compute-worker"), "--connect", f"127.0.0.1:{self.workerPort}",
             "--cafile", self.cert, "--token-file", tokenFile or self.tokenFile, "--procs", str(procs)],
            start_new_session=True, stderr=subprocess.PIPE, text=True,
        )
        self.workers.append(p)
        return p

    def kill(self) -> None:
        """
        SIGKILL the coordinator: no clean shutdown, only what the store kept.
        """
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        for p in self.workers:
            killGroup(p)
        if self.proc is not None:
            stopProcess(self.proc)


def killGroup(p: subprocess.Popen) -> None:
    """
    SIGKILL a process started with C{start_new_session} and its children.
    """
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def waitFor(proxy, job: int, predicate, timeout: float = 60.0) -> dict:
    """
    Poll C{status(job)} until C{predicate(status)}; the last status.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = proxy.status(job)
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last status {status}")
        time.sleep(0.05)


class DaskCluster:
    """
    A real C{dask.distributed} scheduler and C{workers} single-threaded
    workers on 127.0.0.1, each a process of its own session.
    """

    def __init__(self, tmp: str, workers: int = 2) -> None:
        self.port = freePort()
        dask = os.path.join(BIN, "dask")
        common = ["--no-dashboard"]
        self.scheduler = subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), *common],
            cwd=tmp, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        waitForPort(self.port, self.scheduler)
        self.workers = [
            subprocess.Popen(
                [dask, "worker", f"tcp://127.0.0.1:{self.port}", "--host", "127.0.0.1", "--nthreads", "1",
                 "--no-nanny", "--local-directory", tmp, *common],
                cwd=tmp, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(workers)
        ]
        self._waitForWorkers(workers)

    def _waitForWorkers(self, count: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(count, timeout=timeout)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            killGroup(p)
