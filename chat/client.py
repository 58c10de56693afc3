"""
A course chat client for scripts: every command returns a L{Deferred},
which an C{async def} can C{await}; events arrive as callbacks.

    from twisted.internet.defer import Deferred
    from twisted.internet.task import react
    from chat.client import connect

    async def main(reactor):
        client = await connect(reactor, "localhost", 6665)
        await client.nick("ada")
        client.addListener(lambda event: print(event.kind, event.nick, event.text))
        await client.join("lab")
        await client.say("lab", "hello, lab")
        reply = await client.nextEvent("MESSAGE")
        await client.quit()

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""

from __future__ import annotations

import builtins
import collections
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from chat.wire import MAX_LINE, ChatError, Reply, ServerEvent, parseServerLine
from coursenet.errors import ReplyError
from coursenet.tls import clientEndpoint

DEFAULT_PORT = 6665
DEFAULT_TLS_PORT = 6666

Listener = Callable[[ServerEvent], None]


class ChatReplyError(ReplyError):
    """
    The server refused a command: C{code} and C{message} are its reply.
    """


class _Pending:
    def __init__(self) -> None:
        self.deferred: Deferred = Deferred()
        self.history: list[ServerEvent] = []


class ChatClient(LineReceiver):
    """
    One connection to a chat server.  Commands may be issued without
    waiting: the server answers them in order.  The server's PING is
    answered by the client itself.

    @ivar history: for each room joined, the C{HISTORY} events replayed.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 4 * MAX_LINE
    # connect() makes TCP connections, with TLS over them or not (INegotiated).
    transport: ITCPTransport | None

    def __init__(self) -> None:
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._lines: list[str] = []
        self._listeners: list[Listener] = []
        self._nextEvents: list[tuple[Callable[[ServerEvent], bool], Deferred]] = []
        self.greeting = _Pending()
        self._waiting.append(self.greeting)
        self.closed: Deferred[None] = Deferred()
        self.closing: Reply | None = None
        self.history: dict[str, list[ServerEvent]] = {}
        self.nickname: str | None = None

    # -- wire -------------------------------------------------------------------

    def connectionLost(self, reason: Failure | None = None) -> None:
        why = self.closing.text if self.closing else "connection to the chat server lost"
        while self._waiting:
            self._waiting.popleft().deferred.errback(Failure(ConnectionError(why)))
        for _, d in self._nextEvents:
            d.errback(Failure(ConnectionError(why)))
        self._nextEvents = []
        self.closed.callback(None)

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.abortConnection()

    def lineReceived(self, line: bytes) -> None:
        try:
            parsed = parseServerLine(line)
        except ChatError:
            assert self.transport is not None
            self.transport.abortConnection()
            return
        if isinstance(parsed, ServerEvent):
            self._event(parsed)
            return
        code, final, text = parsed
        if not final:
            self._lines.append(text)
            return
        reply = Reply(code, text, tuple(self._lines))
        self._lines = []
        if code == 421:
            # Unsolicited: the server is closing the connection.
            self.closing = reply
            return
        if not self._waiting:
            return
        pending = self._waiting.popleft()
        if code >= 400:
            pending.deferred.errback(Failure(ChatReplyError(code, text)))
        else:
            pending.deferred.callback((reply, pending.history))

    def _event(self, event: ServerEvent) -> None:
        if event.kind == "PING":
            self.sendLine(f"PONG {event.text}".encode("utf-8"))
            return
        if event.kind == "HISTORY" and self._waiting:
            self._waiting[0].history.append(event)
        for listener in list(self._listeners):
            listener(event)
        matched = [(p, d) for p, d in self._nextEvents if p(event)]
        for item in matched:
            self._nextEvents.remove(item)
            item[1].callback(event)

    def command(self, line: str) -> Deferred[tuple[Reply, list[ServerEvent]]]:
        """
        Send one command line; fire with C{(reply, history events)} or fail
        with L{ChatReplyError}.
        """
        pending = _Pending()
        self._waiting.append(pending)
        self.sendLine(line.encode("utf-8"))
        return pending.deferred

    def _reply(self, line: str) -> Deferred[Reply]:
        return self.command(line).addCallback(lambda result: result[0])

    # -- events ------------------------------------------------------------------

    def addListener(self, listener: Listener) -> None:
        """
        Call C{listener} with every L{ServerEvent} (MESSAGE, PRIVATE, JOIN,
        PART, QUIT, NICK, TOPIC, HISTORY).
        """
        self._listeners.append(listener)

    def removeListener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def nextEvent(self, kind: str | None = None, **fields: str) -> Deferred[ServerEvent]:
        """
        Fire with the next event of C{kind} whose fields equal C{fields}
        (e.g. C{nextEvent("MESSAGE", room="lab")}).
        """

        def wanted(event: ServerEvent) -> bool:
            return (kind is None or event.kind == kind) and all(
                getattr(event, k) == v for k, v in fields.items()
            )

        d: Deferred[ServerEvent] = Deferred()
        self._nextEvents.append((wanted, d))
        return d

    # -- commands ---------------------------------------------------------------

    def nick(self, name: str, password: str | None = None) -> Deferred[Reply]:
        """
        Choose or change the nickname; a registered one needs its password.
        """
        line = f"NICK {name} {password}" if password else f"NICK {name}"

        def done(reply: Reply) -> Reply:
            self.nickname = reply.text.split(" ", 1)[0]
            return reply

        return self._reply(line).addCallback(done)

    def join(self, room: str) -> Deferred[list[ServerEvent]]:
        """
        Enter C{room}; fire with the history the server replayed.
        """

        def joined(result) -> list[ServerEvent]:
            reply, history = result
            self.history[reply.text.split(" ", 1)[0]] = history
            return history

        return self.command(f"JOIN {room}").addCallback(joined)

    def part(self, room: str, reason: str = "") -> Deferred[Reply]:
        return self._reply(f"PART {room} {reason}".rstrip())

    def say(self, room: str, text: str) -> Deferred[Reply]:
        return self._reply(f"SAY {room} {text}")

    def msg(self, nick: str, text: str) -> Deferred[Reply]:
        return self._reply(f"MSG {nick} {text}")

    def list(self) -> Deferred[list[tuple[str, int, str]]]:
        """
        Fire with C{(room, members, topic)} for each room.
        """

        def rooms(reply: Reply):
            out = []
            for line in reply.lines:
                name, count, topic = (line.split(" ", 2) + [""])[:3]
                out.append((name, int(count), topic))
            return out

        return self._reply("LIST").addCallback(rooms)

    # builtins.list: in the class body, list is the method above.
    def who(self, room: str) -> Deferred[builtins.list[str]]:
        """
        Fire with the nicknames in C{room}, in the order they joined,
        without the C{@} (operator) and C{+} (voice) the server puts first.
        """
        return self._reply(f"WHO {room}").addCallback(lambda reply: [line.lstrip("@+") for line in reply.lines])

    def topic(self, room: str, text: str | None = None) -> Deferred[str]:
        """
        Set C{room}'s topic to C{text}, or fire with it when C{text} is None.
        """
        if text:
            return self._reply(f"TOPIC {room} {text}").addCallback(lambda _: text)
        return self._reply(f"TOPIC {room}").addCallback(
            lambda reply: (reply.text.split(" ", 1) + [""])[1]
        )

    def ping(self, token: str = "-") -> Deferred[Reply]:
        return self._reply(f"PING {token}")

    def quit(self, reason: str = "") -> Deferred[None]:
        """
        Say goodbye; fire once the connection is closed.
        """
        self._reply(f"QUIT {reason}".rstrip()).addErrback(lambda _: None)
        return self.closed


class _ClientFactory(Factory):
    protocol = ChatClient


async def _connect(reactor, host, port, tls, cafile, timeout) -> ChatClient:
    endpoint = clientEndpoint(reactor, host, port, tls, cafile, timeout)
    client = await endpoint.connect(_ClientFactory())
    # The factory's protocol; wrapClientTLS hands back the wrapped one too.
    assert isinstance(client, ChatClient)
    await client.greeting.deferred
    return client


def connect(
    reactor,
    host: str,
    port: int | None = None,
    tls: bool = False,
    cafile: str | None = None,
    timeout: float = 30,
) -> Deferred[ChatClient]:
    """
    Connect to a chat server and wait for its greeting.

    @param tls: use TLS and verify that the server's certificate is valid
        for C{host}.
    @param cafile: PEM certificates to trust instead of the system's.
    """
    if port is None:
        port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    return Deferred.fromCoroutine(_connect(reactor, host, port, tls, cafile, timeout))
