"""
Grades benchmark: point lookups per second and p99 latency at 1, 50 and 500
clients, one lookup at a time and pipelined, for:

  - C{twistd grades} on SQLite (the Twisted server, its store's thread pool);
  - C{grades-threaded} on SQLite (the same protocol code, a thread per
    connection);
  - PostgreSQL itself answering the same single-row SELECT to psycopg 3
    clients (pipelined: psycopg's pipeline mode);

all in the same run, on one machine, with the same data (10,000 students)
and the same client style: asyncio clients spread over load processes,
each client asking for random ids.  A lookup is C{NAME id} (one
C{SELECT name FROM students WHERE id = ?}) or that SELECT.  Figures and
ratios to PostgreSQL are printed as a table (docs/benchmarks.md).

Run: C{make bench BENCH_ARGS=grades} (about 3 minutes).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from coursenet.procs import stopProcess

STUDENTS = 10_000
CLIENTS = tuple(int(n) for n in os.environ.get("GRADES_BENCH_CLIENTS", "1,50,500").split(","))
#: Lookups a pipelining client has in flight.
DEPTH = 16
SECONDS = float(os.environ.get("GRADES_BENCH_SECONDS", "4"))
LOADERS = 2
BIN = os.path.dirname(sys.executable)
QUERY = "SELECT name FROM students WHERE id = %s"


def studentId(i: int) -> str:
    return f"7{i:08d}"


# -- load processes ----------------------------------------------------------------


async def _gradesClient(port: int, depth: int, start: float, stop: float, lat: list, counts: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HELLO GRADES/2\n")
    await reader.readline()
    rng = random.Random()
    await asyncio.sleep(max(0.0, start - time.time()))
    while time.time() < stop:
        t = time.perf_counter()
        writer.write(b"".join(b"NAME %s\n" % studentId(rng.randrange(STUDENTS)).encode() for _ in range(depth)))
        for _ in range(depth):
            line = await reader.readline()
            if line.startswith(b"OK "):
                counts[0] += 1
            else:
                counts[1] += 1
            lat.append(time.perf_counter() - t)
    writer.write(b"END\n")
    writer.close()


async def _postgresClient(url: str, depth: int, start: float, stop: float, lat: list, counts: list) -> None:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    rng = random.Random()
    await asyncio.sleep(max(0.0, start - time.time()))
    try:
        if depth == 1:
            while time.time() < stop:
                t = time.perf_counter()
                cursor = await conn.execute(QUERY, (studentId(rng.randrange(STUDENTS)),))
                row = await cursor.fetchone()
                counts[0 if row else 1] += 1
                lat.append(time.perf_counter() - t)
            return
        async with conn.pipeline() as pipeline:
            while time.time() < stop:
                t = time.perf_counter()
                cursors = [await conn.execute(QUERY, (studentId(rng.randrange(STUDENTS)),)) for _ in range(depth)]
                await pipeline.sync()
                for cursor in cursors:
                    row = await cursor.fetchone()
                    counts[0 if row else 1] += 1
                    lat.append(time.perf_counter() - t)
    finally:
        await conn.close()


def load(argv: list[str]) -> None:
    """
    In a load process: C{KIND TARGET CLIENTS DEPTH START STOP}; prints
    JSON {ops, errors, latencies (a sample)}.
    """
    kind, target, clients, depth, start, stop = argv
    lat: list[float] = []
    counts = [0, 0]

    async def run() -> None:
        client = _gradesClient if kind == "grades" else _postgresClient
        address = int(target) if kind == "grades" else target
        results = await asyncio.gather(
            *(client(address, int(depth), float(start), float(stop), lat, counts) for _ in range(int(clients))),  # type: ignore[arg-type]
            return_exceptions=True,
        )
        counts[1] += sum(isinstance(r, BaseException) for r in results)

    asyncio.run(run())
    sample = lat if len(lat) <= 50_000 else random.sample(lat, 50_000)
    print(json.dumps({"ops": counts[0], "errors": counts[1], "latencies": sample}))


def measure(kind: str, target: str, clients: int, depth: int) -> tuple[float, float, int]:
    """
    Lookups per second, p99 in ms and errors, for C{clients} clients over
    the load processes.
    """
    loaders = 1 if clients == 1 else LOADERS
    setup = 2.0 + clients / 100
    start = time.time() + setup
    stop = start + SECONDS
    share = [clients // loaders + (i < clients % loaders) for i in range(loaders)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.grades_bench", "--load", kind, target, str(n), str(depth),
                          str(start), str(stop)], stdout=subprocess.PIPE)
        for n in share
    ]
    ops = errors = 0
    lat: list[float] = []
    for p in procs:
        out, _ = p.communicate(timeout=setup + SECONDS + 60)
        result = json.loads(out)
        ops += result["ops"]
        errors += result["errors"]
        lat += result["latencies"]
    lat.sort()
    p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
    return ops / SECONDS, p99, errors


# -- the run -----------------------------------------------------------------------


def fillSQLite(path: str) -> None:
    from grades.store import SQLiteStore

    store = SQLiteStore(path, reactor=object(), pool=object())
    store.setupNow({}, {}, demo=False)
    store.close()
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO students (id, name) VALUES (?, ?)",
                       [(studentId(i), f"STUDENT NUMBER {chr(65 + i % 26)}") for i in range(STUDENTS)])
        db.executemany("INSERT INTO grades (student, course, grade) VALUES (?, ?, ?)",
                       [(studentId(i), "MATH", i % 101) for i in range(STUDENTS)])


def fillPostgres(url: str) -> None:
    import psycopg

    from grades.store import PostgresStore

    store = PostgresStore(url, reactor=object(), pool=object())
    store.setupNow({}, {}, demo=False)
    store.close()
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO students (id, name) VALUES (%s, %s)",
                            [(studentId(i), f"STUDENT NUMBER {chr(65 + i % 26)}") for i in range(STUDENTS)])
        conn.execute("ANALYZE")


def startServer(command: list[str], port: int, log) -> subprocess.Popen:
    from coursenet.procs import waitForPort

    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    waitForPort(port, proc, timeout=60)
    return proc


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--load":
        load(sys.argv[2:])
        return 0
    from coursenet.procs import freePort
    from tests.grades_support import Postgres

    tmp = tempfile.mkdtemp(prefix="grades-bench-")
    db = os.path.join(tmp, "grades.sqlite")
    fillSQLite(db)
    pg = Postgres(maxConnections=max(CLIENTS) + 50)
    log = open(os.path.join(tmp, "servers.log"), "wb")
    rows = []
    try:
        fillPostgres(pg.url())
        twistedPort, threadedPort = freePort(), freePort()
        servers = [
            startServer([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile=-", "grades", "--public-demo",
                         "--db", f"sqlite:{db}", "--listen", f"tcp:{twistedPort}:interface=127.0.0.1:backlog=1024",
                         "--max-per-address", "1000"], twistedPort, log),
            startServer([sys.executable, "-m", "grades.threaded", "--listen", f"127.0.0.1:{threadedPort}",
                         "--public-demo", "--db", f"sqlite:{db}", "--max-per-address", "1000"], threadedPort, log),
        ]
        targets = [
            ("PostgreSQL + psycopg", "postgres", pg.url()),
            ("twistd grades (SQLite)", "grades", str(twistedPort)),
            ("grades-threaded (SQLite)", "grades", str(threadedPort)),
        ]
        for clients in CLIENTS:
            for depth in (1, DEPTH):
                peer = None
                for label, kind, target in targets:
                    rate, p99, errors = measure(kind, target, clients, depth)
                    peer = rate if peer is None else peer
                    rows.append((label, clients, "yes" if depth > 1 else "no", rate, p99, rate / peer, errors))
                    print(f"{label:26} {clients:4} clients pipelined={depth > 1!s:5} {rate:9.0f}/s"
                          f" p99 {p99:8.2f} ms  x{rate / peer:.2f} errors {errors}", flush=True)
        for server in servers:
            stopProcess(server)
    finally:
        pg.stop()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| server | clients | pipelined | lookups/s | p99 ms | vs PostgreSQL | errors |")
    print("|--------|---------|-----------|-----------|--------|---------------|--------|")
    for label, clients, piped, rate, p99, ratio, errors in rows:
        print(f"| {label} | {clients} | {piped} | {rate:.0f} | {p99:.2f} | {ratio:.2f} | {errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
