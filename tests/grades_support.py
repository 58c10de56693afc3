"""
Test support for the grades service: a server whose SQLite queries run at
once in the calling thread, on an in-memory reactor, talked to through
L{StringTransport}s with no socket at all (L{World}); and for the tests
over real sockets, C{twistd grades} in a process of its own
(L{RunningGrades}) and a raw blocking client (L{Raw}).
"""

from __future__ import annotations

import os
import socket
import subprocess

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from coursenet.accounts import hashPassword, writePasswordFile
from coursenet.demo import RunningServer
from coursenet.procs import freePort, stopProcess
from grades.auth import makePortal
from grades.protocol import GradesFactory
from grades.store import SQLiteStore
from tests.bftp_support import FakeReactor, SyncThreadPool

PASSWORD = "correct horse"
#: Accounts of every test server: two students (the seed's DAN HACKER and
#: ADA LOVELACE of the demo data), two instructors, and one with no role.
STUDENTS = {"dan": "051883261", "ada": "200000001"}
INSTRUCTORS = {"mia": ["MATH"], "hal": ["HISTORY", "NETWORKS"]}
NOBODY = "zed"
#: The seed's dialogue and what the server must answer, byte for byte.
SEED = b"HELLO\nNAME 051883261\nGRADE MATH\nGRADE HISTORY\nEND\n"
SEED_REPLY = b"READY\nDAN HACKER\n87\n93\nBYE\n"


def writeAccounts(directory) -> str:
    """
    A password file with every test account, PASSWORD each; cheap scrypt
    parameters, so that a login costs microseconds.
    """
    path = os.path.join(str(directory), "passwd")
    names = [*STUDENTS, *INSTRUCTORS, NOBODY]
    writePasswordFile(path, {name: hashPassword(PASSWORD, n=16) for name in names})
    return path


class World:
    """
    One grades server on an in-memory reactor, SQLite in C{directory} with
    the demo data and the test accounts' roles.
    """

    def __init__(self, directory, publicDemo: bool = False, pool=None, **factoryArgs) -> None:
        """
        @param pool: where the store's queries run (by default at once, in
            the calling thread).
        """
        from coursenet.accounts import PasswordChecker

        self.reactor = FakeReactor()
        self.store = SQLiteStore(os.path.join(str(directory), "grades.sqlite"), self.reactor,
                                 pool=pool or self.reactor.getThreadPool())
        self.store.setupNow(STUDENTS, INSTRUCTORS, demo=True)
        checker = PasswordChecker(writeAccounts(directory), reactor=self.reactor)
        self.factory = GradesFactory(self.store, makePortal(self.store, checker), reactor=self.reactor,
                                     publicDemo=publicDemo, **factoryArgs)
        self._port = 40000

    def connect(self, host: str = "127.0.0.1") -> "Peer":
        self._port += 1
        return Peer(self.factory, host, self._port)

    def extended(self, user: str | None = None) -> "Peer":
        """
        A peer at the extended level, logged in as C{user}, output cleared.
        """
        peer = self.connect()
        peer.send("HELLO GRADES/2")
        if user is not None:
            peer.send(f"USER {user}")
            peer.send(f"PASS {PASSWORD}")
        lines = peer.lines()
        assert user is None or lines[-1].startswith(f"OK logged in as {user}"), lines
        return peer

    def close(self) -> None:
        self.store.close()


class HeldPool:
    """
    A thread pool that keeps every call until L{run} runs them, in the
    order given: to make queries finish out of order.
    """

    def __init__(self) -> None:
        self.calls: list = []
        self.holding = False

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        if not self.holding:
            return _runNow(onResult, f, *args, **kwargs)
        self.calls.append((onResult, f, args, kwargs))

    def run(self, order) -> None:
        calls, self.calls = self.calls, []
        for i in order(range(len(calls))):
            onResult, f, args, kwargs = calls[i]
            _runNow(onResult, f, *args, **kwargs)


_runNow = SyncThreadPool().callInThreadWithCallback


class Peer:
    def __init__(self, factory, host: str, port: int) -> None:
        addr = IPv4Address("TCP", host, port)
        self.proto = factory.buildProtocol(addr)
        self.transport = StringTransport(peerAddress=addr)
        self.proto.makeConnection(self.transport)

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8") + b"\n"
        self.proto.dataReceived(data)

    def output(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self) -> list[str]:
        return self.output().decode("utf-8").splitlines()

    def ask(self, line: str) -> list[str]:
        """
        Send one line; the reply lines it got.
        """
        self.send(line)
        return self.lines()


def RunningGrades(args: list[str], log, implementation: str = "twisted-epoll") -> RunningServer:
    """
    C{twistd grades} (or a twin: C{implementation} C{threaded} or
    C{forking}) in a process of its own on 127.0.0.1, with C{args}.
    """
    return RunningServer("grades", implementation, args, log)


class Raw:
    """
    A raw, blocking client: send bytes, read reply lines.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; got {self.buffer!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("utf-8")

    def ask(self, line: str) -> str:
        self.send(line.encode("utf-8") + b"\n")
        return self.line()

    def rest(self) -> bytes:
        """
        Everything until the server closes.
        """
        data = self.buffer
        while chunk := self.sock.recv(65536):
            data += chunk
        self.buffer = b""
        return data

    def close(self) -> None:
        self.sock.close()


def postgresBin(name: str) -> str | None:
    """
    A PostgreSQL server program: on the PATH, or where Debian's
    C{postgresql} package puts it (C{/usr/lib/postgresql/N/bin}).
    """
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class Postgres:
    """
    A PostgreSQL server of its own: C{initdb} into a temporary directory as
    an unprivileged user (C{nobody} when run as root: PostgreSQL refuses
    root), listening on 127.0.0.1 at a free port and on a socket in that
    directory, trusting local connections; stopped by its PID.
    """

    def __init__(self, maxConnections: int = 200) -> None:
        import pwd
        import tempfile
        import time

        initdb, postgres = postgresBin("initdb"), postgresBin("postgres")
        if initdb is None or postgres is None:
            raise FileNotFoundError("initdb/postgres not found: install Debian's postgresql package")
        self.dir = tempfile.mkdtemp(prefix="grades-pg-", dir="/tmp")
        runAs: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            runAs = ["runuser", "-u", "nobody", "--"]
        data = os.path.join(self.dir, "data")
        subprocess.run([*runAs, initdb, "-D", data, "-A", "trust", "-U", "grades", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd=self.dir)
        self.port = freePort()
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self._command = [
            *runAs, postgres, "-D", data, "-k", self.dir, "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
            "-c", f"max_connections={maxConnections}", "-c", "fsync=off", "-c", "synchronous_commit=off",
        ]
        self._start()
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE grades")

    def _start(self) -> None:
        import time

        import psycopg

        self.proc = subprocess.Popen(self._command, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url("postgres")).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("postgres did not start")
                time.sleep(0.1)

    def _shutDown(self) -> None:
        """
        A fast shutdown (SIGINT to the postmaster, whose PID its data
        directory names): clients are disconnected, not waited for.
        """
        import signal
        import time

        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                pid = int(f.readline())
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError):
            pass  # not running (any more)
        stopProcess(self.proc, timeout=20)

    def restart(self) -> None:
        """
        Stop the server (its clients' connections break) and start it again
        on the same data.
        """
        self._shutDown()
        self._start()

    def url(self, database: str = "grades") -> str:
        return f"postgresql://grades@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        import shutil

        self._shutDown()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
