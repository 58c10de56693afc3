"""
The bank: chip balances, the stacks at the seats, and hand histories, in
SQLite (docs/poker.md, section 10).

The balances live in memory, where the server reads them; every change is
also queued as SQL and written after the reactor turn that made it, every
change of that turn in one transaction.  The write is kept short rather
than moved to a thread: WAL mode without an fsync per commit, statements
by primary key, one transaction a turn (about a millisecond for a busy
turn); the checkpoints, which fsync, run once a second in a pool thread.  A writer thread was tried and measured worse: every statement it
ran took the GIL back from the reactor thread (the convoy effect), and
the reactor's sends waited for it: 100 tables of bots flat out got 45
hands/s at a median 102 ms from action to next turn with the thread, 91
hands/s at 46 ms without it.  Each change is whole in itself (a
buy-in takes from a balance and fills a seat in the same batch), so what
is on disk is always a state the server was in: no chip made or lost.

At start every seat left in the file (the server stopped or died with
players seated) is emptied back into its owner's balance with the stack it
had after its last finished hand; the hand that was in play, if any, is
void.  C{minted} counts every chip that came from outside the game (new
accounts' and guests' bankrolls): the sum of balances and seated stacks
always equals it.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from poker.interfaces import IBank
from poker.wire import Code, PokerError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS balances (name TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seats (
    tbl TEXT NOT NULL, seat INTEGER NOT NULL, name TEXT NOT NULL, stack INTEGER NOT NULL,
    PRIMARY KEY (tbl, seat));
CREATE TABLE IF NOT EXISTS hands (
    tbl TEXT NOT NULL, number INTEGER NOT NULL, commitment TEXT NOT NULL, phh TEXT NOT NULL,
    PRIMARY KEY (tbl, number));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

Runner = Callable[..., Deferred]


def open_(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


@implementer(IBank)
class Bank:
    """
    Balances in memory, written behind to SQLite at C{path}.

    @param run: runs the write (a short blocking function) and returns a
        L{Deferred} of its result: at once, in the calling thread, by
        default (see the module docstring for why not a thread).
    @param keepHands: hand histories kept per table; older ones are
        deleted.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        run: Runner | None = None,
        keepHands: int = 10_000,
        batch: bool = True,
        checkpointEvery: float = 1.0,
    ) -> None:
        """
        @param batch: write what a turn of the reactor changed in one
            transaction, after it, and checkpoint the log every
            C{checkpointEvery} seconds in a thread (else write at once and
            let SQLite checkpoint: tests).
        """
        if reactor is None:
            from twisted.internet import reactor
        if run is None:
            run = maybeDeferred
        self._run = run
        self.keepHands = keepHands
        self._db = open_(path)
        self._pending: list[tuple[str, tuple]] = []
        self._flushing: Deferred | None = None
        self._waiters: list[Deferred] = []
        self._clock: Any = reactor if batch else None
        self._scheduled: Any = None
        self._closed = False
        self._checkpoints: Any = None
        if batch and path != ":memory:":
            # Checkpoints fsync the file: not in the reactor thread, where
            # each would stall every table for as long as the disk takes.
            # One checkpoint is one call into SQLite, which releases the
            # GIL for all of it, so a thread costs the reactor nothing here.
            from twisted.internet.task import LoopingCall
            from twisted.internet.threads import deferToThreadPool

            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer: sqlite3.Connection | None = None
            self._checkpointing = False
            self._path = path

            def checkpoint() -> None:
                if self._checkpointing or self._closed:
                    return
                self._checkpointing = True
                d = deferToThreadPool(reactor, reactor.getThreadPool(), self._checkpoint)
                d.addErrback(lambda f: self._log.failure("checkpoint failed", f))
                d.addBoth(lambda _: setattr(self, "_checkpointing", False))

            self._checkpoints = LoopingCall(checkpoint)
            self._checkpoints.clock = reactor
            self._checkpoints.start(checkpointEvery, now=False)
        self.balances: dict[str, int] = {}
        self.seated: dict[tuple[str, int], tuple[str, int]] = {}
        self.minted = 0
        self.restored = self._restore()

    def _restore(self) -> int:
        """
        Empty the seats left by the last run into their owners' balances;
        return how many there were.  At start, before the reactor runs.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute("SELECT name, stack FROM seats").fetchall()
        for name, stack in rows:
            db.execute(
                "INSERT INTO balances VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET balance = balance + ?",
                (name, stack, stack),
            )
        db.execute("DELETE FROM seats")
        db.execute("COMMIT")
        self.balances = dict(db.execute("SELECT name, balance FROM balances"))
        row = db.execute("SELECT value FROM meta WHERE key = 'minted'").fetchone()
        self.minted = row[0] if row else 0
        self.lastHands = dict(db.execute("SELECT tbl, MAX(number) FROM hands GROUP BY tbl"))
        return len(rows)

    # -- writing behind ----------------------------------------------------------------

    def _queue(self, *statements: tuple[str, tuple]) -> None:
        self._pending.extend(statements)
        if self._flushing is None and self._scheduled is None and not self._closed:
            if self._clock is None:
                self._flush()
            else:
                # After the code that queued this has run to its end: one
                # transaction for everything a turn of the reactor changed,
                # and, under the threaded twin (whose thread pool releases
                # the one lock while it works), no other thread running in
                # the middle of a change.
                self._scheduled = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if self._flushing is not None or not self._pending:
            return
        batch, self._pending = self._pending, []
        # Marked before the write starts: under the threaded twin the write
        # runs at once, in this thread, with the lock released.
        self._flushing = Deferred()
        self._run(self._write, batch).addBoth(self._flushed)

    def _write(self, batch: list[tuple[str, tuple]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in batch:
                db.execute(sql, args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _flushed(self, result: Any) -> None:
        self._flushing = None
        if isinstance(result, Failure):
            self._log.failure("writing chip balances failed; memory is ahead of the file", result)
        if self._pending and not self._closed:
            self._flush()
        elif not self._pending:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def flushed(self) -> Deferred:
        """
        A L{Deferred} that fires once everything queued so far is written.
        """
        if self._flushing is None and not self._pending:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        if self._flushing is None:
            if self._scheduled is not None and self._scheduled.active():
                self._scheduled.cancel()
            self._flush()
        return d

    def _checkpoint(self) -> None:
        """
        Move the write-ahead log into the database file (in a thread).
        """
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self._path, check_same_thread=False)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> Deferred:
        if self._checkpoints is not None and self._checkpoints.running:
            self._checkpoints.stop()

        def closed(_: Any) -> None:
            self._closed = True
            if self._checkpoints is not None:
                if self._checkpointer is not None and not self._checkpointing:
                    self._checkpointer.close()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

        return self.flushed().addBoth(closed)

    # -- IBank ---------------------------------------------------------------------------

    def balance(self, name: str) -> int | None:
        return self.balances.get(name)

    def grant(self, name: str, amount: int) -> int:
        have = self.balances.get(name, 0)
        if have >= amount:
            return have
        self.balances[name] = amount
        self.minted += amount - have
        self._queue(
            ("INSERT INTO balances VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET balance = ?", (name, amount, amount)),
            ("INSERT INTO meta VALUES ('minted', ?) ON CONFLICT(key) DO UPDATE SET value = ?", (self.minted, self.minted)),
        )
        return amount

    def buyIn(self, name: str, table: str, seat: int, amount: int) -> None:
        have = self.balances.get(name, 0)
        if have < amount:
            raise PokerError(Code.FUNDS, f"buy-in {amount} is more than your balance {have}")
        if (table, seat) in self.seated:
            raise PokerError(Code.SEAT, f"seat {seat} at {table} is taken")
        self.balances[name] = have - amount
        self.seated[(table, seat)] = (name, amount)
        self._queue(
            ("UPDATE balances SET balance = balance - ? WHERE name = ?", (amount, name)),
            ("INSERT INTO seats VALUES (?, ?, ?, ?)", (table, seat, name, amount)),
        )

    def cashOut(self, name: str, table: str, seat: int, stack: int) -> None:
        self.seated.pop((table, seat), None)
        self.balances[name] = self.balances.get(name, 0) + stack
        self._queue(
            ("DELETE FROM seats WHERE tbl = ? AND seat = ?", (table, seat)),
            (
                "INSERT INTO balances VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET balance = balance + ?",
                (name, stack, stack),
            ),
        )

    def settle(self, table: str, stacks: list, record: tuple) -> None:
        statements: list[tuple[str, tuple]] = []
        for seat, name, stack in stacks:
            self.seated[(table, seat)] = (name, stack)
            statements.append(("UPDATE seats SET stack = ? WHERE tbl = ? AND seat = ?", (stack, table, seat)))
        number, commit, phh = record
        statements.append(("INSERT OR REPLACE INTO hands VALUES (?, ?, ?, ?)", (table, number, commit, phh)))
        if number % 100 == 0:
            statements.append(("DELETE FROM hands WHERE tbl = ? AND number <= ?", (table, number - self.keepHands)))
        self._queue(*statements)

    def hand(self, table: str, number: int) -> Deferred:
        def read() -> str | None:
            row = self._db.execute("SELECT phh FROM hands WHERE tbl = ? AND number = ?", (table, number)).fetchone()
            return row[0] if row else None

        # After what is queued: a hand just finished is found.
        return self.flushed().addCallback(lambda _: self._run(read))

    # -- checks ---------------------------------------------------------------------------

    def held(self) -> int:
        """
        Chips in balances and seats, as the server sees them.
        """
        return sum(self.balances.values()) + sum(stack for _, stack in self.seated.values())


def audit(path: str) -> tuple[int, int]:
    """
    C{(minted, held)} as the file at C{path} has them: chips that came in
    from outside the game, and chips in balances and seats.  Equal when
    nothing was made or lost.
    """
    db = open_(path)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'minted'").fetchone()
        balances = db.execute("SELECT COALESCE(SUM(balance), 0) FROM balances").fetchone()[0]
        seats = db.execute("SELECT COALESCE(SUM(stack), 0) FROM seats").fetchone()[0]
        return (row[0] if row else 0), balances + seats
    finally:
        db.close()


def exportHands(path: str, table: str | None = None) -> list[tuple[str, int, str]]:
    """
    The stored hands as C{(table, number, PHH text)}, oldest first.
    """
    db = open_(path)
    try:
        if table is None:
            rows = db.execute("SELECT tbl, number, phh FROM hands ORDER BY tbl, number")
        else:
            rows = db.execute("SELECT tbl, number, phh FROM hands WHERE tbl = ? ORDER BY number", (table,))
        return [(t, n, p) for t, n, p in rows]
    finally:
        db.close()
