"""
The grades server: the course's "grades database query" protocol
(docs/grades.md) on the shared command receiver.

The base level is the seed's dialogue, byte for byte (C{HELLO} -> C{READY},
C{NAME id} -> the name, C{GRADE course} -> the grade, C{END} -> C{BYE}).
C{HELLO GRADES/2} opens the extended level, where every reply starts with
its status (C{OK}, C{LIST n}, C{ERR}).  Each command is a C{do_VERB}
method; one that queries the database returns a L{Deferred}, and until it
fires no later line is read, so pipelined commands are answered in order.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from coursenet.accounts import PasswordFrom
from coursenet.admission import Admission, AdmittingFactory
from coursenet.logs import peerName
from coursenet.receiver import CommandReceiver
from coursenet.throttle import hostOf
from coursenet.transport import noDelay
from grades.interfaces import IGradesUser, IGradeStore
from grades.store import courseStatistics
from grades.wire import (
    EXTENDED_VERBS,
    MAX_IMPORT,
    MAX_LINE,
    VERSION,
    CSV_HEADER,
    Code,
    Command,
    GradesError,
    checkArgs,
    formatError,
    formatLine,
    formatList,
    parseCommand,
    parseCourse,
    parseCSV,
    parseGrade,
    parseId,
)

#: Lookups one connection may have under way at once (see _overlap).
MAX_OVERLAP = 32
#: What may come before HELLO.
_BEFORE_HELLO = {"HELLO", "HELP", "END", "NOOP", "IMPORT"}

HELP = [
    "HELLO                  the base level (the seed's dialogue): READY",
    f"HELLO {VERSION}         the extended level: every reply OK ..., LIST n or ERR",
    "STARTTLS               switch this connection to TLS",
    "USER name / PASS pw    log in (students see their record, instructors their courses)",
    "NAME id                the student's name; selects the student",
    "GRADE course           the selected student's grade",
    "END                    BYE, and the connection closes",
    "-- extended level --",
    "WHOAMI                 your account and role",
    "COURSES                the selected student's courses (an instructor's: those taught)",
    "GRADES                 every grade of the selected student",
    "AVG course / RANK course   a course's mean; the selected student's rank in it",
    "STATS course           (instructors) count, mean, median, histogram",
    "SET id course grade    (instructors) set a grade; +N / -N changes it",
    "IMPORT n               (instructors) n bytes of CSV id,name,course,grade follow",
    "EXPORT [course ...]    (instructors) CSV of your courses",
]


class _Guest:
    """
    Who a connection is before login in C{--public-demo} mode: read-only,
    everything visible.
    """

    account = "guest"
    studentId = None
    courses: frozenset[str] = frozenset()
    kind = "guest"


class GradesProtocol(CommandReceiver, TimeoutMixin):
    """
    One client connection.
    """

    maxLineLength = MAX_LINE
    #: The L{GradesFactory} (typed loosely: Protocol declares it optional).
    factory: Any
    _log = Logger()

    level: str | None = None
    user: Any = None
    current: str | None = None
    _pendingUser: str | None = None
    _failures = 0
    _inflight = 0
    _pendingNames = 0
    _tail: Deferred | None = None
    _block: bytearray | None = None
    _blockLeft = 0
    _blockRefusal: GradesError | None = None

    @staticmethod
    def busyReply(text: str) -> bytes:
        return formatError(Code.CLOSING, text)

    def callLater(self, period, func, *args):
        return self.factory.reactor.callLater(period, func, *args)

    def connectionMade(self) -> None:
        noDelay(self.transport)
        self.peer = self.transport.getPeer()
        if self.factory.publicDemo:
            self.user = _Guest()
        self.setTimeout(self.factory.idleTimeout or None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        self.send(formatError(Code.CLOSING, f"idle for {self.factory.idleTimeout:g} seconds; closing"))
        self.transport.loseConnection()

    # -- output ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def value(self, text: str) -> None:
        """
        A one-line answer: bare at the base level, C{OK text} at the
        extended one.
        """
        self.send(formatLine(text if self.level != "extended" else f"OK {text}"))

    def ok(self, text: str) -> None:
        self.send(formatLine(f"OK {text}"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.send(formatError(Code.TOO_LARGE, f"line too long: the limit is {MAX_LINE} bytes; line ignored"))

    # -- input ----------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> Deferred | None:
        self.resetTimeout()
        try:
            command = parseCommand(line)
        except GradesError as e:
            return self._inOrder(lambda: self.send(formatError(e.code, e.message)))
        if command.verb == "IMPORT":
            # Its block follows at once: read it whatever the answer.
            return self._inOrder(lambda: self._refusing(self._startBlock, command))
        if self._overlaps(command):
            self._overlap(command)
            return None
        return self._inOrder(lambda: maybeDeferred(self._dispatch, command).addErrback(self._failed))

    # -- overlapped lookups ----------------------------------------------------------------
    #
    # The shared receiver runs one command at a time.  A pipelined NAME or
    # GRADE need not wait for the lookups before it, though: their answers
    # do not depend on each other, only their effect (NAME selects) must
    # come in order.  So such lookups start at once, up to MAX_OVERLAP per
    # connection, and their answers are written, and their effects made,
    # in command order through one chain (_tail).  Any other command waits
    # for every lookup before it to be answered.

    def _overlaps(self, command: Command) -> bool:
        if self._inflight >= MAX_OVERLAP or self.level is None:
            return False
        if command.verb == "NAME":
            return True
        # GRADE is about the selected student: known unless a NAME is pending.
        return command.verb == "GRADE" and self._pendingNames == 0

    def _overlap(self, command: Command) -> None:
        self._inflight += 1
        naming = command.verb == "NAME"
        self._pendingNames += naming
        lookup = self._nameLookup if naming else self._gradeLookup
        started = maybeDeferred(lookup, command)

        def answer(result) -> None:
            self._inflight -= 1
            self._pendingNames -= naming
            if isinstance(result, Failure):
                self._failed(result)
            else:
                result()

        tail = self._tail if self._tail is not None else succeed(None)
        self._tail = tail.addCallback(lambda _: started).addBoth(answer)

    def _refusing(self, f, *args) -> None:
        try:
            f(*args)
        except GradesError as e:
            self.send(formatError(e.code, e.message))

    def _inOrder(self, handle) -> Deferred | None:
        """
        Run C{handle} once every overlapped lookup before it is answered
        (at once if none is pending); its result goes to the receiver,
        which reads nothing more until it fires.
        """
        if not self._inflight:
            return handle()
        gate: Deferred = Deferred()

        def through(result):
            gate.callback(None)
            return result

        assert self._tail is not None
        self._tail.addBoth(through)
        return gate.addCallback(lambda _: handle())

    def _failed(self, failure: Failure) -> None:
        if failure.check(GradesError):
            self.send(formatError(failure.value.code, failure.value.message))
            return
        if _unavailable(failure):
            self._log.error("database unavailable: {error}", error=failure.getErrorMessage())
            self.send(formatError(Code.UNAVAILABLE, "the database cannot be reached now; try again later"))
            return
        self._log.failure("command failed", failure)
        self.send(formatError(Code.INTERNAL, "internal server error; nothing was changed"))

    def _dispatch(self, command: Command):
        verb = command.verb
        if self.level is None and verb not in _BEFORE_HELLO:
            raise GradesError(Code.SEQUENCE, "say HELLO first")
        if verb in EXTENDED_VERBS and self.level != "extended":
            raise GradesError(Code.SEQUENCE, f"{verb} is an extended command: start with HELLO {VERSION}")
        return getattr(self, "do_" + verb)(command)

    # -- who may see what --------------------------------------------------------------

    def _loggedIn(self) -> Any:
        if self.user is None:
            raise GradesError(Code.NOT_LOGGED_IN, "log in first: USER name, then PASS password")
        return self.user

    def _student(self) -> str:
        """
        The selected student (NAME), whom the next query is about.
        """
        self._loggedIn()
        if self.current is None:
            raise GradesError(Code.SEQUENCE, "no student selected: NAME id first")
        return self.current

    def _mayReadCourse(self, user: Any, sid: str, course: str) -> None:
        """
        Refuse unless C{user} may see C{sid}'s grade in C{course}.
        """
        if isinstance(user, _Guest) or sid == user.studentId:
            return
        if course not in user.courses:
            raise GradesError(Code.FORBIDDEN, f"you do not teach {course}")

    def _instructorOf(self, course: str) -> Any:
        user = self._loggedIn()
        if course not in user.courses:
            if isinstance(user, _Guest):
                raise GradesError(Code.NOT_LOGGED_IN, "log in as an instructor first: USER name, then PASS password")
            raise GradesError(Code.FORBIDDEN, f"you do not teach {course}")
        return user

    def _visible(self, user: Any, sid: str, pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        if isinstance(user, _Guest) or sid == user.studentId:
            return pairs
        return [(c, g) for c, g in pairs if c in user.courses]

    # -- the base level --------------------------------------------------------------

    def do_HELLO(self, command: Command) -> None:
        (version,) = checkArgs(command, 0, 1, f"HELLO [{VERSION}]") or (None,)
        if self.level is not None:
            raise GradesError(Code.SEQUENCE, "HELLO was already said")
        if version is None:
            self.level = "base"
            self.send(b"READY\n")
            return
        if version.upper() != VERSION:
            raise GradesError(
                Code.VERSION, f"{version[:32]} is not spoken here: HELLO for the base level, or HELLO {VERSION}"
            )
        self.level = "extended"
        tls = "yes" if self.factory.tls is not None else "no"
        self.send(formatLine(
            f"READY {VERSION} max-line={MAX_LINE} max-import={self.factory.maxImport} starttls={tls}"
        ))

    def do_NAME(self, command: Command) -> Deferred:
        return self._nameLookup(command).addCallback(lambda apply: apply())

    def _nameLookup(self, command: Command) -> Deferred:
        """
        Check and look up NAME; fires with what answers it (a callable that
        selects the student and writes the name).
        """
        (arg,) = checkArgs(command, 1, 1, "NAME id")
        sid = parseId(arg)
        user = self._loggedIn()
        if not isinstance(user, _Guest) and sid != user.studentId and not user.courses:
            raise GradesError(Code.FORBIDDEN, "you may see only your own record")
        store = self.factory.store

        def named(name: str | None):
            own = isinstance(user, _Guest) or sid == user.studentId
            if name is None:
                # An instructor is told the same for an id that does not
                # exist as for one outside their courses.
                raise GradesError(Code.NOT_FOUND, f"no student {sid}" + ("" if own else " in your courses"))
            if own:
                return lambda: self._select(sid, name)
            return store.grades(sid).addCallback(taught, name)

        def taught(pairs: list[tuple[str, int]], name: str):
            if not self._visible(user, sid, pairs):
                raise GradesError(Code.NOT_FOUND, f"no student {sid} in your courses")
            return lambda: self._select(sid, name)

        return store.name(sid).addCallback(named)

    def _select(self, sid: str, name: str) -> None:
        self.current = sid
        self.value(name)

    def do_GRADE(self, command: Command) -> Deferred:
        return self._gradeLookup(command).addCallback(lambda apply: apply())

    def _gradeLookup(self, command: Command) -> Deferred:
        (arg,) = checkArgs(command, 1, 1, "GRADE course")
        course = parseCourse(arg)
        sid = self._student()
        self._mayReadCourse(self.user, sid, course)

        def graded(grade: int | None):
            if grade is None:
                raise GradesError(Code.NOT_FOUND, f"no grade in {course} for {sid}")
            return lambda: self.value(str(grade))

        return self.factory.store.grade(sid, course).addCallback(graded)

    def do_END(self, command: Command) -> None:
        self.send(b"BYE\n")
        self.transport.loseConnection()

    # -- every level -------------------------------------------------------------------

    def do_NOOP(self, command: Command) -> None:
        self.ok("nothing done")

    def do_HELP(self, command: Command) -> None:
        self.send(formatList(HELP))

    def do_STARTTLS(self, command: Command) -> None:
        checkArgs(command, 0, 0, "STARTTLS")
        if self.factory.tls is None:
            raise GradesError(Code.UNAVAILABLE, "TLS is not available on this server")
        if self._secure():
            raise GradesError(Code.SEQUENCE, "this connection already uses TLS")
        if self._pendingUser is not None or not isinstance(self.user, (_Guest, type(None))):
            raise GradesError(Code.SEQUENCE, "STARTTLS comes before USER")
        self.ok("begin TLS")
        # What the client sent after STARTTLS in the clear is not trusted
        # (it could be injected): dropped.
        self.clearLineBuffer()
        self.transport.startTLS(self.factory.tls)  # type: ignore[attr-defined]

    def _secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def do_USER(self, command: Command) -> None:
        (name,) = checkArgs(command, 1, 1, "USER name")
        if self.user is not None and not isinstance(self.user, _Guest):
            raise GradesError(Code.SEQUENCE, f"already logged in as {self.user.account}")
        if self.factory.tls is not None and not self._secure():
            raise GradesError(Code.TLS_REQUIRED, "log in over TLS: STARTTLS first")
        self._pendingUser = name
        self.ok(f"send PASS for {name[:64]}")

    def do_PASS(self, command: Command) -> Deferred:
        if self._pendingUser is None:
            raise GradesError(Code.SEQUENCE, "send USER first")
        name, self._pendingUser = self._pendingUser, None
        credentials = PasswordFrom(name, command.rest, hostOf(self.peer))

        def loggedIn(result) -> None:
            _, user, _ = result
            self.user = user
            self.current = user.studentId
            self._log.info("{peer} logged in ({kind})", peer=peerName(self.peer, user.account), kind=user.kind)
            what = {
                "student": f"student {user.studentId}",
                "instructor": "instructor of " + " ".join(sorted(user.courses)),
                "instructor+student": f"student {user.studentId}, instructor of " + " ".join(sorted(user.courses)),
            }.get(user.kind, "no grades here")
            self.ok(f"logged in as {user.account} ({what})")

        def refused(failure: Failure) -> None:
            failure.trap(UnauthorizedLogin)
            self._failures += 1
            if self._failures >= self.factory.maxLoginFailures:
                self.send(formatError(Code.CLOSING, "too many failed logins; closing"))
                self.transport.loseConnection()
                return
            raise GradesError(Code.LOGIN_FAILED, "login incorrect")

        return self.factory.portal.login(credentials, None, IGradesUser).addCallbacks(loggedIn, refused)

    # -- the extended level -------------------------------------------------------------

    def do_WHOAMI(self, command: Command) -> None:
        user = self.user
        if user is None:
            self.ok("nobody (not logged in)")
            return
        if isinstance(user, _Guest):
            self.ok("guest")
            return
        parts = [user.account, user.kind]
        if user.studentId:
            parts.append(user.studentId)
        if user.courses:
            parts.append(",".join(sorted(user.courses)))
        self.ok(" ".join(parts))

    def do_COURSES(self, command: Command) -> Deferred:
        checkArgs(command, 0, 0, "COURSES")
        user = self._loggedIn()
        store = self.factory.store
        if self.current is None:
            if isinstance(user, _Guest):
                return store.allCourses().addCallback(lambda courses: self.send(formatList(courses)))
            self.send(formatList(sorted(user.courses)))
            return maybeDeferred(lambda: None)
        sid = self.current
        return store.grades(sid).addCallback(
            lambda pairs: self.send(formatList([c for c, _ in self._visible(user, sid, pairs)]))
        )

    def do_GRADES(self, command: Command) -> Deferred:
        checkArgs(command, 0, 0, "GRADES")
        sid = self._student()
        user = self.user
        return self.factory.store.grades(sid).addCallback(
            lambda pairs: self.send(formatList([f"{c} {g}" for c, g in self._visible(user, sid, pairs)]))
        )

    def _courseGrades(self, course: str, needOwn: bool) -> Deferred:
        """
        The grades of a course the user may see aggregates of: a guest's,
        an instructor's own, or one the user is a student of.
        """
        user = self._loggedIn()
        store = self.factory.store
        if isinstance(user, _Guest) or course in user.courses:
            return store.courseGrades(course)
        if user.studentId is None:
            raise GradesError(Code.FORBIDDEN, f"you do not teach {course}")

        def mine(grade: int | None) -> Deferred:
            if grade is None:
                raise GradesError(Code.FORBIDDEN, f"you do not take {course}")
            return store.courseGrades(course)

        return store.grade(user.studentId, course).addCallback(mine)

    def do_AVG(self, command: Command) -> Deferred:
        (arg,) = checkArgs(command, 1, 1, "AVG course")
        course = parseCourse(arg)

        def average(grades: list[int]) -> None:
            if not grades:
                raise GradesError(Code.NOT_FOUND, f"no grades in {course}")
            self.ok(f"{sum(grades) / len(grades):.2f}")

        return self._courseGrades(course, False).addCallback(average)

    def do_RANK(self, command: Command) -> Deferred:
        (arg,) = checkArgs(command, 1, 1, "RANK course")
        course = parseCourse(arg)
        sid = self._student()
        self._mayReadCourse(self.user, sid, course)
        store = self.factory.store

        def ranked(grades: list[int], mine: int | None) -> None:
            if mine is None:
                raise GradesError(Code.NOT_FOUND, f"no grade in {course} for {sid}")
            self.ok(f"{1 + sum(g > mine for g in grades)} of {len(grades)}")

        return store.grade(sid, course).addCallback(
            lambda mine: store.courseGrades(course).addCallback(ranked, mine)
        )

    def do_STATS(self, command: Command) -> Deferred:
        (arg,) = checkArgs(command, 1, 1, "STATS course")
        course = parseCourse(arg)
        if not isinstance(self.user, _Guest):
            self._instructorOf(course)

        def stats(grades: list[int]) -> None:
            if not grades:
                raise GradesError(Code.NOT_FOUND, f"no grades in {course}")
            count, mean, median, histogram = courseStatistics(grades)
            bins = " ".join(
                f"{10 * i}-{10 * i + 9 if i < 9 else 100}:{n}" for i, n in enumerate(histogram)
            )
            self.send(formatList([f"count {count} mean {mean:.2f} median {median:g}", f"histogram {bins}"]))

        return self.factory.store.courseGrades(course).addCallback(stats)

    def do_SET(self, command: Command) -> Deferred:
        sid, courseArg, gradeArg = checkArgs(command, 3, 3, "SET id course grade")
        sid, course = parseId(sid), parseCourse(courseArg)
        value, change = parseGrade(gradeArg)
        user = self._instructorOf(course)

        def done(result: tuple[int | None, int]) -> None:
            old, new = result
            self._log.info("{user} set {sid} {course} {old} -> {new}", user=user.account, sid=sid,
                           course=course, old=old, new=new)
            self.ok(f"{sid} {course} {'-' if old is None else old} -> {new}")

        store = self.factory.store

        def inMyCourses(pairs: list[tuple[str, int]]) -> Deferred:
            # Students join a course through IMPORT (id and name together):
            # a SET of any id would let an instructor learn anyone's name.
            if not any(c in user.courses for c, _ in pairs):
                raise GradesError(Code.NOT_FOUND, f"no student {sid} in your courses")
            return store.setGrade(user.account, sid, course, value, change)

        return store.grades(sid).addCallback(inMyCourses).addCallback(done)

    def do_EXPORT(self, command: Command) -> Deferred:
        user = self._loggedIn()
        courses = [parseCourse(c) for c in command.args]
        store = self.factory.store
        if isinstance(user, _Guest):
            wanted: Deferred = store.allCourses() if not courses else maybeDeferred(lambda: courses)
        else:
            if not user.courses:
                raise GradesError(Code.FORBIDDEN, "EXPORT is for instructors")
            for course in courses:
                self._instructorOf(course)
            wanted = maybeDeferred(lambda: courses or sorted(user.courses))
        return wanted.addCallback(store.export).addCallback(
            lambda rows: self.send(formatList([CSV_HEADER] + [r.csv() for r in rows]))
        )

    # -- IMPORT: a length-prefixed block --------------------------------------------------

    def _startBlock(self, command: Command) -> None:
        if len(command.args) != 1 or not command.args[0].isdigit() or len(command.args[0]) > 12:
            raise GradesError(Code.SYNTAX, "usage: IMPORT n, then n bytes of CSV")
        size = int(command.args[0])
        try:
            if self.level is None:
                raise GradesError(Code.SEQUENCE, "say HELLO first")
            if self.level != "extended":
                raise GradesError(Code.SEQUENCE, f"IMPORT is an extended command: start with HELLO {VERSION}")
            user = self._loggedIn()
            if not user.courses:
                raise GradesError(Code.FORBIDDEN if not isinstance(user, _Guest) else Code.NOT_LOGGED_IN,
                                  "IMPORT is for instructors; log in as one")
            if size > self.factory.maxImport:
                raise GradesError(
                    Code.TOO_LARGE, f"{size} bytes is over the IMPORT limit of {self.factory.maxImport}; block skipped"
                )
            self._blockRefusal = None
            self._block = bytearray()
        except GradesError as e:
            # The block is read and thrown away, so that the next command
            # is found where the client put it.
            self._blockRefusal = e
            self._block = None
        self._blockLeft = size
        self.setRawMode()
        if size == 0:
            self._endBlock(b"")

    def rawDataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        take, rest = data[: self._blockLeft], data[self._blockLeft :]
        self._blockLeft -= len(take)
        if self._block is not None:
            self._block += take
        if self._blockLeft == 0:
            self._endBlock(rest)

    def _endBlock(self, rest: bytes) -> None:
        block, self._block = self._block, None
        refusal, self._blockRefusal = self._blockRefusal, None
        # No later command runs until the import is answered.
        self.pauseReading("import")
        self.setLineMode(rest)
        if refusal is not None or block is None:
            self.send(formatError(refusal.code if refusal else Code.INTERNAL, refusal.message if refusal else "no block"))
            self.resumeReading("import")
            return
        d = maybeDeferred(self._import, bytes(block)).addErrback(self._failed)
        d.addBoth(lambda _: self.resumeReading("import"))

    def _import(self, data: bytes) -> Deferred:
        rows = parseCSV(data)
        user = self.user

        def done(changed: int) -> None:
            self._log.info("{user} imported {n} rows, {changed} grades changed", user=user.account, n=len(rows),
                           changed=changed)
            self.ok(f"imported {len(rows)} rows, {changed} grades changed")

        return self.factory.store.importRows(user.account, rows, user.courses).addCallback(done)


def _unavailable(failure: Failure) -> bool:
    """
    Whether a query failed because the database is out of reach (not a
    bug here).
    """
    import sqlite3

    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return failure.check(sqlite3.OperationalError) is not None
    return failure.check(sqlite3.OperationalError, psycopg.OperationalError) is not None


class GradesFactory(AdmittingFactory, Factory):
    """
    Grades connections to one store.
    """

    protocol = GradesProtocol
    maxLoginFailures = 3

    def __init__(
        self,
        store: IGradeStore,
        portal: Portal,
        reactor=None,
        publicDemo: bool = False,
        tls: Any = None,
        idleTimeout: float = 300.0,
        maxImport: int = MAX_IMPORT,
        maxConnections: int | None = None,
        maxPerAddress: int | None = None,
    ) -> None:
        """
        @param publicDemo: whoever is not logged in may read everything
            (the seed's dialogue for anyone); nobody may write without an
            instructor's login.
        @param tls: server TLS options for STARTTLS; when given, USER is
            refused on a connection that is not TLS.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store
        self.portal = portal
        self.publicDemo = publicDemo
        self.tls = tls
        self.idleTimeout = idleTimeout
        self.maxImport = maxImport
        self.admission = Admission(maxConnections, maxPerAddress)

    def startFactory(self) -> None:
        self.store.start()

