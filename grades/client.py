"""
An asynchronous client of the grades service (docs/grades.md).

Each method sends its command at once and returns a L{Deferred} of the
answer; call several without waiting and they are pipelined, the answers
matched to them in order::

    client = await connect(reactor, "127.0.0.1", 7070)
    name, math = await gatherResults([client.name("051883261"), client.grade("MATH")])

A refusal fails the Deferred with L{grades.wire.GradesError} (its C{code}
and C{message}), and the connection goes on.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from coursenet.tls import clientEndpoint, clientTLSOptions
from coursenet.transport import noDelay
from grades.wire import VERSION, Code, GradesError, parseError

#: The longest reply line a client takes (an EXPORT line is far shorter).
MAX_REPLY_LINE = 64 * 1024
#: Bytes of an IMPORT block written at a time.
_CHUNK = 64 * 1024


@implementer(IPushProducer)
class _Pacer:
    """
    Registered while an IMPORT block is written: says when the transport
    wants no more for now.
    """

    def __init__(self) -> None:
        self.paused = False
        self._waiting: Deferred[None] | None = None

    def wait(self) -> Deferred[None]:
        if not self.paused:
            return succeed(None)
        self._waiting = Deferred()
        return self._waiting

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()


class GradesClient(LineOnlyReceiver):
    """
    One connection to a grades server.

    @ivar level: C{None} before HELLO, then C{base} or C{extended}.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE
    level: str | None = None
    # Set by makeConnection before anything here runs: TCP, or TLS over it.
    transport: Any

    def __init__(self) -> None:
        self._waiting: deque[Deferred] = deque()
        self._list: list[str] | None = None
        self._listLeft = 0
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        noDelay(self.transport)

    def connectionLost(self, reason=None) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(GradesError(Code.CLOSING, "connection closed"))
        if not self.closed.called:
            self.closed.callback(None)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self._list is not None:
            self._list.append(text)
            self._listLeft -= 1
            if self._listLeft == 0:
                self._fire(self._list)
            return
        if text.startswith("LIST ") and text[5:].isdigit():
            self._list, self._listLeft = [], int(text[5:])
            if self._listLeft == 0:
                self._fire(self._list)
            return
        error = parseError(text)
        if error is not None:
            self._fire(error, failed=True)
        else:
            self._fire(text)

    def _fire(self, result, failed: bool = False) -> None:
        self._list = None
        if not self._waiting:
            return  # e.g. the idle timeout's ERR 421
        d = self._waiting.popleft()
        if failed:
            d.errback(result)
        else:
            d.callback(result)

    def command(self, line: str) -> Deferred:
        """
        Send one command line; the Deferred fires with its reply: a line
        (C{str}, its C{OK } taken off) or, for C{LIST n}, the n lines.
        """
        d: Deferred = Deferred()
        self._waiting.append(d)
        self.sendLine(line.encode("utf-8"))
        return d.addCallback(_value)

    # -- the base level ---------------------------------------------------------

    def hello(self, extended: bool = True) -> Deferred:
        """
        C{HELLO GRADES/2} (or plain C{HELLO}); fires with the READY line.
        """
        self.level = "extended" if extended else "base"
        return self.command(f"HELLO {VERSION}" if extended else "HELLO")

    def name(self, studentId: str) -> Deferred:
        """
        The student's name; selects the student for what follows.
        """
        return self.command(f"NAME {studentId}")

    def grade(self, course: str) -> Deferred:
        return self.command(f"GRADE {course}").addCallback(int)

    def end(self) -> Deferred:
        """
        C{END}: fires with C{BYE} once the server has closed.
        """
        return self.command("END").addCallback(lambda bye: self.closed.addCallback(lambda _: bye))

    # -- every level --------------------------------------------------------------

    def login(self, user: str, password: str) -> Deferred:
        d = self.command(f"USER {user}")
        return d.addCallback(lambda _: self.command(f"PASS {password}"))

    def startTLS(self, hostname: str, cafile: str | None = None) -> Deferred:
        """
        C{STARTTLS}, then TLS verifying the server's certificate for
        C{hostname}.
        """
        options = clientTLSOptions(hostname, cafile)

        def begin(reply):
            self.transport.startTLS(options)
            return reply

        return self.command("STARTTLS").addCallback(begin)

    # -- the extended level ----------------------------------------------------------

    def whoami(self) -> Deferred:
        return self.command("WHOAMI")

    def courses(self) -> Deferred:
        return self.command("COURSES")

    def grades(self) -> Deferred:
        """
        The selected student's grades, C{{course: grade}}.
        """
        return self.command("GRADES").addCallback(
            lambda lines: {c: int(g) for c, g in (line.split(" ", 1) for line in lines)}
        )

    def average(self, course: str) -> Deferred:
        return self.command(f"AVG {course}").addCallback(float)

    def rank(self, course: str) -> Deferred:
        """
        The selected student's rank in the course: C{(rank, of)}.
        """
        return self.command(f"RANK {course}").addCallback(lambda text: tuple(int(n) for n in text.split(" of ")))

    def stats(self, course: str) -> Deferred:
        return self.command(f"STATS {course}")

    def set(self, studentId: str, course: str, grade: int | str) -> Deferred:
        """
        Set a grade; C{"+5"} or C{"-3"} changes it.  Fires with
        C{"ID COURSE OLD -> NEW"}.
        """
        return self.command(f"SET {studentId} {course} {grade}")

    def export(self, *courses: str) -> Deferred:
        """
        The CSV of the courses (all of one's own by default), header first.
        """
        return self.command(" ".join(("EXPORT",) + courses)).addCallback(lambda lines: "\n".join(lines) + "\n")

    def importCSV(self, data: bytes, progress: Callable[[int], None] = lambda n: None) -> Deferred:
        """
        C{IMPORT}: send C{data} as a length-prefixed block, at the pace
        the connection takes it, calling C{progress(bytes)} as it goes.
        """
        d: Deferred = Deferred()
        self._waiting.append(d)
        self.sendLine(f"IMPORT {len(data)}".encode())
        pacer = _Pacer()
        self.transport.registerProducer(pacer, True)

        async def write() -> None:
            try:
                for start in range(0, len(data), _CHUNK):
                    await pacer.wait()
                    chunk = data[start : start + _CHUNK]
                    self.transport.write(chunk)
                    progress(len(chunk))
            finally:
                self.transport.unregisterProducer()

        Deferred.fromCoroutine(write())
        return d.addCallback(_value)


def _value(reply):
    if isinstance(reply, str) and reply.startswith("OK "):
        return reply[3:]
    return reply


async def connect(
    reactor,
    host: str,
    port: int,
    extended: bool = True,
    tls: bool = False,
    starttls: bool = False,
    cafile: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> GradesClient:
    """
    Connect, say HELLO, and log in if C{user} is given.

    @param tls: connect with TLS from the start (the server's TLS port).
    @param starttls: upgrade with STARTTLS before logging in.
    """
    endpoint = clientEndpoint(reactor, host, port, tls=tls, cafile=cafile)
    client = cast(GradesClient, await endpoint.connect(Factory.forProtocol(GradesClient)))
    try:
        await client.hello(extended)
        if starttls:
            await client.startTLS(host, cafile)
        if user is not None:
            await client.login(user, password or "")
    except BaseException:
        client.transport.loseConnection()
        raise
    return client
