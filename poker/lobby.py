"""
The lobby: who is logged in, where they sit, and the tables.

A player is a L{Session}, by name; it outlives its connection while the
player keeps a seat, so that logging in again (a reconnection) finds the
seat and the hand in play (docs/poker.md, section 7).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from coursenet.accounts import PasswordChecker, PasswordFrom
from poker.engine import IllegalAction
from poker.interfaces import IBank, IListener
from poker.table import Seat, Table, TableConfig
from poker.wire import Code, PokerError, checkName

#: The tables a server opens when given none: a six-seat and a heads-up.
DEMO_TABLES = (
    TableConfig("demo1", seats=6, smallBlind=1, bigBlind=2, minBuyIn=40, maxBuyIn=200),
    TableConfig("demo2", seats=2, smallBlind=5, bigBlind=10, ante=0, minBuyIn=200, maxBuyIn=1000),
)


@dataclass(eq=False)
class Session:
    """
    A logged-in player.  C{listener} is their connection, L{None} while
    they are away; C{token} lets a guest log in again as themselves.
    """

    name: str
    guest: bool
    token: str
    listener: Any = None
    table: Table | None = None
    seat: Seat | None = None
    watching: set[Table] = field(default_factory=set)


class PokerServer:
    """
    The tables and the players of one server.

    @param checker: accounts (L{PasswordChecker}), or L{None}.
    @param guests: whether names that are not accounts may play, with
        C{guestBankroll} chips.
    @param accountBankroll: the chips an account starts with.
    @param grace: seconds a disconnected player keeps a seat.
    @param maxWatch: tables one connection may watch.
    """

    _log = Logger()

    def __init__(
        self,
        configs: list[TableConfig],
        bank: IBank,
        clock: Any,
        checker: PasswordChecker | None = None,
        guests: bool = False,
        guestBankroll: int = 1000,
        accountBankroll: int = 10_000,
        grace: float = 60.0,
        maxWatch: int = 16,
        maxTables: int = 2000,
        defaultClock: float = 30.0,
        defaultPause: float = 2.0,
    ) -> None:
        self.bank = bank
        self.clock = clock
        self.checker = checker
        self.guests = guests
        self.guestBankroll = guestBankroll
        self.accountBankroll = accountBankroll
        self.maxWatch = maxWatch
        self.maxTables = maxTables
        self.grace = grace
        self.defaultClock = defaultClock
        self.defaultPause = defaultPause
        self.tables: dict[str, Table] = {}
        for config in configs:
            if config.name in self.tables:
                raise ValueError(f"two tables named {config.name}")
            self.tables[config.name] = Table(config, clock, bank, grace=grace, onSeatFreed=self._seatFreed)
        self.sessions: dict[str, Session] = {}

    # -- logging in and out ------------------------------------------------------------

    def login(self, listener: IListener, name: str, secret: str | None, address: str | None) -> Deferred:
        """
        Log C{listener} in as C{name}; fire with the L{Session}, or fail
        with L{PokerError}.
        """
        checkName(name)
        if self.checker is not None and self.checker.hasUser(name):
            if secret is None:
                return fail(PokerError(Code.LOGIN_FAILED, f"{name} is an account: LOGIN {name} password"))

            def refused(f):
                f.trap(UnauthorizedLogin)
                raise PokerError(Code.LOGIN_FAILED, "login incorrect")

            d = self.checker.requestAvatarId(PasswordFrom(name, secret, address))
            d.addCallbacks(lambda _: self._attach(listener, name, guest=False), refused)
            return d
        if not self.guests:
            return fail(PokerError(Code.LOGIN_FAILED, f"no account {name}; this server takes accounts only"))
        session = self.sessions.get(name)
        if session is not None:
            if secret is None or not hmac.compare_digest(secret.encode(), session.token.encode()):
                return fail(PokerError(
                    Code.NAME_IN_USE,
                    f"{name} is playing; to come back as {name} give the token you were given: LOGIN {name} token",
                ))
        return succeed(self._attach(listener, name, guest=True))

    def _attach(self, listener: IListener, name: str, guest: bool) -> Session:
        session = self.sessions.get(name)
        if session is None:
            session = self.sessions[name] = Session(name, guest, secrets.token_hex(16))
            if self.bank.balance(name) is None:
                self.bank.grant(name, self.guestBankroll if guest else self.accountBankroll)
        old = session.listener
        session.listener = listener
        if old is not None and old is not listener:
            old.replaced()
        if session.seat is not None and session.table is not None:
            session.table.reconnected(session.seat, listener)
        return session

    def gone(self, session: Session | None, listener: IListener) -> None:
        """
        C{listener}'s connection is lost (or it quit).
        """
        for table in self.tables.values():
            table.unwatch(listener)
        if session is None or session.listener is not listener:
            return
        session.listener = None
        session.watching.clear()
        if session.seat is not None and session.table is not None:
            session.table.disconnected(session.seat)
        else:
            self._forget(session)

    def _forget(self, session: Session) -> None:
        if session.listener is None and session.seat is None and self.sessions.get(session.name) is session:
            del self.sessions[session.name]

    def _seatFreed(self, table: Table, seat: Seat) -> None:
        session = self.sessions.get(seat.name)
        if session is not None and session.seat is seat:
            session.seat = None
            session.table = None
            self._forget(session)

    # -- the lobby -----------------------------------------------------------------------

    def table(self, name: str) -> Table:
        table = self.tables.get(name)
        if table is None:
            raise PokerError(Code.NO_SUCH_TABLE, f"no table {name[:32]}; TABLES lists them")
        return table

    def open(self, name: str, seats: int) -> Table:
        """
        Open a table like the first demo table (blinds 1/2, buy-in 40 to
        200) with C{seats} seats: on a guests server only, for bots and
        classes that need more tables.
        """
        if not self.guests:
            raise PokerError(Code.BAD_SEQUENCE, "OPEN is for guests servers; the tables file sets the tables here")
        checkName(name)
        if name in self.tables:
            raise PokerError(Code.SEAT, f"there is a table {name} already")
        if len(self.tables) >= self.maxTables:
            raise PokerError(Code.TOO_MANY, f"there are {self.maxTables} tables, the most this server opens")
        if not 2 <= seats <= 9:
            raise PokerError(Code.BAD_ARGUMENT, f"a table has 2 to 9 seats, not {seats}")
        demo = DEMO_TABLES[0]
        config = TableConfig(
            name, seats, demo.smallBlind, demo.bigBlind, demo.ante, demo.minBuyIn, demo.maxBuyIn,
            actionTimeout=self.defaultClock, handPause=self.defaultPause,
        )
        table = self.tables[name] = Table(config, self.clock, self.bank, grace=self.grace, onSeatFreed=self._seatFreed)
        return table

    def sit(self, session: Session, tableName: str, number: int, buyIn: int) -> Seat:
        if session.seat is not None and session.table is not None:
            raise PokerError(
                Code.ALREADY_SEATED, f"you sit at {session.table.name} seat {session.seat.number}; LEAVE first"
            )
        table = self.table(tableName)
        if session.guest and (self.bank.balance(session.name) or 0) < buyIn <= self.guestBankroll:
            # Guest chips are free: a guest short of a buy-in is topped up.
            self.bank.grant(session.name, self.guestBankroll)
        seat = table.sit(number, session.name, buyIn, session.listener)
        session.table, session.seat = table, seat
        return seat

    def leave(self, session: Session) -> tuple[Table, Seat, bool]:
        seat, table = session.seat, session.table
        if seat is None or table is None:
            raise PokerError(Code.NOT_SEATED, "you are not seated; SIT table seat buyin")
        return table, seat, table.leave(seat)

    def act(self, session: Session, verb: str, amount: int | None) -> None:
        if session.seat is None or session.table is None:
            raise PokerError(Code.NOT_SEATED, "you are not seated; SIT table seat buyin")
        try:
            session.table.act(session.seat, verb, amount)
        except IllegalAction as e:
            raise PokerError(e.code, e.message)

    def watch(self, session: Session | None, listener: IListener, name: str) -> Table:
        table = self.table(name)
        watching = [t for t in self.tables.values() if listener in t.watchers]
        if table not in watching and len(watching) >= self.maxWatch:
            raise PokerError(Code.TOO_MANY, f"you watch {self.maxWatch} tables already; UNWATCH one first")
        table.watch(listener)
        return table

    def unwatch(self, listener: IListener, name: str) -> Table:
        table = self.table(name)
        table.unwatch(listener)
        return table

    def history(self, tableName: str, number: int) -> Deferred:
        table = self.table(tableName)
        if number >= table.handNumber and table.hand is not None or number > table.handNumber:
            return fail(PokerError(Code.NO_SUCH_HAND, f"hand {number} at {table.name} is not over yet"))

        def found(phh: str | None) -> str:
            if phh is None:
                raise PokerError(Code.NO_SUCH_HAND, f"no stored hand {number} at {table.name}")
            return phh

        return self.bank.hand(table.name, number).addCallback(found)
