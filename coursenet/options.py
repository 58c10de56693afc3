"""
Command-line pieces every service's twistd C{Options} shares.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable

from twisted.python import usage

from coursenet.accounts import parseUserSpec

if TYPE_CHECKING:
    # The mixins come before usage.Options in their users' bases, so the
    # type checker is told they are one (the option values, super's
    # postOptions); at run time they stay plain classes and leave Options'
    # own methods where the MRO puts them.
    OptionsMixinBase = usage.Options
else:
    OptionsMixinBase = object


class AccountOptionsMixin(OptionsMixinBase):
    """
    C{--user NAME:PASSWORD} (repeatable, collected in C{self["users"]}) and
    the check that C{--tls-cert} and C{--tls-key} come together.  Mix into
    a L{usage.Options} subclass before it.
    """

    def opt_user(self, spec: str) -> None:
        """
        Add an account NAME:PASSWORD (repeatable; for quick starts)
        """
        try:
            self.setdefault("users", []).append(parseUserSpec(spec))
        except ValueError as e:
            raise usage.UsageError(str(e))

    def checkTLSPair(self) -> None:
        """
        @raise usage.UsageError: if only one of --tls-cert, --tls-key is
            set, or a file named by --tls-cert, --tls-key or --passwd cannot
            be read (L{checkStartOptions} without listeners).
        """
        self.checkStartOptions()

    def listenEndpoints(self) -> list[tuple[str, str]]:
        """
        The C{(option, endpoint description)} pairs of C{--listen}, for
        L{checkStartOptions} (the twins' C{HOST:PORT} are not endpoints).
        """
        return [("listen", d) for d in self.get("listen", [])]

    def checkStartOptions(self, listeners: Iterable[tuple[str, str]] = ()) -> None:
        """
        Refuse, before anything starts, the mistakes that would otherwise
        show only later as a traceback or as every login failing.

        @param listeners: C{(option, endpoint description)} pairs to parse.
        @raise usage.UsageError: one line naming the option and what to do.
        """
        if bool(self.get("tls-cert")) != bool(self.get("tls-key")):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        for option in ("tls-cert", "tls-key"):
            if self.get(option):
                readableFile(option, self[option])
        if self.get("tls-cert"):
            from coursenet.tls import serverContextFactory

            try:
                serverContextFactory(self["tls-cert"], self["tls-key"])
            except Exception as e:
                raise usage.UsageError(
                    f"--tls-cert {self['tls-cert']} --tls-key {self['tls-key']}: not a PEM certificate"
                    f" and its private key ({e.__class__.__name__}: {str(e)[:120]})"
                )
        if self.get("passwd"):
            passwordFile("passwd", self["passwd"])
        for option, description in listeners:
            parseableEndpoint(option, description)


def readableFile(option: str, path: str, hint: str = "") -> None:
    """
    @raise usage.UsageError: unless C{path} is a file this process can read.
    """
    if not os.path.exists(path):
        raise usage.UsageError(f"--{option} {path}: no such file{hint}")
    if not os.path.isfile(path):
        raise usage.UsageError(f"--{option} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise usage.UsageError(f"--{option} {path}: not readable by this user")


def passwordFile(option: str, path: str) -> None:
    """
    @raise usage.UsageError: unless C{path} is a readable password file
        whose every account line is C{NAME:scrypt$...}, as coursenet-passwd
        writes (a client's C{NAME:TOKEN} file given by mistake would start
        the server with every login failing).
    """
    readableFile(option, path, hint=f"; create it with: coursenet-passwd {path} NAME")
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if line and not line.startswith("#") and not line.partition(":")[2].startswith("scrypt$"):
                    raise usage.UsageError(
                        f"--{option} {path}: line {number} is not NAME:scrypt$... (a password file that"
                        f" coursenet-passwd {path} NAME writes; a NAME:TOKEN file is for a client)"
                    )
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--{option} {path}: cannot read it ({e})")


def parseableEndpoint(option: str, description: str) -> None:
    """
    @raise usage.UsageError: if C{description} is not a server endpoint
        string Twisted can build (nothing is listened on).
    """
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:  # whatever building it raises: a parse error, a bad PEM file

        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise usage.UsageError(
            f"--{option} {description}: not a usable endpoint ({why});"
            " e.g. tcp:9021:interface=127.0.0.1 or ssl:9022:privateKey=key.pem:certKey=cert.pem"
        )


def atLeast(option: str, value: int | float | None, low: int | float) -> None:
    """
    @raise usage.UsageError: if C{value} is below C{low}.
    """
    if value is not None and value < low:
        raise usage.UsageError(f"--{option} {value}: must be at least {low}")


class AdmissionOptionsMixin(OptionsMixinBase):
    """
    C{--max-connections} and C{--max-per-address}, the caps of
    L{coursenet.admission.Admission} (L{None}: its defaults, under the
    process's descriptor limit).  Mix into a L{usage.Options} subclass
    before it; usage.Options gathers these with the subclass's own.
    """

    optParameters: list[Any] = [
        ["max-connections", None, None,
         "connections allowed in all, on every listener together"
         " (default: as many as the descriptor limit allows)", int],
        ["max-per-address", None, None, "connections allowed from one address (default: 256)", int],
    ]

    def checkAdmission(self) -> None:
        """
        @raise usage.UsageError: for a cap below 1.
        """
        atLeast("max-connections", self.get("max-connections"), 1)
        atLeast("max-per-address", self.get("max-per-address"), 1)
