"""
The poker line protocol (docs/poker.md): one L{PokerProtocol} per
connection, on the project's command receiver; the tables and players
live in a shared L{poker.lobby.PokerServer}.

Each command is a C{do_VERB} method.  One that finishes later (LOGIN with
a password, HISTORY) returns a L{Deferred}; until it fires the connection
reads nothing more, so replies come in command order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from coursenet.admission import Admission, AdmittingFactory
from coursenet.receiver import CommandReceiver
from coursenet.throttle import hostOf
from poker.interfaces import IListener
from poker.lobby import PokerServer, Session
from poker.wire import (
    MAX_LINE,
    VERSION,
    Code,
    Command,
    PokerError,
    formatLine,
    formatReply,
    parseAmount,
    parseCommand,
)

#: Commands that need no login: looking on is free.
_BEFORE_LOGIN = {"LOGIN", "TABLES", "WATCH", "UNWATCH", "HISTORY", "PING", "HELP", "QUIT"}

HELP = [
    "LOGIN name [password]      log in (a guest name, or an account with its password;",
    "                           a guest coming back gives the token it was given)",
    "TABLES                     list the tables",
    "OPEN table [seats]         open a table (guests servers)",
    "SIT table seat buyin       take a seat with chips from your balance",
    "LEAVE                      leave your seat (after the hand in play)",
    "WATCH table / UNWATCH table  follow a table as a spectator",
    "ACT FOLD|CHECK|CALL|BET n|RAISE n   act when it is your turn (n: your total for the street)",
    "BALANCE                    your chips",
    "HISTORY table hand         a finished hand in PHH",
    "PING [token] / HELP / QUIT",
]


@implementer(IListener)
class PokerProtocol(CommandReceiver, Protocol):
    """
    One connection: a player, a spectator, or both.
    """

    maxLineLength = MAX_LINE
    factory: "PokerFactory"
    session: Session | None = None
    _log = Logger()

    @property
    def server(self) -> PokerServer:
        return self.factory.server

    def connectionMade(self) -> None:
        # Small lines both ways, each waited for: Nagle's algorithm with
        # delayed ACKs would hold them 40 ms.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.reply(Code.READY, f"{VERSION} coursenet poker ready; max-line={MAX_LINE}; LOGIN name, or TABLES and WATCH")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.server.gone(self.session, self)
        super().connectionLost(reason)

    @staticmethod
    def busyReply(text: str) -> bytes:
        return formatReply(Code.CLOSING, text)

    # -- IListener ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def replaced(self) -> None:
        self.session = None
        self.send(formatLine("CLOSED - you logged in on another connection"))
        self.transport.loseConnection()

    def reply(self, code: int, text: str) -> None:
        self.send(formatReply(code, text))

    def lines(self, code: int, lines: list[str], last: str) -> None:
        self.send(b"".join(formatReply(code, line, more=True) for line in lines) + formatReply(code, last))

    # -- input ----------------------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        self.reply(Code.SYNTAX, f"line too long: the limit is {MAX_LINE} bytes; line ignored")

    def lineReceived(self, line: bytes) -> Deferred | None:
        try:
            command = parseCommand(line)
            if self.session is None and command.verb not in _BEFORE_LOGIN:
                raise PokerError(Code.BAD_SEQUENCE, f"log in first: LOGIN name ({command.verb} needs a player)")
            result = getattr(self, "do_" + command.verb)(command)
        except PokerError as e:
            self.reply(e.code, e.message)
            return None
        except Exception:
            self._log.failure("command failed")
            self.reply(Code.INTERNAL, "internal server error; the command was not completed")
            return None
        if isinstance(result, Deferred):
            return result.addErrback(self._failed)
        return None

    def _failed(self, failure: Failure) -> None:
        if failure.check(PokerError):
            self.reply(failure.value.code, failure.value.message)
        else:
            self._log.failure("command failed", failure)
            self.reply(Code.INTERNAL, "internal server error; the command was not completed")

    # -- commands -------------------------------------------------------------------------

    def do_LOGIN(self, command: Command) -> Deferred:
        if self.session is not None:
            raise PokerError(Code.BAD_SEQUENCE, f"already logged in as {self.session.name}")
        name = command.args[0]
        secret = command.args[1] if len(command.args) > 1 else None
        address = hostOf(self.transport.getPeer())

        def done(session: Session) -> None:
            self.session = session
            balance = self.server.bank.balance(session.name)
            where = ""
            if session.seat is not None and session.table is not None:
                where = f"; back at {session.table.name} seat {session.seat.number}"
            token = f" token={session.token}" if session.guest else ""
            self.reply(Code.LOGGED_IN, f"{session.name} logged in; balance={balance}{token}{where}")

        return self.server.login(self, name, secret, address).addCallback(done)

    def do_TABLES(self, command: Command) -> None:
        tables = [t.describe() for t in self.server.tables.values()]
        self.lines(Code.TABLES, tables, f"{len(tables)} tables")

    def do_OPEN(self, command: Command) -> None:
        seats = parseAmount(command.args[1], "seats") if len(command.args) > 1 else 6
        table = self.server.open(command.args[0], seats)
        self.reply(Code.OK, f"opened {table.describe()}")

    def do_SIT(self, command: Command) -> None:
        assert self.session is not None
        name, seatText, buyText = command.args
        seat = self.server.sit(self.session, name, parseAmount(seatText, "seat"), parseAmount(buyText, "buy-in"))
        self.reply(Code.SEATED, f"seated at {name} seat {seat.number} with {seat.stack}")

    def do_LEAVE(self, command: Command) -> None:
        assert self.session is not None
        table, seat, now = self.server.leave(self.session)
        if now:
            balance = self.server.bank.balance(self.session.name)
            self.reply(Code.LEFT, f"left {table.name} seat {seat.number} with {seat.stack}; balance={balance}")
        else:
            self.reply(Code.LEAVING, f"leaving {table.name} seat {seat.number} when this hand ends")

    def do_WATCH(self, command: Command) -> None:
        table = self.server.watch(self.session, self, command.args[0])
        self.reply(Code.WATCHING, f"watching {table.name}")

    def do_UNWATCH(self, command: Command) -> None:
        table = self.server.unwatch(self, command.args[0])
        self.reply(Code.OK, f"no longer watching {table.name}")

    def do_ACT(self, command: Command) -> None:
        assert self.session is not None
        verb = command.args[0]
        amount = parseAmount(command.args[1]) if len(command.args) > 1 else None
        self.server.act(self.session, verb, amount)
        self.reply(Code.OK, f"{verb} done")

    def do_BALANCE(self, command: Command) -> None:
        assert self.session is not None
        balance = self.server.bank.balance(self.session.name)
        seat, table = self.session.seat, self.session.table
        where = f"; seated at {table.name} seat {seat.number} with {seat.stack}" if seat and table else ""
        self.reply(Code.BALANCE, f"balance={balance}{where}")

    def do_HISTORY(self, command: Command) -> Deferred:
        name, number = command.args[0], parseAmount(command.args[1], "hand")

        def found(phh: str) -> None:
            self.lines(Code.HISTORY, phh.splitlines(), f"end of hand {number} at {name} (PHH)")

        return self.server.history(name, number).addCallback(found)

    def do_PING(self, command: Command) -> None:
        self.reply(Code.OK, f"PONG {command.args[0] if command.args else '-'}")

    def do_HELP(self, command: Command) -> None:
        self.lines(Code.HELP, HELP, "end of HELP; docs/poker.md has the rest")

    def do_QUIT(self, command: Command) -> None:
        if self.session is not None and self.session.seat is not None:
            self.server.leave(self.session)
        self.reply(Code.BYE, "bye")
        self.transport.loseConnection()


class PokerFactory(AdmittingFactory, Factory):
    """
    Poker connections to one L{PokerServer}, admitted under its caps.
    """

    protocol = PokerProtocol  # type: ignore[assignment]

    def __init__(self, server: PokerServer, reactor: Any = None, admission: Admission | None = None) -> None:
        self.server = server
        self.reactor = reactor
        self.admission = admission if admission is not None else Admission()
