"""
Accounts shared by every service: a password file of scrypt hashes behind a
L{twisted.cred} checker.

The file is plain text, one account a line::

    alice:scrypt$16384$8$1$<salt, base64>$<hash, base64>

Lines starting with C{#} and blank lines are ignored.  Passwords are never
stored or logged in clear; verification runs in a thread because scrypt is
deliberately slow and the reactor must not wait for it.

Every check goes through the password-guess throttle
(L{coursenet.throttle}), keyed by the client's address: services give it
with L{PasswordFrom} credentials, or by logging in through
L{PeerPortal} where Twisted builds the credentials.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import secrets
import sys
from typing import Callable, Iterable

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from coursenet.coalesce import Coalescer
from coursenet.logs import LogBudget
from coursenet.throttle import GuessRule, Throttle, hostOf

_SCHEME = "scrypt"
_N, _R, _P = 2**14, 8, 1
_DKLEN = 32


def hashPassword(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """
    Hash C{password} with a fresh random salt.

    @return: the encoded hash, C{scrypt$N$r$p$salt$hash}.
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_DKLEN
    )
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{_SCHEME}${n}${r}${p}${b64(salt)}${b64(digest)}"


def verifyPassword(password: str, encoded: str) -> bool:
    """
    Check C{password} against an encoded hash in constant time.

    A malformed hash never matches.
    """
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def readTokenFile(path: str) -> tuple[str, str]:
    """
    The C{NAME:TOKEN} on the first line of a client's token file (the
    tether client's, a compute worker's).

    @raise OSError: if it cannot be read.
    @raise ValueError: if it is not UTF-8 or does not hold C{NAME:TOKEN}.
    """
    with open(path, encoding="utf-8") as f:
        name, sep, token = f.readline().strip().partition(":")
    if not sep or not name or not token:
        raise ValueError("must hold one line NAME:TOKEN")
    return name, token


def parseUserSpec(spec: str) -> tuple[str, str]:
    """
    Split a C{NAME:PASSWORD} command-line value.

    @raise ValueError: if there is no colon or the name is not valid.
    """
    name, sep, password = spec.partition(":")
    if not sep:
        raise ValueError(f"expected NAME:PASSWORD, got {spec!r}")
    checkUserName(name)
    return name, password


def checkUserName(name: str) -> None:
    """
    @raise ValueError: unless C{name} is 1-64 printable characters with no
        colon, whitespace or control character.
    """
    if not 0 < len(name) <= 64 or any(
        c == ":" or c.isspace() or not c.isprintable() for c in name
    ):
        raise ValueError(
            f"invalid user name {name!r}: use 1-64 printable characters,"
            " no colon or white space"
        )


def readPasswordFile(path: str) -> dict[str, str]:
    """
    Read a password file into a mapping of user name to encoded hash.

    A missing file reads as no accounts.
    """
    accounts: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, _, encoded = line.partition(":")
                if encoded:
                    accounts[name] = encoded
    except FileNotFoundError:
        pass
    return accounts


def writePasswordFile(path: str, accounts: dict[str, str]) -> None:
    """
    Replace the password file atomically, readable by its owner only.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for name in sorted(accounts):
            f.write(f"{name}:{accounts[name]}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def setPassword(path: str, name: str, password: str) -> None:
    """
    Add C{name} to the password file at C{path}, or change its password.
    """
    checkUserName(name)
    accounts = readPasswordFile(path)
    accounts[name] = hashPassword(password)
    writePasswordFile(path, accounts)


class IClientAddress(Interface):
    """
    Credentials that say where the client connected from.
    """

    address = Attribute("The client's host, C{str}, or L{None} if unknown.")


@implementer(IClientAddress)
class PasswordFrom(UsernamePassword):
    """
    A user name and password, and the address of the client that sent them,
    by which L{PasswordChecker} throttles guessing.
    """

    def __init__(self, username, password, address: str | None) -> None:
        super().__init__(username, password)
        self.address = address


class PeerPortal:
    """
    A portal for one connection: logs in through C{portal}, turning
    user-name-and-password credentials into L{PasswordFrom} ones from the
    connection's address.  For protocols whose credentials Twisted builds
    (IMAP LOGIN and AUTHENTICATE, SMTP AUTH).
    """

    def __init__(self, portal, address, onLogin: Callable[[str], None] | None = None) -> None:
        """
        @param address: the connection's peer, an C{IAddress}.
        @param onLogin: called with the user name after each successful
            login (to log it).
        """
        self.portal = portal
        self.address = hostOf(address)
        self.onLogin = onLogin

    @classmethod
    def forPeer(cls, portal, address, onLogin: Callable[[str], None] | None = None) -> "PeerPortal | None":
        """
        A L{PeerPortal} for C{portal}, or L{None} if there is no portal.
        """
        return None if portal is None else cls(portal, address, onLogin)

    def login(self, credentials, mind, *interfaces) -> Deferred:
        if IUsernamePassword.providedBy(credentials) and not IClientAddress.providedBy(credentials):
            credentials = PasswordFrom(credentials.username, credentials.password, self.address)
        d = self.portal.login(credentials, mind, *interfaces)
        if self.onLogin is not None and IUsernamePassword.providedBy(credentials):
            raw = credentials.username
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            onLogin = self.onLogin

            def loggedIn(result):
                onLogin(name)
                return result

            d.addCallback(loggedIn)
        return d

    def listCredentialsInterfaces(self) -> list:
        return self.portal.listCredentialsInterfaces()


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    Check user names and passwords against a password file and against
    accounts given on the command line.

    The file is read again whenever its modification time changes, so
    C{coursenet-passwd} works on a running server.

    scrypt costs tens of milliseconds and 16 MiB a check, so at most
    C{concurrency} checks run at once; checks of the same name and password
    that arrive together share one; and a password once verified is
    remembered, as an HMAC under a key that lives only in this process, so
    the same user logging in again costs a hash, not an scrypt.  Wrong
    passwords always pay the full price.

    Every check, remembered or not, first passes L{throttle}: a
    L{coursenet.throttle.Throttle} whose counts live beside the password
    file (C{PATH.throttle}), so every service and process reading the file
    shares them; in memory when there is no file.
    """

    credentialInterfaces = (IUsernamePassword,)
    _log = Logger()

    def __init__(
        self,
        path: str | None = None,
        users: Iterable[tuple[str, str]] = (),
        reactor=None,
        concurrency: int = 2,
        rule: GuessRule = GuessRule(),
    ) -> None:
        """
        @param path: a password file, or L{None}.
        @param users: C{(name, clear password)} pairs, hashed here at once.
        @param concurrency: scrypt checks allowed to run at once.
        @param rule: how failed logins slow down the next ones.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        # Guessing is slowed per account, but many accounts guessed at
        # once must not become as many log lines.
        self._failures = LogBudget(self._log, reactor)
        self.throttle = Throttle.besidePasswordFile(path, rule, reactor)
        self._path = path
        self._stamp: float | None = None
        self._fromFile: dict[str, str] = {}
        self._fromArgs = {name: hashPassword(pw) for name, pw in users}
        self._secret = secrets.token_bytes(32)
        self._verified: dict[tuple[str, str], bytes] = {}
        self._checks = Coalescer()
        self._slots = DeferredSemaphore(concurrency)

    def _accounts(self) -> dict[str, str]:
        if self._path is not None:
            try:
                stamp = os.stat(self._path).st_mtime_ns
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._fromFile = readPasswordFile(self._path)
                self._stamp = stamp
        return {**self._fromFile, **self._fromArgs}

    def hasUser(self, name: str) -> bool:
        """
        Whether C{name} is an account here.
        """
        return name in self._accounts()

    def userNames(self) -> set[str]:
        """
        The names of every account here.
        """
        return set(self._accounts())

    def requestAvatarId(self, credentials) -> Deferred:
        """
        When the throttle allows, verify the password in a thread; fire with
        the user name or fail with L{UnauthorizedLogin}.

        @param credentials: L{IUsernamePassword}; if they provide
            L{IClientAddress} (L{PasswordFrom}), throttled by account and
            address, else by account and an unknown address.
        """
        name = credentials.username
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        password = credentials.password
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        address = credentials.address if IClientAddress.providedBy(credentials) else None
        return self.throttle.guard(name, address, lambda: self._check(name, password, address))

    def _check(self, name: str, password: str, address: str | None) -> Deferred:
        encoded = self._accounts().get(name)
        known = encoded is not None
        if encoded is None:
            # Check anyway so that unknown and known names take the same time.
            encoded = _DUMMY_HASH
        tag = hmac.new(self._secret, password.encode("utf-8"), "sha256").digest()
        remembered = self._verified.get((name, encoded))
        if known and remembered is not None and hmac.compare_digest(remembered, tag):
            return succeed(name)

        def checked(ok: bool):
            if ok and known:
                if len(self._verified) >= 10_000:
                    self._verified.clear()
                self._verified[(name, encoded)] = tag
                return name
            self._failures.info("failed login for {user} from {address}", user=name, address=address)
            raise UnauthorizedLogin("login incorrect")

        return self._verify(name, encoded, password, tag).addCallback(checked)

    def _verify(self, name: str, encoded: str, password: str, tag: bytes) -> Deferred[bool]:
        """
        scrypt in a thread, one check for all who ask the same meanwhile.
        """
        pool = self._reactor.getThreadPool()
        return self._checks.run(
            (name, encoded, tag),
            lambda: self._slots.run(deferToThreadPool, self._reactor, pool, verifyPassword, password, encoded),
        )


_DUMMY_HASH = hashPassword(secrets.token_hex(8))


def main(argv: list[str] | None = None) -> int:
    """
    C{coursenet-passwd FILE NAME}: add an account to a password file or
    change its password.  The password comes from C{--password-env VAR},
    one line on standard input when it is not a terminal, or a prompt;
    never from the command line.
    """
    parser = argparse.ArgumentParser(
        prog="coursenet-passwd",
        description="Add a user to a password file or change a password.",
    )
    parser.add_argument("file", help="the password file (created if missing)")
    parser.add_argument("name", help="the user name")
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable",
    )
    parser.add_argument(
        "--delete", action="store_true", help="remove the user instead"
    )
    args = parser.parse_args(argv)
    try:
        checkUserName(args.name)
    except ValueError as e:
        parser.error(str(e))
    if args.delete:
        accounts = readPasswordFile(args.file)
        if accounts.pop(args.name, None) is None:
            print(f"coursenet-passwd: no user {args.name}", file=sys.stderr)
            return 1
        writePasswordFile(args.file, accounts)
        return 0
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            parser.error(f"environment variable {args.password_env} is not set")
    elif not sys.stdin.isatty():
        # Piped in (echo pw | coursenet-passwd FILE NAME): one line, no
        # confirmation, as htpasswd -i and chpasswd read it.
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            parser.error("no password on standard input (pipe one line, or use --password-env)")
    else:
        try:
            password = getpass.getpass(f"password for {args.name}: ")
            again = getpass.getpass("again: ")
        except (EOFError, KeyboardInterrupt):
            print("\ncoursenet-passwd: no password given; nothing changed", file=sys.stderr)
            return 1
        if password != again:
            print("coursenet-passwd: passwords differ", file=sys.stderr)
            return 1
    if not password:
        parser.error("empty password")
    setPassword(args.file, args.name, password)
    print(f"coursenet-passwd: {args.name} saved in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
