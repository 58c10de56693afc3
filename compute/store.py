"""
Jobs and finished chunks in SQLite, written from one thread of their own so
that no SQLite call runs on the reactor thread and writes land in the order
they were asked for.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from compute.interfaces import IJobStore

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, series TEXT NOT NULL, terms INTEGER NOT NULL,"
    " chunk INTEGER NOT NULL, digits INTEGER NOT NULL, state TEXT NOT NULL,"
    " result TEXT, error TEXT, created REAL NOT NULL, finished REAL)",
    "CREATE TABLE IF NOT EXISTS chunks ("
    " job INTEGER NOT NULL, idx INTEGER NOT NULL, value TEXT NOT NULL, worker TEXT,"
    " PRIMARY KEY (job, idx))",
)


@dataclass
class StoredJob:
    """
    A job as the store has it.
    """

    id: int
    series: str
    terms: int
    chunk: int
    digits: int
    state: str
    result: str | None
    error: str | None
    created: float
    finished: float | None
    chunks: dict[int, int] = field(default_factory=dict)


@implementer(IJobStore)
class SQLiteJobStore:
    """
    The store in an SQLite file (WAL mode; C{synchronous=FULL}, so a chunk
    said to be kept survives a power cut).
    """

    def __init__(self, path: str, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self._reactor = reactor
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        # One thread: writes run one at a time, in order.
        self._pool = ThreadPool(1, 1, name="compute-store")
        self._pool.start()

    def _run(self, f, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def load(self) -> list[StoredJob]:
        jobs = {
            row[0]: StoredJob(*row)
            for row in self._db.execute(
                "SELECT id, series, terms, chunk, digits, state, result, error, created, finished"
                " FROM jobs ORDER BY id"
            )
        }
        for job, idx, value in self._db.execute("SELECT job, idx, value FROM chunks"):
            if job in jobs:
                jobs[job].chunks[idx] = int(value)
        return list(jobs.values())

    def addJob(self, series: str, terms: int, chunk: int, digits: int, created: float) -> Deferred:
        def insert() -> int:
            cursor = self._db.execute(
                "INSERT INTO jobs (series, terms, chunk, digits, state, created) VALUES (?, ?, ?, ?, 'queued', ?)",
                (series, terms, chunk, digits, created),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return self._run(insert)

    def addChunk(self, job: int, index: int, value: int, worker: str) -> Deferred:
        return self._run(
            self._db.execute,
            "INSERT OR IGNORE INTO chunks (job, idx, value, worker) VALUES (?, ?, ?, ?)",
            (job, index, str(value), worker),
        )

    def setState(self, job: int, state: str, result: str | None, error: str | None, finished: float) -> Deferred:
        def update() -> None:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished = ? WHERE id = ?",
                (state, result, error, finished, job),
            )
            # The result says it all: a finished job's chunks are not kept.
            self._db.execute("DELETE FROM chunks WHERE job = ?", (job,))
            self._db.execute("COMMIT")

        return self._run(update)

    def close(self) -> Deferred:
        d = self._run(lambda: None)

        def closed(_):
            self._pool.stop()
            self._db.close()

        return d.addCallback(closed)


@implementer(IJobStore)
class MemoryJobStore:
    """
    The store in memory (nothing survives a restart): for tests and
    C{--db :memory:}.
    """

    def __init__(self) -> None:
        self.jobs: dict[int, StoredJob] = {}

    def load(self) -> list[StoredJob]:
        return [StoredJob(**{**vars(j), "chunks": dict(j.chunks)}) for j in self.jobs.values()]

    def addJob(self, series: str, terms: int, chunk: int, digits: int, created: float) -> Deferred:
        jobId = len(self.jobs) + 1
        self.jobs[jobId] = StoredJob(jobId, series, terms, chunk, digits, "queued", None, None, created, None)
        return succeed(jobId)

    def addChunk(self, job: int, index: int, value: int, worker: str) -> Deferred:
        self.jobs[job].chunks.setdefault(index, value)
        return succeed(None)

    def setState(self, job: int, state: str, result: str | None, error: str | None, finished: float) -> Deferred:
        stored = self.jobs[job]
        stored.state, stored.result, stored.error, stored.finished = state, result, error, finished
        stored.chunks.clear()
        return succeed(None)

    def close(self) -> Deferred:
        return succeed(None)
