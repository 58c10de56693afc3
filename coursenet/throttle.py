"""
One password-guess throttle for every service.

Every password check is keyed twice: by the account and the client's
address together (the I{pair}), and by the account alone.  A pair's first
L{GuessRule.free} failed checks cost nothing; after each later one, the
pair's next check waits, first L{GuessRule.delay} seconds, then twice as
long each time, up to L{GuessRule.maxDelay}.  Once an account has had
L{GuessRule.budget} failures from all addresses together, a pair of that
account waits after its very first failure.  A check is only ever
delayed, never refused, so a correct password, once checked, gets in; an
address that has not failed for an account is never delayed for it, so a
class behind one NAT is not held up by one student's typos, and the owner
of an attacked account gets in from anywhere else at once.

A check reserves its pair's next slot before it waits, so parallel
attempts queue one behind the other instead of each getting a free guess.
A check counts as a failure from the moment it is reserved until it
succeeds, when the pair is forgotten and the pair's checks waiting in
this process take their slots again: one user's parallel logins are not
held up by each other.

The counts live beside the password file (C{PASSWD.throttle}, SQLite in
WAL mode), so every service and every process reading that file shares
them; without a password file they live in memory.  Entries are forgotten
L{GuessRule.forget} seconds after their last use, and a store trims itself
back when it holds more than C{maxEntries} of them.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Awaitable, Callable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Interface, implementer

if TYPE_CHECKING:
    # As coursenet.options.OptionsMixinBase (which cannot be imported here:
    # coursenet.options imports this module through coursenet.accounts).
    from twisted.python.usage import Options as _OptionsMixinBase
else:
    _OptionsMixinBase = object

#: Seconds SQLite waits for another process's transaction to finish.
BUSY_TIMEOUT = 10.0
#: Entries a store keeps at most; the ones nearest expiry go first.
MAX_ENTRIES = 100_000
#: Characters of an account name that count in a key; longer names are
#: never accounts (L{coursenet.accounts.checkUserName}).
_NAME_MAX = 128


@dataclass(frozen=True)
class Entry:
    """
    What a store keeps for one key.

    @ivar count: for a pair, checks reserved since its last success; for an
        account, failed checks.
    @ivar next: the earliest time the pair's next check may run.
    @ivar expires: when the entry is forgotten.
    """

    count: int = 0
    next: float = 0.0
    expires: float = 0.0


@dataclass(frozen=True)
class GuessRule:
    """
    The arithmetic of the throttle, with no clock and no storage.

    @ivar free: failed checks of a pair that do not slow it down.
    @ivar delay: seconds the first slowed check waits.
    @ivar maxDelay: the longest wait between two checks of a pair.
    @ivar budget: failed checks of an account, from all addresses, after
        which no pair of it has free failures.
    @ivar forget: seconds after its last use when an entry is forgotten.
    """

    free: int = 3
    delay: float = 1.0
    maxDelay: float = 60.0
    budget: int = 10
    forget: float = 3600.0

    def __post_init__(self) -> None:
        if min(self.free, self.delay, self.maxDelay, self.budget, self.forget) < 0:
            raise ValueError("throttle settings may not be negative")

    def interval(self, count: int, accountFailures: int) -> float:
        """
        Seconds between a pair's C{count}-th check and its next one.
        """
        free = self.free if accountFailures < self.budget else 0
        if count <= free:
            return 0.0
        return min(self.maxDelay, self.delay * 2.0 ** min(count - free - 1, 64))

    def reserve(self, pair: Entry, account: Entry, now: float) -> tuple[float, Entry]:
        """
        Take the pair's next slot.

        @return: when the check may run, and the pair's new entry.
        """
        start = max(now, pair.next)
        count = pair.count + 1
        following = start + self.interval(count, account.count)
        return start, Entry(count, following, following + self.forget)

    def failed(self, pair: Entry, account: Entry, now: float) -> tuple[Entry, Entry]:
        """
        The new pair and account entries after a failed check (the pair
        counted it when it was reserved).
        """
        return (
            replace(pair, expires=max(pair.expires, now + self.forget)),
            Entry(account.count + 1, 0.0, now + self.forget),
        )


class IGuessStore(Interface):
    """
    Where the counts of a L{Throttle} live.  Each method is one atomic
    step, also against other processes sharing the store.
    """

    def reserve(pair, account, now):
        """
        Take the next slot of key C{pair} (L{GuessRule.reserve}), given the
        failures of key C{account}.

        @return: a L{Deferred} firing with the time the check may run.
        """

    def settle(pair, account, ok, now):
        """
        Record the outcome of a check: on success (C{ok}) forget the pair,
        else count a failure against the account.

        @return: a L{Deferred} firing when recorded.
        """


class _Entries:
    """
    The two steps of a store, over a mapping-like C{get}/C{put}/C{drop}
    that the subclass keeps in memory or in SQLite.
    """

    def __init__(self, rule: GuessRule) -> None:
        self.rule = rule

    def _get(self, key: str, now: float) -> Entry:
        raise NotImplementedError

    def _put(self, key: str, entry: Entry) -> None:
        raise NotImplementedError

    def _drop(self, key: str) -> None:
        raise NotImplementedError

    def _reserveNow(self, pair: str, account: str, now: float) -> float:
        start, entry = self.rule.reserve(self._get(pair, now), self._get(account, now), now)
        self._put(pair, entry)
        return start

    def _settleNow(self, pair: str, account: str, ok: bool, now: float) -> None:
        if ok:
            self._drop(pair)
            return
        pairEntry, accountEntry = self.rule.failed(self._get(pair, now), self._get(account, now), now)
        self._put(pair, pairEntry)
        self._put(account, accountEntry)


@implementer(IGuessStore)
class MemoryGuessStore(_Entries):
    """
    Counts in this process only: for accounts given on the command line.
    """

    def __init__(self, rule: GuessRule, maxEntries: int = MAX_ENTRIES) -> None:
        super().__init__(rule)
        self.maxEntries = maxEntries
        self._entries: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key: str, now: float) -> Entry:
        entry = self._entries.get(key)
        if entry is None or entry.expires < now:
            return Entry()
        return entry

    def _put(self, key: str, entry: Entry) -> None:
        self._entries[key] = entry
        if len(self._entries) > self.maxEntries:
            self._trim()

    def _drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def _trim(self) -> None:
        keep = sorted(self._entries.items(), key=lambda item: item[1].expires)
        self._entries = dict(keep[len(keep) - self.maxEntries * 3 // 4 :])

    def reserve(self, pair: str, account: str, now: float) -> Deferred:
        return succeed(self._reserveNow(pair, account, now))

    def settle(self, pair: str, account: str, ok: bool, now: float) -> Deferred:
        self._settleNow(pair, account, ok, now)
        return succeed(None)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS guesses ("
    " key TEXT PRIMARY KEY, count INTEGER NOT NULL, next REAL NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS guesses_expires ON guesses (expires)",
)


@implementer(IGuessStore)
class SQLiteGuessStore(_Entries):
    """
    Counts in an SQLite file that separate processes share.  Each step is
    one C{BEGIN IMMEDIATE} transaction, run in the reactor's thread pool so
    that no SQLite call runs on the reactor thread.  The steps of one
    process take turns on one connection, kept open: closing the last
    connection to a WAL database checkpoints it, at the price of an fsync.
    """

    _log = Logger()

    def __init__(self, path: str, rule: GuessRule, reactor=None, maxEntries: int = MAX_ENTRIES) -> None:
        super().__init__(rule)
        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self.maxEntries = maxEntries
        self._reactor = reactor
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    def _run(self, step: Callable, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._transaction, step, *args)

    def _transaction(self, step: Callable, *args):
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = step(*args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            # A connection must not cross a fork (the forking twin): a child
            # leaves its parent's alone and opens its own.  The counts name
            # accounts and addresses: the file is its owner's only.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            self._setUp(db)
            self._db, self._pid = db, os.getpid()
        return self._db

    @staticmethod
    def _setUp(db: sqlite3.Connection) -> None:
        """
        WAL mode and the schema.  Two processes opening a new file at once
        can find it locked without SQLite's busy handler waiting (switching
        to WAL needs the file to themselves): try again until the busy
        timeout has passed.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    db.execute(statement)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _get(self, key: str, now: float) -> Entry:
        row = self._connection().execute(
            "SELECT count, next, expires FROM guesses WHERE key = ? AND expires >= ?", (key, now)
        ).fetchone()
        return Entry(*row) if row else Entry()

    def _put(self, key: str, entry: Entry) -> None:
        self._connection().execute(
            "INSERT OR REPLACE INTO guesses (key, count, next, expires) VALUES (?, ?, ?, ?)",
            (key, entry.count, entry.next, entry.expires),
        )

    def _drop(self, key: str) -> None:
        self._connection().execute("DELETE FROM guesses WHERE key = ?", (key,))

    def _reserveAndTrim(self, pair: str, account: str, now: float) -> float:
        db = self._connection()
        db.execute("DELETE FROM guesses WHERE expires < ?", (now,))
        start = self._reserveNow(pair, account, now)
        (size,) = db.execute("SELECT count(*) FROM guesses").fetchone()
        if size > self.maxEntries:
            db.execute(
                "DELETE FROM guesses WHERE key IN"
                " (SELECT key FROM guesses ORDER BY expires LIMIT ?)",
                (size - self.maxEntries * 3 // 4,),
            )
        return start

    def reserve(self, pair: str, account: str, now: float) -> Deferred:
        return self._run(self._reserveAndTrim, pair, account, now)

    def settle(self, pair: str, account: str, ok: bool, now: float) -> Deferred:
        return self._run(self._settleNow, pair, account, ok, now)


def addressKey(address: str | None) -> str:
    """
    The part of a client address that the throttle tells apart: an IPv4
    address whole (an IPv4-mapped IPv6 one as IPv4), an IPv6 address by its
    /64, since one host commonly has a whole /64 to pick from.
    """
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def hostOf(address) -> str | None:
    """
    The host of a Twisted L{twisted.internet.interfaces.IAddress}, or
    L{None} if it has none (a UNIX socket, a test transport).
    """
    return getattr(address, "host", None)


@dataclass(eq=False)
class _Nap:
    """
    A check waiting for its slot.
    """

    call: IDelayedCall
    forgiven: bool = False


class Throttle:
    """
    Delays password checks after failures, by the rule of its store.
    """

    _log = Logger()

    def __init__(self, store: IGuessStore, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.store = store
        self._reactor = reactor
        self._naps: dict[str, dict[Deferred, _Nap]] = {}

    @classmethod
    def besidePasswordFile(cls, path: str | None, rule: GuessRule, reactor=None) -> "Throttle":
        """
        The throttle for the accounts of password file C{path}: its counts in
        C{PATH.throttle}, shared with every process that reads C{path}; in
        memory if C{path} is L{None} or C{PATH.throttle} cannot be written.
        """
        if path is None:
            return cls(MemoryGuessStore(rule), reactor)
        counts = path + ".throttle"
        try:
            os.close(os.open(counts, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as e:
            cls._log.error(
                "cannot write {counts} ({error}): failed logins are counted in this process only",
                counts=counts, error=e.strerror,
            )
            return cls(MemoryGuessStore(rule), reactor)
        return cls(SQLiteGuessStore(counts, rule, reactor), reactor)

    def guard(self, account: str, address: str | None, check: Callable[[], Awaitable]) -> Deferred:
        """
        Run C{check()} for C{account} from C{address} when the throttle
        allows, and count its outcome: a failure is an L{UnauthorizedLogin}.

        @return: a L{Deferred} with C{check}'s result or failure.
        """
        return Deferred.fromCoroutine(self._guard(account, address, check))

    async def _guard(self, account: str, address: str | None, check):
        name = account[:_NAME_MAX]
        pair, whole = f"p {name}\0{addressKey(address)}", f"a {name}"
        while True:
            start = await self.store.reserve(pair, whole, self._reactor.seconds())
            wait = start - self._reactor.seconds()
            if wait <= 0:
                break
            self._log.info(
                "login of {account} from {address} waits {wait:.1f} s after failed logins",
                account=name, address=address, wait=wait,
            )
            if not await self._sleep(pair, wait):
                break
            # A check of this pair succeeded meanwhile and the pair was
            # forgiven: take a slot again, most likely a free one.
        try:
            result = await check()
        except UnauthorizedLogin:
            await self.store.settle(pair, whole, False, self._reactor.seconds())
            raise
        await self.store.settle(pair, whole, True, self._reactor.seconds())
        self._wake(pair)
        return result

    async def _sleep(self, pair: str, seconds: float) -> bool:
        """
        Wait C{seconds}, or less if the pair is forgiven meanwhile.

        @return: whether it was forgiven.
        """
        sleep: Deferred = Deferred(lambda d: call.cancel())
        call = self._reactor.callLater(seconds, sleep.callback, None)
        nap = _Nap(call)
        naps = self._naps.setdefault(pair, {})
        naps[sleep] = nap
        try:
            await sleep
        except CancelledError:
            raise UnauthorizedLogin("login not checked: the server is shutting down")
        finally:
            naps.pop(sleep, None)
            if not naps and self._naps.get(pair) is naps:
                del self._naps[pair]
        return nap.forgiven

    def _wake(self, pair: str) -> None:
        """
        The pair succeeded: its checks waiting in this process need not wait
        for the slots they took while it counted as failing (those waiting
        in other processes do).  Each wakes in a reactor call of its own,
        not nested in this one.
        """
        for nap in self._naps.pop(pair, {}).values():
            nap.forgiven = True
            nap.call.reset(0)

    def close(self) -> None:
        """
        Give up every check still waiting: each fails with
        L{UnauthorizedLogin}, unchecked and uncounted.  For shutting down.
        """
        for naps in list(self._naps.values()):
            for sleep in list(naps):
                sleep.cancel()


class _AtLeastZero:
    """
    A twistd option's coercer (with the C{coerceDoc} that C{usage} shows):
    C{kind(text)}, refused if negative.
    """

    coerceDoc = "Not negative."

    def __init__(self, kind: Callable[[str], float]) -> None:
        self._kind = kind

    def __call__(self, text: str) -> float:
        value = self._kind(text)
        if value < 0:
            raise ValueError(f"{text} is negative")
        return value


def _atLeastZero(kind: Callable[[str], float]) -> Callable[[str], float]:
    return _AtLeastZero(kind)


class GuessOptionsMixin(_OptionsMixinBase):
    """
    The twistd options of the rule (L{GuessRule}), for every service that
    checks passwords.  Mix into a L{twisted.python.usage.Options} subclass
    before it.
    """

    optParameters = [
        ["guess-free", None, GuessRule.free,
         "failed logins of one account from one address that do not slow its next login", _atLeastZero(int)],
        ["guess-delay", None, GuessRule.delay,
         "seconds the first slowed login waits; each further failure doubles it", _atLeastZero(float)],
        ["guess-max-delay", None, GuessRule.maxDelay,
         "the longest wait between two logins of one account from one address", _atLeastZero(float)],
        ["guess-budget", None, GuessRule.budget,
         "failed logins of one account, all addresses together, after which every"
         " address waits from its first failure", _atLeastZero(int)],
        ["guess-forget", None, GuessRule.forget,
         "seconds after which failed logins are forgotten", _atLeastZero(float)],
    ]

    def guessRule(self) -> GuessRule:
        """
        The rule the options describe.
        """
        return GuessRule(
            free=self["guess-free"],
            delay=self["guess-delay"],
            maxDelay=self["guess-max-delay"],
            budget=self["guess-budget"],
            forget=self["guess-forget"],
        )
