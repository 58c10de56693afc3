"""
C{twistd grades}: the grades database service as a twistd plugin.
"""

from __future__ import annotations

from twisted.application import service, strports
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import usage

from coursenet.accounts import PasswordChecker, checkUserName
from coursenet.options import AccountOptionsMixin, AdmissionOptionsMixin, atLeast
from coursenet.throttle import GuessOptionsMixin
from coursenet.tls import serverContextFactory, tlsListenString
from grades.auth import makePortal
from grades.protocol import GradesFactory
from grades.store import SQLStore, openStore
from grades.wire import MAX_IMPORT, GradesError, parseCourse, parseId

DEFAULT_LISTEN = "tcp:7070:interface=127.0.0.1"
DEFAULT_TLS_PORT = 7071
DEFAULT_DB = "sqlite:var/grades/grades.sqlite"


class Options(AccountOptionsMixin, AdmissionOptionsMixin, GuessOptionsMixin, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "The course's grades database query protocol (docs/grades.md) as a"
        " multi-client database service. With no --listen, listens on " + DEFAULT_LISTEN + "."
    )
    optFlags = [
        ["public-demo", None, "anyone may read without logging in (the seed's dialogue);"
                              " an empty database gets the demo data"],
    ]
    optParameters = [
        ["db", None, DEFAULT_DB, "the database: sqlite:PATH or postgresql://USER@HOST/DBNAME"],
        ["passwd", None, None, "password file of scrypt hashes (see coursenet-passwd)"],
        ["tls-cert", None, None, "PEM certificate: STARTTLS, and a TLS listener on --tls-port;"
                                 " logins then need TLS"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
        ["tls-port", None, DEFAULT_TLS_PORT, "port of the --tls-cert listener (0: none)", int],
        ["idle-timeout", None, 300.0, "seconds before an idle connection is closed (0: never)", float],
        ["max-import", None, MAX_IMPORT, "largest IMPORT block, in bytes", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["users"] = []
        self["students"] = {}
        self["instructors"] = {}

    def opt_listen(self, description: str) -> None:
        """
        Listen on this endpoint (repeatable), e.g. tcp:7070 or
        ssl:7071:privateKey=key.pem:certKey=cert.pem
        """
        self["listen"].append(description)

    def opt_student(self, spec: str) -> None:
        """
        ACCOUNT:ID: the account is the student with this id (repeatable)
        """
        account, sep, sid = spec.partition(":")
        try:
            if not sep:
                raise ValueError(f"expected ACCOUNT:ID, got {spec!r}")
            checkUserName(account)
            self["students"][account] = parseId(sid)
        except (ValueError, GradesError) as e:
            raise usage.UsageError(str(e))

    def opt_instructor(self, spec: str) -> None:
        """
        ACCOUNT:COURSE[,COURSE...]: the account teaches these courses (repeatable)
        """
        account, sep, courses = spec.partition(":")
        try:
            if not sep or not courses:
                raise ValueError(f"expected ACCOUNT:COURSE[,COURSE...], got {spec!r}")
            checkUserName(account)
            self["instructors"].setdefault(account, set()).update(parseCourse(c) for c in courses.split(","))
        except (ValueError, GradesError) as e:
            raise usage.UsageError(str(e))

    def postOptions(self) -> None:
        # Files readable, endpoints parseable, numbers in range: one line
        # naming the option, before anything listens.
        self.checkStartOptions(self.listenEndpoints())
        self.checkAdmission()
        if not 0 <= self["tls-port"] < 65536:
            raise usage.UsageError(f"--tls-port {self['tls-port']}: must be a TCP port, 1 to 65535 (0: none)")
        atLeast("idle-timeout", self["idle-timeout"], 0)
        atLeast("max-import", self["max-import"], 1)
        if not self["listen"]:
            self["listen"].append(DEFAULT_LISTEN)
        if self["tls-cert"] and self["tls-port"]:
            self["listen"].append(
                tlsListenString(self["tls-port"], self["tls-cert"], self["tls-key"], "127.0.0.1")
            )


def makeStore(options: Options, reactor=None, pool=None) -> SQLStore:
    """
    The database the options name, its tables made and its roles and demo
    data loaded (in the calling thread: at start-up).
    """
    try:
        store = openStore(options["db"], reactor, pool=pool)
    except ValueError as e:
        raise usage.UsageError(str(e))
    store.setupNow(options["students"], options["instructors"], options["public-demo"])
    return store


def makeFactory(options: Options, store: SQLStore, reactor=None) -> GradesFactory:
    """
    The server the options describe, on C{reactor} (the global one by
    default); shared by twistd and the threaded and forking twins.
    """
    checker = PasswordChecker(options["passwd"], options["users"], reactor=reactor, rule=options.guessRule())
    tls = serverContextFactory(options["tls-cert"], options["tls-key"]) if options["tls-cert"] else None
    return GradesFactory(
        store,
        makePortal(store, checker),
        reactor=reactor,
        publicDemo=options["public-demo"],
        tls=tls,
        idleTimeout=options["idle-timeout"],
        maxImport=options["max-import"],
        maxConnections=options["max-connections"],
        maxPerAddress=options["max-per-address"],
    )


class GradesService(service.MultiService):
    """
    The listeners, and the database, closed after them.
    """

    def __init__(self, store: SQLStore) -> None:
        super().__init__()
        self.store = store

    def startService(self) -> None:
        self.store.start()
        super().startService()

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        return d.addBoth(lambda _: self.store.close())


def makeService(options: Options) -> service.IService:
    store = makeStore(options)
    factory = makeFactory(options, store)
    top = GradesService(store)
    for description in options["listen"]:
        strports.service(description, factory).setServiceParent(top)
    return top
