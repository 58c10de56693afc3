"""
C{twistd poker}: the poker server as a twistd plugin.
"""

from __future__ import annotations

import configparser
from typing import Any

from twisted.application import service, strports
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import usage

from coursenet.accounts import PasswordChecker
from coursenet.admission import Admission
from coursenet.options import AccountOptionsMixin, AdmissionOptionsMixin, atLeast
from coursenet.throttle import GuessOptionsMixin
from coursenet.tls import tlsListenString
from poker.lobby import DEMO_TABLES, PokerServer
from poker.protocol import PokerFactory
from poker.store import Bank
from poker.table import TableConfig

DEFAULT_LISTEN = "tcp:7777:interface=127.0.0.1"
DEFAULT_TLS_PORT = 7778
DEFAULT_DB = "var/poker/poker.sqlite"


def parseTables(text: str, clock: float = 30.0, pause: float = 2.0) -> list[TableConfig]:
    """
    The tables of a tables file (docs/poker.md, section 9): an INI file, one
    section a table::

        [high]
        seats = 6
        blinds = 5/10
        ante = 1
        buyin = 200..1000
        clock = 30
        pause = 2

    @raise ValueError: saying which table and setting is wrong.
    """
    parser = configparser.ConfigParser()
    parser.read_string(text)
    tables = []
    for name in parser.sections():
        section = parser[name]
        known = {"seats", "blinds", "ante", "buyin", "clock", "pause"}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"table {name}: unknown setting {sorted(unknown)[0]}; known: {', '.join(sorted(known))}")
        try:
            small, _, big = section.get("blinds", "1/2").partition("/")
            low, _, high = section.get("buyin", "").partition("..")
            bigBlind = int(big or small)
            config = TableConfig(
                name,
                seats=section.getint("seats", 6),
                smallBlind=int(small),
                bigBlind=bigBlind,
                ante=section.getint("ante", 0),
                minBuyIn=int(low) if low else 20 * bigBlind,
                maxBuyIn=int(high) if high else 100 * bigBlind,
                actionTimeout=section.getfloat("clock", clock),
                handPause=section.getfloat("pause", pause),
            )
        except ValueError as e:
            raise ValueError(f"table {name}: {e}")
        config.check()
        tables.append(config)
    if not tables:
        raise ValueError("no tables in the file: one [name] section a table")
    return tables


class Options(AccountOptionsMixin, AdmissionOptionsMixin, GuessOptionsMixin, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A multi-table no-limit Texas Hold'em server (docs/poker.md); the rules are pokerkit's."
        " With no --listen, listens on " + DEFAULT_LISTEN + "; with no --tables, opens two demo tables."
    )
    optFlags = [
        ["guests", None, "anyone may play under a name of their choosing, with --guest-bankroll chips"],
    ]
    optParameters = [
        ["db", None, DEFAULT_DB, "SQLite file of chip balances, seats and hand histories"],
        ["tables", None, None, "INI file of tables (docs/poker.md section 9); default: two demo tables"],
        ["passwd", None, None, "password file of scrypt hashes (see coursenet-passwd)"],
        ["tls-cert", None, None, "PEM certificate: also listen with TLS on --tls-port"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
        ["tls-port", None, DEFAULT_TLS_PORT, "port of the --tls-cert listener", int],
        ["guest-bankroll", None, 1000, "chips a guest has (topped up to this when short of a buy-in)", int],
        ["bankroll", None, 10000, "chips an account starts with", int],
        ["grace", None, 60.0, "seconds a disconnected player keeps the seat", float],
        ["clock", None, 30.0, "seconds to act (demo tables, and tables that set none)", float],
        ["pause", None, 2.0, "seconds between hands (demo tables, and tables that set none)", float],
        ["max-tables", None, 2000, "tables there may be, with those OPENed by guests", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["users"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this endpoint (repeatable), e.g. tcp:7777 or
        ssl:7778:privateKey=key.pem:certKey=cert.pem
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        # Files readable, endpoints parseable, numbers in range: one line
        # naming the option, before anything listens.
        self.checkStartOptions(self.listenEndpoints())
        self.checkAdmission()
        if not 0 < self["tls-port"] < 65536:
            raise usage.UsageError(f"--tls-port {self['tls-port']}: must be a TCP port, 1 to 65535")
        for name, low in (("guest-bankroll", 1), ("bankroll", 0), ("max-tables", 1), ("grace", 0), ("pause", 0)):
            atLeast(name, self[name], low)
        if not self["clock"] > 0:
            raise usage.UsageError(f"--clock {self['clock']:g}: must be more than 0 seconds")
        if not (self["guests"] or self["passwd"] or self["users"]):
            raise usage.UsageError("nobody could play: give --guests, --passwd or --user")
        if not self["listen"]:
            self["listen"].append(DEFAULT_LISTEN)
        if self["tls-cert"]:
            self["listen"].append(tlsListenString(self["tls-port"], self["tls-cert"], self["tls-key"], "127.0.0.1"))
        if self["tables"]:
            try:
                with open(self["tables"]) as f:
                    self["table-configs"] = parseTables(f.read(), self["clock"], self["pause"])
            except (OSError, ValueError, configparser.Error) as e:
                raise usage.UsageError(f"--tables {self['tables']}: {e}")
        else:
            self["table-configs"] = [
                TableConfig(**{**c.__dict__, "actionTimeout": self["clock"], "handPause": self["pause"]})
                for c in DEMO_TABLES
            ]


class PokerService(service.MultiService):
    """
    The listeners, and the bank, written out and closed after them.
    """

    def __init__(self, bank: Bank) -> None:
        super().__init__()
        self.bank = bank

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        return d.addBoth(lambda _: self.bank.close())


def makeServer(options: Options, reactor: Any = None) -> PokerServer:
    """
    The server the options describe, on C{reactor} (the global one by
    default); shared by twistd and the threaded twin.
    """
    if reactor is None:
        from twisted.internet import reactor
    checker = None
    if options["passwd"] or options["users"]:
        checker = PasswordChecker(options["passwd"], options["users"], reactor=reactor, rule=options.guessRule())
    bank = Bank(options["db"], reactor)
    return PokerServer(
        options["table-configs"],
        bank,
        reactor,
        checker=checker,
        guests=options["guests"],
        guestBankroll=options["guest-bankroll"],
        accountBankroll=options["bankroll"],
        grace=options["grace"],
        maxTables=options["max-tables"],
        defaultClock=options["clock"],
        defaultPause=options["pause"],
    )


def makeService(options: Options) -> service.IService:
    server = makeServer(options)
    assert isinstance(server.bank, Bank)
    top = PokerService(server.bank)
    admission = Admission(options["max-connections"], options["max-per-address"])
    factory = PokerFactory(server, admission=admission)
    for description in options["listen"]:
        strports.service(description, factory).setServiceParent(top)
    return top
