"""
BFTP against pyftpdlib and a raw socket copy, in one run, on 127.0.0.1.

Every server is a separate process (C{twistd bftp}, pyftpdlib, a
C{socket.sendfile} loop) and every client too, so the bench process only
starts them, samples the server's CPU time and RSS with psutil, and checks
the SHA-256 of every file that moved: a wrong byte fails the run instead of
giving a figure.  Each case gets a fresh server (BFTP's in-memory digest
cache starts cold) and runs C{BFTP_BENCH_REPEAT} times (default 5), in
interleaved rounds (BFTP first in odd rounds, pyftpdlib in even ones);
the table shows the median run.  A file's digest, once computed, is kept
in its extended attribute (as BFTP does for a file served again); the
"digest not stored" row removes it before each GET, to show the cost of
a file's first download.

Times are measured by the client.  A single transfer is timed from its
command (BFTP GET/PUT; FTP's TYPE, PASV, data connection and RETR/STOR)
to the server's final reply; connecting and logging in come before and
are shown on their own (BFTP checks an scrypt hash, pyftpdlib's
DummyAuthorizer compares plain text).  The 300-client case is timed from
before the first connection to the last client's final reply, logins
included.  MB is 10**6 bytes.

    python -m bench bftp
    python -m bench.bftp_bench --quick      # 64 MiB, 20 clients: a dry run
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from coursenet.procs import freePort, stopProcess

MB = 1_000_000
USER, PASSWORD = "bench", "bench-secret"
HOST = "127.0.0.1"
BLOCK = 1 << 20

BIG = 1 << 30
SMALL = 10 * MB
CLIENTS = 300

# -- the bench process ---------------------------------------------------------


def _moreFiles() -> None:
    # 300 FTP clients hold a control, a data and a passive-listener socket
    # each: children get the hard limit on descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 65536)), hard))


def _here() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = _here() + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _worker(kind: str, spec: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bftp_bench", "--worker", kind, json.dumps(spec)],
        cwd=_here(), env=_env(), preexec_fn=_moreFiles, **kw,
    )


def _runClient(kind: str, spec: dict, timeout: float) -> dict:
    p = _worker(kind, spec, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError(f"{kind} client took more than {timeout} s")
    if p.returncode != 0:
        raise RuntimeError(f"{kind} client failed ({p.returncode}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


class Server:
    """
    A server process: started, waited for on its port, watched (CPU time,
    peak RSS), stopped by its pid.
    """

    def __init__(self, name: str, argv: list[str] | None, port: int, log: str, spec=None) -> None:
        import psutil

        self.name = name
        self._logFile = open(log, "ab")
        if argv is None:
            self.proc = _worker(name, spec, stdout=self._logFile, stderr=subprocess.STDOUT)
        else:
            self.proc = subprocess.Popen(
                argv, cwd=_here(), env=_env(), preexec_fn=_moreFiles,
                stdout=self._logFile, stderr=subprocess.STDOUT,
            )
        self.ps = psutil.Process(self.proc.pid)
        self.peakRSS = 0
        self._sampling = False
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {log}")
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{name} is not listening on {port}; see {log}")
                time.sleep(0.05)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def watch(self):
        """
        Sample the RSS every 20 ms until the returned function is called.
        """
        self._sampling = True
        self.peakRSS = self.rss()

        def sample():
            while self._sampling:
                try:
                    self.peakRSS = max(self.peakRSS, self.rss())
                except Exception:
                    return
                time.sleep(0.02)

        t = threading.Thread(target=sample, daemon=True)
        t.start()

        def stop():
            self._sampling = False
            t.join()
            return self.peakRSS

        return stop

    def stop(self) -> None:
        stopProcess(self.proc)
        self._logFile.close()


@dataclass
class Row:
    case: str
    peer: str | None  # the pyftpdlib row this one is compared with
    nbytes: int = 0
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    clientCPU: list[float] = field(default_factory=list)
    rss: int = 0
    failure: str | None = None
    note: str = ""
    #: Of each run's seconds, those spent connecting and logging in.
    logins: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """
        The median run (of an odd number; the slower middle of an even one).
        """
        return sorted(self.seconds)[len(self.seconds) // 2]

    @property
    def rate(self) -> float:
        return self.nbytes / self.best / MB


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _makeFile(path: str, size: int) -> str:
    """
    Write C{size} bytes that do not repeat at any 1 MiB offset (a random
    block, each copy stamped with its index) and return their SHA-256;
    their digest by every algorithm BFTP may negotiate goes into
    L{_DIGESTS}, to check what the client reports.
    """
    from bftp import digests

    base = bytearray(os.urandom(BLOCK))
    hashers = {name: digests.new(name) for name in digests.AVAILABLE}
    with open(path, "wb", buffering=0) as f:
        for i in range(-(-size // BLOCK)):
            base[:8] = i.to_bytes(8, "big")
            data = base[: min(BLOCK, size - i * BLOCK)]
            f.write(data)
            for h in hashers.values():
                h.update(data)
        os.fsync(f.fileno())
    sha256 = hashers["sha256"].hexdigest()
    _DIGESTS[sha256] = {name: h.hexdigest() for name, h in hashers.items()}
    return sha256


#: SHA-256 of a test file -> its digest by each algorithm.
_DIGESTS: dict[str, dict[str, str]] = {}


class Bench:
    def __init__(self, top: str, big: int, small: int, clients: int, repeat: int) -> None:
        from coursenet.tls import ensureDevCertificate

        self.top = top
        self.big, self.small, self.clients, self.repeat = big, small, clients, repeat
        self.root = os.path.join(top, "root")
        self.dl = os.path.join(top, "dl")
        self.logs = os.path.join(top, "logs")
        for d in (self.root, self.dl, self.logs):
            os.makedirs(d)
        self.cert, self.key = ensureDevCertificate(os.path.join(top, "tls"), "localhost")
        print(f"writing {big} + {small} bytes of test data under {top}", flush=True)
        self.bigDigest = _makeFile(os.path.join(self.root, "big.bin"), big)
        self.smallDigest = _makeFile(os.path.join(self.root, "small.bin"), small)
        self.twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.rows: dict[str, Row] = {}
        self.servers: list[Server] = []
        #: Each client, right before its timer starts, writes a file a
        #: quarter larger than the transfer writes next to the test data
        #: and removes it (L{_prime}).  On this VM, page-cache memory freed
        #: a few seconds ago has been handed back to the host
        #: (virtio-balloon free page reporting), and writing a file into
        #: such pages costs 1.5 to 3 s of CPU per GiB (the host's page
        #: faults, seen by the guest as a slow copy), against 0.2 s into
        #: the pages of a file just removed.  Which one a transfer met
        #: depended on how long its server and client took to start
        #: (twistd longer than pyftpdlib).  Primed, every transfer on both
        #: sides starts from the same state: that of a machine where files
        #: come and go.  (Touching and freeing anonymous memory or a tmpfs
        #: file does not do it: measured.)  BFTP_BENCH_PRIME=0 turns it off.
        self.prime = os.environ.get("BFTP_BENCH_PRIME", "1") != "0"

    # servers

    def bftpServer(self, tls: bool = False) -> tuple[Server, int]:
        port = freePort()
        listen = (
            f"ssl:{port}:interface={HOST}:privateKey={self.key}:certKey={self.cert}:backlog=1024"
            if tls else f"tcp:{port}:interface={HOST}:backlog=1024"
        )
        argv = [
            self.twistd, "-n", "--pidfile=", "bftp", "--root", self.root,
            "--user", f"{USER}:{PASSWORD}", "--listen", listen,
            "--max-per-address", "400",
        ]
        s = Server("bftp", argv, port, os.path.join(self.logs, "bftp.log"))
        self.servers.append(s)
        return s, port

    def ftpServer(self, tls: bool = False) -> tuple[Server, int]:
        port = freePort()
        spec = {"port": port, "root": self.root, "tls": tls, "cert": self.cert, "key": self.key}
        s = Server("ftp-server", None, port, os.path.join(self.logs, "pyftpdlib.log"), spec)
        self.servers.append(s)
        return s, port

    def rawServer(self, path: str) -> tuple[Server, int]:
        port = freePort()
        s = Server("raw-server", None, port, os.path.join(self.logs, "raw.log"), {"port": port, "path": path})
        self.servers.append(s)
        return s, port

    def stop(self, s: Server) -> None:
        s.stop()
        self.servers.remove(s)

    # cases

    def wanted(self, case: str) -> bool:
        """
        Whether C{case} runs: all of them, or those BFTP_BENCH_ONLY (a
        regular expression) finds in their name.
        """
        only = os.environ.get("BFTP_BENCH_ONLY")
        return not only or re.search(only, case) is not None

    def row(self, case: str, peer: str | None, nbytes: int) -> Row:
        r = self.rows.setdefault(case, Row(case, peer))
        r.nbytes = nbytes
        return r

    def _timed(self, row: Row, server: Server, kind: str, spec: dict, timeout: float) -> dict | None:
        if self.prime:
            spec = {**spec, "prime": {"path": os.path.join(self.top, "prime"), "size": row.nbytes + row.nbytes // 4}}
        cpu0 = server.cpu()
        stopWatch = server.watch()
        try:
            result = _runClient(kind, spec, timeout)
        except RuntimeError as e:
            row.failure = str(e)
            return None
        finally:
            row.rss = max(row.rss, stopWatch())
        row.cpu.append(server.cpu() - cpu0)
        row.clientCPU.append(result["clientCPU"])
        row.seconds.append(result["seconds"])
        print(f"  {row.case}: {result['seconds']:.2f} s, server CPU {row.cpu[-1]:.2f} s, client CPU {result['clientCPU']:.2f} s", flush=True)
        return result

    def _check(self, row: Row, path: str, size: int, digest: str) -> None:
        try:
            got = os.path.getsize(path)
            if got != size:
                row.failure = f"{path}: {got} bytes, expected {size}"
            elif _sha256(path) != digest:
                row.failure = f"{path}: SHA-256 differs from the original"
        except OSError as e:
            row.failure = f"{path}: {e}"
        if row.failure:
            row.seconds.clear()

    def _remove(self, *paths: str) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def raw(self) -> None:
        row = self.row("raw socket copy (sendfile -> recv_into)", None, self.big)
        src = os.path.join(self.root, "big.bin")
        s, port = self.rawServer(src)
        local = os.path.join(self.dl, "raw.bin")
        try:
            self._timed(row, s, "raw-client", {"port": port, "local": local, "size": self.big}, 300)
            self._check(row, local, self.big, self.bigDigest)
        finally:
            self.stop(s)
            self._remove(local)

    def transfer(self, proto: str, op: str, tls: bool, cold: bool = False) -> None:
        ftpName = {"GET": "RETR", "PUT": "STOR"}[op]
        peer = f"pyftpdlib {ftpName} {'FTPS' if tls else 'plain'}"
        if proto == "bftp":
            case = f"BFTP {op} {'TLS' if tls else 'plain'}" + (" (digest not stored)" if cold else "")
        else:
            case, peer = peer, None
        if not self.wanted(case):
            return
        if cold:
            from bftp.digests import AVAILABLE
            from bftp.transfer import digestXattr

            for name in AVAILABLE:
                try:
                    os.removexattr(os.path.join(self.root, "big.bin"), digestXattr(name))
                except OSError:
                    pass
        row = self.row(case, peer, self.big)
        s, port = (self.bftpServer if proto == "bftp" else self.ftpServer)(tls)
        tag = case.replace(" ", "-")
        local = os.path.join(self.dl, tag + ".bin")
        remote = "up-" + tag + ".bin"
        spec = {
            "port": port, "tls": tls, "cafile": self.cert, "op": op,
            "remote": "big.bin" if op == "GET" else remote,
            "local": local if op == "GET" else os.path.join(self.root, "big.bin"),
        }
        try:
            result = self._timed(row, s, proto + "-transfer", spec, 600)
            if result is not None:
                row.logins.append(result.get("login", 0.0))
                expected = _DIGESTS[self.bigDigest].get(result.get("algorithm", "sha256"))
                if "digest" in result and result["digest"] != expected:
                    row.failure = f"{case}: client reported {result.get('algorithm')} {result['digest']}"
                    row.seconds.clear()
                else:
                    path = local if op == "GET" else os.path.join(self.root, remote)
                    self._check(row, path, self.big, self.bigDigest)
        finally:
            self.stop(s)
            self._remove(local, os.path.join(self.root, remote))

    def many(self, proto: str) -> None:
        n = self.clients
        peer = f"pyftpdlib {n} x RETR {self.small // MB} MB"
        if proto == "bftp":
            case = f"BFTP {n} x GET {self.small // MB} MB"
        else:
            case, peer = peer, None
        if not self.wanted(case):
            return
        row = self.row(case, peer, n * self.small)
        s, port = (self.bftpServer if proto == "bftp" else self.ftpServer)(False)
        idle = s.rss()
        prefix = os.path.join(self.dl, proto + "-many-")
        paths = [f"{prefix}{i}" for i in range(n)]
        try:
            result = self._timed(row, s, proto + "-many", {"port": port, "n": n, "prefix": prefix}, 600)
            if result is not None:
                load = f"one Twisted process, bftp.client, {n} connections" if proto == "bftp" else f"one process, ftplib, {n} threads"
                row.note = f"load: {load}; idle RSS {idle / MB:.0f} MB; slowest client {result['slowest']:.2f} s"
                if "login" in result:
                    row.note += f"; all logged in after {result['login']:.2f} s"
                for p in paths:
                    self._check(row, p, self.small, self.smallDigest)
                    if row.failure:
                        break
        finally:
            self.stop(s)
            self._remove(*paths)

    # the whole run

    def run(self) -> None:
        for i in range(self.repeat):
            print(f"round {i + 1} of {self.repeat}: 1 GiB transfers, then {self.clients} concurrent clients", flush=True)
            # Who goes first alternates from round to round, so neither
            # always meets what the other left behind (page cache, dirty
            # pages, a warm CPU cache).
            order = ("bftp", "ftp") if i % 2 == 0 else ("ftp", "bftp")
            self.raw()
            for tls in (False, True):
                for op in ("GET", "PUT"):
                    for proto in order:
                        self.transfer(proto, op, tls)
            self.transfer("bftp", "GET", False, cold=True)
            for proto in order:
                self.many(proto)

    def table(self) -> str:
        raw = self.rows.get("raw socket copy (sendfile -> recv_into)")
        rawRate = raw.rate if raw and raw.seconds else None
        head = f"| {'case':<40} | {'MB/s':>7} | {'seconds':>7} | {'vs pyftpdlib':>12} | {'vs raw':>6} | {'server CPU s':>12} | {'client CPU s':>12} | {'server RSS peak MB':>18} |"
        lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
        notes = []
        for r in self.rows.values():
            if r.failure or not r.seconds:
                lines.append(f"| {r.case:<40} | {'FAILED':>7} | {'':>7} | {'':>12} | {'':>6} | {'':>12} | {'':>12} | {'':>18} |")
                notes.append(f"{r.case}: {r.failure}")
                continue
            peer = self.rows.get(r.peer) if r.peer else None
            if r.case.startswith("pyftpdlib"):
                vsPeer = "1.00"
            elif peer and peer.seconds:
                vsPeer = f"{r.rate / peer.rate:.2f}"
            else:
                vsPeer = "-"
            vsRaw = f"{r.rate / rawRate:.2f}" if rawRate else "-"
            # CPU of the fastest run
            i = r.seconds.index(r.best)
            cpu, ccpu = r.cpu[i], r.clientCPU[i]
            lines.append(
                f"| {r.case:<40} | {r.rate:>7.0f} | {r.best:>7.2f} | {vsPeer:>12} | {vsRaw:>6} | {cpu:>12.2f} | {ccpu:>12.2f} | {r.rss / MB:>18.0f} |"
            )
            if r.note:
                notes.append(f"{r.case}: {r.note}")
            elif len(r.logins) == len(r.seconds):
                notes.append(f"{r.case}: connecting and logging in took {r.logins[i]:.3f} s before the median run's {r.best:.2f} s")
        return "\n".join(lines + [""] + [f"- {n}" for n in notes])

    def failed(self) -> bool:
        return any(r.failure or not r.seconds for r in self.rows.values())


def main(quick: bool = False) -> int:
    quick = quick or bool(os.environ.get("BFTP_BENCH_QUICK"))
    big, small, clients = (64 << 20, MB, 20) if quick else (BIG, SMALL, CLIENTS)
    repeat = int(os.environ.get("BFTP_BENCH_REPEAT", "5"))
    free = shutil.disk_usage(tempfile.gettempdir()).free
    # The sources, then at most the largest transfer's copies and the
    # file that primes the page cache before it (1.25 times its size).
    largest = max(big, clients * small)
    needs = big + small + largest + largest + largest // 4
    if free < needs + (1 << 30):
        print(f"bftp bench: needs {needs >> 20} MiB free in {tempfile.gettempdir()}, has {free >> 20} MiB")
        return 1
    top = tempfile.mkdtemp(prefix="bftp-bench-")
    bench = None
    started = time.monotonic()
    try:
        bench = Bench(top, big, small, clients, repeat)
        bench.run()
    finally:
        if bench is not None:
            for s in list(bench.servers):
                bench.stop(s)
        shutil.rmtree(top, ignore_errors=True)
    print()
    print(f"BFTP vs pyftpdlib, {big} byte file, {clients} clients x {small} bytes (median of {repeat} rounds); "
          f"{os.cpu_count()} CPUs; {time.monotonic() - started:.0f} s in all")
    print(bench.table(), flush=True)
    return 1 if bench.failed() else 0


# -- worker processes: servers and clients -------------------------------------


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_CPU0 = _cpu()


def _prime(spec: dict) -> None:
    """
    Write a file of C{spec["prime"]["size"]} bytes and remove it, then
    start this client's CPU count afresh: see L{Bench.prime}.
    """
    global _CPU0
    prime = spec.get("prime")
    if prime:
        block = bytes(BLOCK)
        fd = os.open(prime["path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(0, prime["size"], BLOCK):
                os.write(fd, block)
        finally:
            os.close(fd)
            os.unlink(prime["path"])
    _CPU0 = _cpu()


def _report(**kw) -> None:
    """
    Hand the result to the bench process, with this client's CPU time.
    """
    print(json.dumps({"clientCPU": _cpu() - _CPU0, **kw}), flush=True)


def _ftpServer(spec: dict) -> None:
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.basicConfig(level=logging.WARNING)
    auth = DummyAuthorizer()
    auth.add_user(USER, PASSWORD, spec["root"], perm="elradfmw")
    if spec["tls"]:
        handler = TLS_FTPHandler
        handler.certfile = spec["cert"]
        handler.keyfile = spec["key"]
        handler.tls_control_required = True
        handler.tls_data_required = True
    else:
        handler = FTPHandler
    handler.authorizer = auth
    # Listen like the BFTP server does: a deep accept queue for 300 clients.
    server = FTPServer((HOST, spec["port"]), handler, backlog=1024)
    server.max_cons = 0
    server.serve_forever()


def _rawServer(spec: dict) -> None:
    with socket.create_server((HOST, spec["port"]), backlog=16) as srv:
        # The first connection is Server's readiness probe.
        srv.accept()[0].close()
        conn, _ = srv.accept()
        with conn, open(spec["path"], "rb") as f:
            conn.sendfile(f)


def _rawClient(spec: dict) -> None:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    _prime(spec)
    t0 = time.perf_counter()
    with socket.create_connection((HOST, spec["port"])) as s, open(spec["local"], "wb", buffering=0) as f:
        while n := s.recv_into(buf):
            f.write(view[:n])
    _report(seconds=time.perf_counter() - t0)


def _ftp(spec: dict):
    import ftplib
    import ssl

    if spec.get("tls"):
        ctx = ssl.create_default_context(cafile=spec["cafile"])
        ftp = ftplib.FTP_TLS(context=ctx, timeout=60)
        ftp.connect(HOST, spec["port"])
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
    else:
        ftp = ftplib.FTP(timeout=60)
        ftp.connect(HOST, spec["port"])
        ftp.login(USER, PASSWORD)
    return ftp


#: ftplib reads 8 KiB at a time unless told; a larger block keeps the
#: Python client from being what is measured.
_FTP_BLOCK = 256 * 1024


def _ftpTransfer(spec: dict) -> None:
    import ftplib  # noqa: F401  (imported before the timer, as BFTP's client is)
    import ssl  # noqa: F401

    t0 = time.perf_counter()
    ftp = _ftp(spec)
    login = time.perf_counter() - t0
    _prime(spec)
    t1 = time.perf_counter()
    if spec["op"] == "GET":
        with open(spec["local"], "wb", buffering=0) as f:
            ftp.retrbinary(f"RETR {spec['remote']}", f.write, blocksize=_FTP_BLOCK)
    else:
        with open(spec["local"], "rb") as f:
            ftp.storbinary(f"STOR {spec['remote']}", f, blocksize=_FTP_BLOCK)
    t2 = time.perf_counter()
    ftp.quit()
    _report(seconds=t2 - t1, login=login)


def _ftpMany(spec: dict) -> None:
    n = spec["n"]
    errors: list[str] = []
    ends: list[float] = []
    start = threading.Barrier(n + 1)

    def one(i: int) -> None:
        try:
            start.wait()
            ftp = _ftp(spec)
            with open(f"{spec['prefix']}{i}", "wb", buffering=0) as f:
                ftp.retrbinary("RETR small.bin", f.write, blocksize=_FTP_BLOCK)
            ends.append(time.perf_counter())
            ftp.quit()
        except Exception as e:
            errors.append(f"client {i}: {e!r}")

    import ftplib  # noqa: F401
    import ssl  # noqa: F401

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    _prime(spec)
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(600)
    if errors:
        raise SystemExit(f"{len(errors)} of {n} FTP clients failed: {errors[:5]}")
    _report(seconds=max(ends) - t0, slowest=max(ends) - t0)


def _bftpTransfer(spec: dict) -> None:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    from bftp.client import connect

    async def run(reactor):
        t0 = time.perf_counter()
        client = await connect(reactor, HOST, spec["port"], tls=spec["tls"], cafile=spec["cafile"])
        await client.login(USER, PASSWORD)
        login = time.perf_counter() - t0
        _prime(spec)
        t1 = time.perf_counter()
        if spec["op"] == "GET":
            digest = await client.get(spec["remote"], spec["local"], resume=False)
        else:
            digest = await client.put(spec["local"], spec["remote"])
        t2 = time.perf_counter()
        await client.quit()
        _report(seconds=t2 - t1, login=login, digest=digest, algorithm=client.digest)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


def _bftpMany(spec: dict) -> None:
    from twisted.internet.defer import Deferred, DeferredList
    from twisted.internet.task import react

    from bftp.client import connect

    n = spec["n"]
    ends: list[float] = []
    logins: list[float] = []

    async def one(reactor, i: int, t0: float) -> None:
        client = await connect(reactor, HOST, spec["port"], timeout=120)
        await client.login(USER, PASSWORD)
        logins.append(time.perf_counter() - t0)
        await client.get("small.bin", f"{spec['prefix']}{i}", resume=False)
        ends.append(time.perf_counter() - t0)
        await client.quit()

    async def run(reactor):
        _prime(spec)
        t0 = time.perf_counter()
        results = await DeferredList(
            [Deferred.fromCoroutine(one(reactor, i, t0)) for i in range(n)], consumeErrors=True
        )
        errors = [f"client {i}: {r.getErrorMessage()}" for i, (ok, r) in enumerate(results) if not ok]
        if errors:
            raise SystemExit(f"{len(errors)} of {n} BFTP clients failed: {errors[:5]}")
        _report(seconds=max(ends), slowest=max(ends), login=max(logins))

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


_WORKERS = {
    "ftp-server": _ftpServer,
    "raw-server": _rawServer,
    "raw-client": _rawClient,
    "ftp-transfer": _ftpTransfer,
    "ftp-many": _ftpMany,
    "bftp-transfer": _bftpTransfer,
    "bftp-many": _bftpMany,
}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
        sys.exit(0)
    sys.exit(main(quick="--quick" in sys.argv[1:]))
