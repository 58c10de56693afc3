"""
C{twistd bftp}: the BFTP server as a twistd plugin.
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from bftp.auth import makePortal
from bftp.policy import Policy, parseAge, parseSize
from bftp.protocol import BFTPFactory
from coursenet._compat import preferCiphersuites
from coursenet.accounts import PasswordChecker
from coursenet.options import AccountOptionsMixin, AdmissionOptionsMixin, atLeast
from coursenet.throttle import GuessOptionsMixin
from coursenet.tls import tlsListenString

DEFAULT_LISTEN = "tcp:9021:interface=127.0.0.1"
_log = Logger()
DEFAULT_TLS_PORT = 9022


class Options(AccountOptionsMixin, AdmissionOptionsMixin, GuessOptionsMixin, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve a directory over BFTP, the Braude File Transfer Protocol. "
        "With no --listen, listens on " + DEFAULT_LISTEN + "."
    )
    optFlags = [
        ["anonymous", None, "let the user 'anonymous' in with any password, read-only"],
        ["no-sendfile", None, "send file data through Python instead of os.sendfile"],
    ]
    optParameters = [
        ["root", None, ".", "the directory to serve (created if missing; default: the current one)"],
        ["passwd", None, None, "password file of scrypt hashes (see coursenet-passwd)"],
        ["tls-cert", None, None, "PEM certificate: also listen with TLS"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
        ["tls-port", None, DEFAULT_TLS_PORT, "port of the --tls-cert listener", int],
        ["idle-timeout", None, 300, "seconds before an idle connection is closed", int],
        ["max-file-size", None, 0, "largest file a PUT may store, in bytes (0: no limit)", int],
        ["login-timeout", None, 60, "seconds a connection may take to log in", int],
        ["class-config", None, None, "TOML file of a class: admins, areas, hand-in deadline, quota (docs/bftp.md 17)"],
        ["quota", None, None, "class mode: bytes a student's home and hand-in may hold, e.g. 200M (default: no quota)"],
        ["partial-max-age", None, None, "remove unfinished uploads untouched this long, e.g. 36h, 7d; 0 keeps them (default 7d)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["users"] = []
        self["admins"] = []

    def opt_admin(self, name: str) -> None:
        """
        This account is an admin; the others are students (repeatable;
        turns class mode on, docs/bftp.md section 17)
        """
        self["admins"].append(name)

    def opt_listen(self, description: str) -> None:
        """
        Listen on this endpoint (repeatable), e.g. tcp:9021 or
        ssl:9022:privateKey=key.pem:certKey=cert.pem
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        self.checkStartOptions(self.listenEndpoints())
        self.checkAdmission()
        atLeast("idle-timeout", self["idle-timeout"], 1)
        atLeast("login-timeout", self["login-timeout"], 1)
        atLeast("max-file-size", self["max-file-size"], 0)
        if not 0 < self["tls-port"] < 65536:
            raise usage.UsageError(f"--tls-port {self['tls-port']}: must be a TCP port, 1 to 65535")
        if os.path.exists(self["root"]) and not os.path.isdir(self["root"]):
            raise usage.UsageError(f"--root {self['root']}: not a directory")
        try:
            self["policy"] = Policy.fromConfig(
                self["class-config"],
                admins=self["admins"],
                quota=None if self["quota"] is None else parseSize(self["quota"]),
                partialMaxAge=None if self["partial-max-age"] is None else parseAge(self["partial-max-age"]),
            )
        except (OSError, ValueError) as e:
            raise usage.UsageError(str(e))
        if not self["passwd"] and not self["users"] and not self["anonymous"]:
            raise usage.UsageError("no accounts: give --passwd, --user or --anonymous")
        if not self["listen"]:
            self["listen"].append(DEFAULT_LISTEN)
        if self["tls-cert"]:
            self["listen"].append(
                tlsListenString(self["tls-port"], self["tls-cert"], self["tls-key"], "127.0.0.1")
            )


def makeFactory(options: Options, reactor=None, uploads=None) -> BFTPFactory:
    """
    The server the options describe, on C{reactor} (the global one by
    default); shared by twistd and the threaded and forking twins.

    @param uploads: the set of paths being uploaded, if it must be shared
        beyond this process (L{BFTPFactory}).
    """
    os.makedirs(options["root"], exist_ok=True)
    checker = PasswordChecker(options["passwd"], options["users"], reactor=reactor, rule=options.guessRule())
    return BFTPFactory(
        options["root"],
        makePortal(checker, anonymous=options["anonymous"]),
        anonymous=options["anonymous"],
        reactor=reactor,
        idleTimeout=options["idle-timeout"],
        maxPerAddress=options["max-per-address"],
        maxConnections=options["max-connections"],
        maxFileSize=options["max-file-size"] or None,
        loginTimeout=options["login-timeout"],
        sendfile=not options["no-sendfile"],
        uploads=uploads,
        policy=options["policy"],
    )


def makeService(options: Options) -> service.IService:
    factory = makeFactory(options)
    if options["anonymous"]:
        where = "everything in" if not factory.policy.classMode else "the public areas of"
        _log.warn(
            "anonymous access is on: anyone who can connect reads {where} {root}",
            where=where, root=factory.jail.root,
        )
    top = service.MultiService()
    from twisted.internet import reactor

    for description in options["listen"]:
        endpoint = endpoints.serverFromString(reactor, description)
        # Bulk data over TLS: AES-128-GCM first (docs/bftp.md).
        preferCiphersuites(endpoint)
        StreamServerEndpointService(endpoint, factory).setServiceParent(top)
    return top
