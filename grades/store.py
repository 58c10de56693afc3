"""
The grades database: one schema and one set of parameterized queries, on
SQLite (embedded, WAL) or PostgreSQL (several servers on one database).

No query runs on the reactor thread: each runs in a thread of the store's
own pool, on that thread's own connection, and its result comes back as a
L{Deferred}.  Every write is one transaction that writes its audit rows
(who, when, old, new) with it.  Values never go into SQL text: every query
is a constant string with placeholders.
"""

from __future__ import annotations

import os
import re
import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from grades.interfaces import IGradesUser, IGradeStore
from grades.wire import Code, GradesError, Row

#: Seconds SQLite waits for another writer.
BUSY_TIMEOUT = 10.0
#: Times a PostgreSQL write is tried when it collides with another.
_RETRIES = 5

#: The demo data of C{--public-demo}: the seed's student first.
DEMO_ROWS = (
    Row("051883261", "DAN HACKER", "MATH", 87),
    Row("051883261", "DAN HACKER", "HISTORY", 93),
    Row("200000001", "ADA LOVELACE", "MATH", 98),
    Row("200000001", "ADA LOVELACE", "HISTORY", 81),
    Row("200000002", "ALAN TURING", "MATH", 95),
    Row("200000002", "ALAN TURING", "NETWORKS", 90),
    Row("200000003", "GRACE HOPPER", "NETWORKS", 99),
    Row("200000003", "GRACE HOPPER", "HISTORY", 77),
    Row("200000004", "EDSGER DIJKSTRA", "MATH", 100),
    Row("200000004", "EDSGER DIJKSTRA", "NETWORKS", 72),
)


@implementer(IGradesUser)
@dataclass(frozen=True)
class Role:
    """
    What an account may see: a student's own record (C{studentId}), an
    instructor's courses (C{courses}), or both.
    """

    account: str
    studentId: str | None = None
    courses: frozenset[str] = frozenset()

    @property
    def kind(self) -> str:
        if self.courses and self.studentId:
            return "instructor+student"
        if self.courses:
            return "instructor"
        if self.studentId:
            return "student"
        return "none"


def _schema(serial: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS students ("
        " id TEXT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS grades ("
        " student TEXT NOT NULL REFERENCES students (id), course TEXT NOT NULL,"
        " grade INTEGER NOT NULL CHECK (grade BETWEEN 0 AND 100), PRIMARY KEY (student, course))",
        "CREATE INDEX IF NOT EXISTS grades_course ON grades (course, grade)",
        "CREATE TABLE IF NOT EXISTS accounts (account TEXT PRIMARY KEY, student TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS teaching (account TEXT NOT NULL, course TEXT NOT NULL,"
        " PRIMARY KEY (account, course))",
        f"CREATE TABLE IF NOT EXISTS audit (seq {serial}, at DOUBLE PRECISION NOT NULL,"
        " who TEXT NOT NULL, student TEXT NOT NULL, course TEXT NOT NULL,"
        " old INTEGER, new INTEGER, how TEXT NOT NULL)",
    )


class WorkerPool:
    """
    A fixed set of threads taking calls from one queue: the part of
    Twisted's C{ThreadPool} the store uses (C{callInThreadWithCallback}),
    with less bookkeeping per call, since a point lookup costs less than
    handing it over does.
    """

    def __init__(self, threads: int, name: str) -> None:
        import queue

        self.size = threads
        self.name = name
        self.started = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.started = True
        for i in range(self.size):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.started = False
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        self._queue.put((onResult, f, args, kwargs))

    def _work(self) -> None:
        from twisted.python.failure import Failure

        while (job := self._queue.get()) is not None:
            onResult, f, args, kwargs = job
            try:
                result = f(*args, **kwargs)
            except BaseException:
                onResult(False, Failure())
            else:
                onResult(True, result)
            del job, onResult, f, args, kwargs


@implementer(IGradeStore)
class SQLStore:
    """
    What both databases share: the queries, the thread pool, one connection
    per pool thread.  Subclasses say how to connect and how a write
    transaction begins.

    Queries are written with C{?} placeholders; L{_sql} turns them into the
    driver's.
    """

    _log = Logger()
    serial = "INTEGER PRIMARY KEY"
    forUpdate = ""
    #: Read batches running at once (L{_read}).
    maxBatches = 2

    def __init__(self, url: str, reactor=None, threads: int = 4, pool=None) -> None:
        """
        @param pool: a thread pool to run queries in (the blocking twins
            pass their reactor's, which runs them in the caller's thread);
            by default the store makes and runs its own of C{threads}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self._reactor = reactor
        self._ownPool = pool is None
        self._pool: Any = WorkerPool(threads, name="grades-db") if pool is None else pool
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._pending: list[tuple[str, tuple, Deferred]] = []
        self._batches = 0

    # -- life --------------------------------------------------------------------

    def start(self) -> None:
        if self._ownPool and not self._pool.started:
            self._pool.start()

    def close(self) -> Deferred:
        if self._ownPool and self._pool.started:
            self._pool.stop()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            try:
                connection.close()
            except Exception:
                pass
        return succeed(None)

    # -- running queries ---------------------------------------------------------------

    def _sql(self, query: str) -> str:
        return query

    def _connect(self) -> Any:
        raise NotImplementedError

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        # A PostgreSQL connection the server dropped (a restart) is
        # replaced, so the store recovers once the database is back.
        if connection is None or self._local.pid != os.getpid() or getattr(connection, "broken", False):
            # Not across a fork: a forked child opens its own.
            connection = self._connect()
            self._local.connection, self._local.pid = connection, os.getpid()
            with self._lock:
                self._connections.append(connection)
        return connection

    def _run(self, f: Callable, *args) -> Deferred:
        if self._ownPool and not self._pool.started:
            self.start()
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _read(self, query: str, params: tuple) -> Deferred:
        """
        Run a one-statement read.  Reads are batched: while the store's
        batches are all busy, new reads wait together and go to a thread
        as one job when one finishes, so that many clients' lookups cost
        one thread hand-off, not one each.
        """
        if not self._ownPool:
            return self._run(self._fetch, query, params)
        d: Deferred = Deferred()
        self._pending.append((query, params, d))
        if self._batches < self.maxBatches:
            self._startBatch()
        return d

    def _startBatch(self) -> None:
        batch, self._pending = self._pending, []
        self._batches += 1

        def done(results: list) -> None:
            self._batches -= 1
            if self._pending:
                self._startBatch()
            for (_, _, d), result in zip(batch, results):
                if isinstance(result, BaseException):
                    d.errback(result)
                else:
                    d.callback(result)

        def failed(failure):
            self._batches -= 1
            for _, _, d in batch:
                d.errback(failure)

        self._run(self._fetchMany, [(q, p) for q, p, _ in batch]).addCallbacks(done, failed)

    def _fetchMany(self, batch: list[tuple[str, tuple]]) -> list:
        results: list = []
        for query, params in batch:
            try:
                results.append(self._fetch(query, params))
            except Exception as e:
                results.append(e)
        return results

    def _fetch(self, query: str, params: tuple) -> list:
        cursor = self._connection().execute(self._sql(query), params)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    def _setupLock(self) -> None:
        """
        Inside L{setup}'s transaction, before anything else.
        """

    def _write(self, step: Callable, *args) -> Deferred:
        return self._run(self._transaction, step, *args)

    def _transaction(self, step: Callable, *args):
        raise NotImplementedError

    # -- reads ---------------------------------------------------------------------

    def role(self, account: str) -> Deferred:
        def run() -> Role:
            rows = self._fetch("SELECT student FROM accounts WHERE account = ?", (account,))
            courses = self._fetch("SELECT course FROM teaching WHERE account = ?", (account,))
            return Role(account, rows[0][0] if rows else None, frozenset(c for (c,) in courses))

        return self._run(run)

    def name(self, studentId: str) -> Deferred:
        return self._read("SELECT name FROM students WHERE id = ?", (studentId,)).addCallback(
            lambda rows: rows[0][0] if rows else None
        )

    def grade(self, studentId: str, course: str) -> Deferred:
        return self._read(
            "SELECT grade FROM grades WHERE student = ? AND course = ?", (studentId, course)
        ).addCallback(lambda rows: rows[0][0] if rows else None)

    def grades(self, studentId: str) -> Deferred:
        return self._read(
            "SELECT course, grade FROM grades WHERE student = ? ORDER BY course", (studentId,)
        ).addCallback(lambda rows: [(c, g) for c, g in rows])

    def courseGrades(self, course: str) -> Deferred:
        return self._read("SELECT grade FROM grades WHERE course = ?", (course,)).addCallback(
            lambda rows: [g for (g,) in rows]
        )

    def allCourses(self) -> Deferred:
        return self._read("SELECT DISTINCT course FROM grades ORDER BY course", ()).addCallback(
            lambda rows: [c for (c,) in rows]
        )

    def export(self, courses: Iterable[str]) -> Deferred:
        wanted = sorted(set(courses))

        def run() -> list[Row]:
            rows: list[Row] = []
            for course in wanted:
                for sid, name, grade in self._fetch(
                    "SELECT s.id, s.name, g.grade FROM grades g JOIN students s ON s.id = g.student"
                    " WHERE g.course = ? ORDER BY s.id",
                    (course,),
                ):
                    rows.append(Row(sid, name, course, grade))
            return rows

        return self._run(run)

    def audit(self, limit: int = 100) -> Deferred:
        return self._read(
            "SELECT at, who, student, course, old, new FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        )

    # -- writes -------------------------------------------------------------------

    def _audit(self, who: str, studentId: str, course: str, old: int | None, new: int | None, how: str) -> None:
        self._fetchNone(
            "INSERT INTO audit (at, who, student, course, old, new, how) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), who, studentId, course, old, new, how),
        )

    def _fetchNone(self, query: str, params: tuple) -> None:
        self._connection().execute(self._sql(query), params).close()

    def setup(self, students: Mapping[str, str], instructors: Mapping[str, Iterable[str]], demo: bool) -> Deferred:
        return self._run(self.setupNow, students, instructors, demo)

    def setupNow(self, students: Mapping[str, str], instructors: Mapping[str, Iterable[str]], demo: bool) -> None:
        """
        L{setup}, in the calling thread: for start-up, before the reactor
        runs.
        """

        def run() -> None:
            self._setupLock()
            for statement in _schema(self.serial):
                self._fetchNone(statement, ())
            if demo and not self._fetch("SELECT id FROM students LIMIT 1", ()):
                for row in DEMO_ROWS:
                    self._putRow("demo", row)
            for account, sid in students.items():
                self._fetchNone("DELETE FROM accounts WHERE account = ?", (account,))
                self._fetchNone("INSERT INTO accounts (account, student) VALUES (?, ?)", (account, sid))
            for account, courses in instructors.items():
                self._fetchNone("DELETE FROM teaching WHERE account = ?", (account,))
                for course in sorted(set(courses)):
                    self._fetchNone("INSERT INTO teaching (account, course) VALUES (?, ?)", (account, course))

        self._transaction(run)

    def setGrade(self, who: str, studentId: str, course: str, value: int, change: bool) -> Deferred:
        def run() -> tuple[int | None, int]:
            if not self._fetch("SELECT id FROM students WHERE id = ?", (studentId,)):
                raise GradesError(Code.NOT_FOUND, f"no student {studentId}")
            rows = self._fetch(
                "SELECT grade FROM grades WHERE student = ? AND course = ?" + self.forUpdate, (studentId, course)
            )
            old = rows[0][0] if rows else None
            if change and old is None:
                raise GradesError(Code.NOT_FOUND, f"{studentId} has no grade in {course} to change")
            new = old + value if change and old is not None else value
            if not 0 <= new <= 100:
                raise GradesError(Code.SYNTAX, f"that makes {new}; a grade is 0 to 100")
            self._store(studentId, course, old, new)
            self._audit(who, studentId, course, old, new, "SET")
            return old, new

        return self._write(run)

    def _store(self, studentId: str, course: str, old: int | None, new: int) -> None:
        if old is None:
            self._fetchNone("INSERT INTO grades (student, course, grade) VALUES (?, ?, ?)", (studentId, course, new))
        else:
            self._fetchNone(
                "UPDATE grades SET grade = ? WHERE student = ? AND course = ?", (new, studentId, course)
            )

    def _putRow(self, who: str, row: Row, how: str = "IMPORT") -> bool:
        """
        Add or replace one row's grade (and its student); whether it changed.
        """
        names = self._fetch("SELECT name FROM students WHERE id = ?", (row.id,))
        if not names:
            self._fetchNone("INSERT INTO students (id, name) VALUES (?, ?)", (row.id, row.name))
        elif names[0][0] != row.name:
            # Not the stored name: that would tell an instructor the name
            # of any id.
            raise GradesError(Code.SEQUENCE, f"student {row.id} is on record under another name than {row.name}")
        rows = self._fetch(
            "SELECT grade FROM grades WHERE student = ? AND course = ?" + self.forUpdate, (row.id, row.course)
        )
        old = rows[0][0] if rows else None
        if old == row.grade:
            return False
        self._store(row.id, row.course, old, row.grade)
        self._audit(who, row.id, row.course, old, row.grade, how)
        return True

    def importRows(self, who: str, rows: list[Row], courses: Iterable[str]) -> Deferred:
        allowed = frozenset(courses)
        for number, row in enumerate(rows, 1):
            if row.course not in allowed:
                raise GradesError(Code.FORBIDDEN, f"CSV row {number}: you do not teach {row.course}; nothing imported")

        def run() -> int:
            changed = 0
            for number, row in enumerate(rows, 1):
                try:
                    changed += self._putRow(who, row)
                except GradesError as e:
                    raise GradesError(e.code, f"CSV row {number}: {e.message}; nothing imported")
            return changed

        return self._write(run)


class SQLiteStore(SQLStore):
    """
    The embedded database: one file in WAL mode, so readers never wait for
    the writer; writers take turns (C{BEGIN IMMEDIATE}).
    """

    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: str, reactor=None, threads: int = 4, pool=None) -> None:
        super().__init__(f"sqlite:{path}", reactor, threads, pool)
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        # Grades are personal data: the file is its owner's only.
        if self.path != ":memory:":
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                # Two processes switching a new file to WAL at once.
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _transaction(self, step: Callable, *args):
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = step(*args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result


class PostgresStore(SQLStore):
    """
    PostgreSQL through psycopg 3, one connection per pool thread: several
    servers share one database and see each other's writes as soon as they
    commit.  A write locks the rows it reads (C{FOR UPDATE}); one that
    collides with another's insert is run again.
    """

    serial = "BIGSERIAL PRIMARY KEY"
    forUpdate = " FOR UPDATE"
    # Each statement waits on the network: more batches in flight.
    maxBatches = 6

    def __init__(self, url: str, reactor=None, threads: int = 8, pool=None) -> None:
        super().__init__(hidePassword(url), reactor, threads, pool)
        self._dsn = url

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._dsn, autocommit=True)

    def _fetch(self, query: str, params: tuple) -> list:
        import psycopg

        try:
            return super()._fetch(query, params)
        except psycopg.OperationalError:
            # A read outside a transaction on a connection the server
            # dropped (a restart) is tried once more on a fresh one.
            connection = getattr(self._local, "connection", None)
            if getattr(self._local, "inTransaction", False) or not getattr(connection, "broken", False):
                raise
            return super()._fetch(query, params)

    def _transaction(self, step: Callable, *args):
        from psycopg import errors

        for attempt in range(_RETRIES):
            connection = self._connection()
            try:
                self._local.inTransaction = True
                with connection.transaction():
                    return step(*args)
            except (errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected):
                if attempt == _RETRIES - 1:
                    raise
            finally:
                self._local.inTransaction = False
        raise AssertionError("unreachable")

    def _setupLock(self) -> None:
        # Two servers starting on a new database at once: one makes the
        # tables, the other waits for it.
        self._fetchNone("SELECT pg_advisory_xact_lock(15015)", ())


def hidePassword(url: str) -> str:
    """
    C{url} with its password, if any, as C{***}: for logs and replies.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def openStore(url: str, reactor=None, pool=None) -> SQLStore:
    """
    The store a C{--db} URL names: C{sqlite:PATH} or
    C{postgresql://user@host/dbname?host=/socket/dir}.

    @raise ValueError: for any other.
    """
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("sqlite: needs a file, e.g. sqlite:var/grades/grades.sqlite")
        return SQLiteStore(path, reactor, pool=pool)
    if re.match(r"postgres(ql)?://", url):
        return PostgresStore(url, reactor, pool=pool)
    raise ValueError(f"unknown database {hidePassword(url)!r}: use sqlite:PATH or postgresql://...")


def courseStatistics(grades: list[int]) -> tuple[int, float, float, list[int]]:
    """
    Count, mean, median and a histogram of ten bins (0-9, ..., 80-89,
    90-100) of a course's grades.
    """
    histogram = [0] * 10
    for g in grades:
        histogram[min(g // 10, 9)] += 1
    if not grades:
        return 0, 0.0, 0.0, histogram
    return len(grades), statistics.fmean(grades), float(statistics.median(grades)), histogram
