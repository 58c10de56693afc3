"""
The worker protocol: AMP commands between the coordinator and its workers
(docs/compute.md, section 5), and the coordinator's side of it.

A worker connects, sends L{Login} with its name and token, then asks for
chunks with L{Lease} (the answer waits until there is one), reports
L{Progress} while it computes, and sends the value with L{Complete}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.protocols import amp

from compute.jobs import BadResult
from coursenet.accounts import PasswordChecker, PasswordFrom
from coursenet.admission import Admission, AdmittingFactory
from coursenet.throttle import hostOf

#: Leases (held and asked for) one connection may have at once.
MAX_LEASES_PER_WORKER = 256
#: Seconds a new connection has to log in.
LOGIN_TIMEOUT = 30.0


class LoginFailed(Exception):
    """
    The name and token were refused.
    """


class NotLoggedIn(Exception):
    """
    A command other than L{Login} before a successful login.
    """


class TooManyLeases(Exception):
    """
    A worker asked for more leases than it may hold.
    """


class Login(amp.Command):
    """
    Log in with the token file's C{NAME:TOKEN}.
    """

    arguments = [(b"name", amp.Unicode()), (b"token", amp.Unicode())]
    response: list = []  # type: ignore[misc]
    errors = {LoginFailed: b"LOGIN_FAILED"}


class Lease(amp.Command):
    """
    Ask for a chunk; answered when there is one.  C{value} of the chunk is
    C{computeChunk(series, start, stop, digits)}.
    """

    arguments: list = []  # type: ignore[misc]
    response = [
        (b"lease", amp.Integer()),
        (b"job", amp.Integer()),
        (b"index", amp.Integer()),
        (b"series", amp.Unicode()),
        (b"start", amp.Integer()),
        (b"stop", amp.Integer()),
        (b"digits", amp.Integer()),
    ]
    errors = {NotLoggedIn: b"NOT_LOGGED_IN", TooManyLeases: b"TOO_MANY_LEASES"}


class Progress(amp.Command):
    """
    C{done} terms of a lease are computed: the lease is extended.
    C{wanted} is false when the chunk is no longer needed (done by
    another worker, job cancelled, lease expired): stop computing it.
    """

    arguments = [(b"lease", amp.Integer()), (b"done", amp.Integer())]
    response = [(b"wanted", amp.Boolean())]
    errors = {NotLoggedIn: b"NOT_LOGGED_IN"}


class Complete(amp.Command):
    """
    The value of chunk C{index} of C{job}, an integer in units of
    C{10**-digits}.  C{accepted} is false, with a C{reason}, for a
    duplicate or a chunk no longer wanted; a value out of range is refused
    with C{BAD_RESULT}.
    """

    arguments = [
        (b"lease", amp.Integer()),
        (b"job", amp.Integer()),
        (b"index", amp.Integer()),
        (b"value", amp.Integer()),
    ]
    response = [(b"accepted", amp.Boolean()), (b"reason", amp.Unicode())]
    errors = {NotLoggedIn: b"NOT_LOGGED_IN", BadResult: b"BAD_RESULT"}


class Refused(amp.Command):
    """
    Sent by the coordinator to a connection it does not admit, before it
    closes it.
    """

    arguments = [(b"reason", amp.Unicode())]
    requiresAnswer = False


class WorkerDoor(amp.AMP):
    """
    The coordinator's end of one worker connection.
    """

    _log = Logger()
    factory: "WorkerDoorFactory"

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self._asked = 0
        self._timeout: Any = None

    @staticmethod
    def busyReply(text: str) -> bytes:
        """
        The bytes a refused connection gets: a L{Refused} box.
        """
        return amp.AmpBox(_command=b"Refused", reason=text.encode("utf-8")).serialize()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._timeout = self.factory.reactor.callLater(LOGIN_TIMEOUT, self._loginTimedOut)

    def _loginTimedOut(self) -> None:
        self._timeout = None
        if self.name is None and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self.name is not None:
            self._log.info("worker {name} left", name=self.name)
        self.factory.scheduler.release(self)
        host = getattr(self, "_admittedAs", None)
        if host is not None:
            self.factory.admission.release(host)
        super().connectionLost(reason)

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred:
        """
        A command whose arguments do not parse (missing, not a number, not
        UTF-8) gets a C{BAD_ARGUMENTS} error that names them, and the
        connection stays open; AMP would call it unhandled and close.
        """
        command = _COMMANDS.get(box.get(amp.COMMAND, b""))
        if command is not None:
            try:
                command.parseArguments(amp.AmpBox(box), self)
            except Exception as e:
                names = ", ".join(name.decode() for name, _ in command.arguments)
                return fail(amp.RemoteAmpError(
                    b"BAD_ARGUMENTS",
                    f"{command.__name__} takes {names or 'no arguments'}: {type(e).__name__} {e}"[:500]))
        return super().dispatchCommand(box)

    def unhandledError(self, failure: Failure) -> None:
        # An unknown command sent without _ask (so nothing to answer):
        # logged, not a reason to drop the worker.
        if failure.check(amp.RemoteAmpError):
            self._log.info("ignored a box from {name}: {error}", name=self.name, error=failure.value)
            return
        super().unhandledError(failure)

    def _check(self) -> None:
        if self.name is None:
            raise NotLoggedIn("log in first: send Login with the NAME:TOKEN of your token file")

    @Login.responder
    def login(self, name: str, token: str) -> Deferred:
        address = hostOf(self.transport.getPeer()) if self.transport is not None else None

        def ok(avatar) -> dict:
            self.name = name
            self._log.info("worker {name} logged in from {address}", name=name, address=address)
            return {}

        def refused(failure) -> None:
            failure.trap(UnauthorizedLogin)
            raise LoginFailed("login incorrect: check the NAME:TOKEN in the worker's token file")

        d = maybeDeferred(self.factory.checker.requestAvatarId, PasswordFrom(name, token, address))
        return d.addCallbacks(ok, refused)

    @Lease.responder
    def lease(self) -> Deferred:
        self._check()
        if self._asked >= MAX_LEASES_PER_WORKER:
            raise TooManyLeases(f"at most {MAX_LEASES_PER_WORKER} leases held or asked for at once")
        self._asked += 1

        def granted(lease) -> dict:
            return {
                "lease": lease.id, "job": lease.job, "index": lease.index, "series": lease.series,
                "start": lease.start, "stop": lease.stop, "digits": lease.digits,
            }

        def done(result):
            self._asked -= 1
            return result

        def stopping(failure) -> None:
            failure.trap(CancelledError)
            raise amp.RemoteAmpError(b"SHUTTING_DOWN", "the coordinator is stopping; reconnect and ask again")

        return self.factory.scheduler.lease(self).addCallbacks(granted, stopping).addBoth(done)

    @Progress.responder
    def progress(self, lease: int, done: int) -> dict:
        self._check()
        return {"wanted": self.factory.scheduler.progress(lease, done)}

    @Complete.responder
    def complete(self, lease: int, job: int, index: int, value: int) -> Deferred:
        self._check()
        d = self.factory.scheduler.complete(lease, job, index, value, self)
        return d.addCallback(lambda r: {"accepted": r[0], "reason": r[1]})


_COMMANDS = {c.commandName: c for c in (Login, Lease, Progress, Complete)}


class WorkerDoorFactory(AdmittingFactory, ServerFactory):
    """
    The AMP listener for workers: admission caps, token checks through the
    shared accounts.
    """

    protocol = WorkerDoor  # type: ignore[assignment]

    def __init__(self, scheduler, checker: PasswordChecker, reactor=None, admission: Admission | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.scheduler = scheduler
        self.checker = checker
        self.admission = admission if admission is not None else Admission()
