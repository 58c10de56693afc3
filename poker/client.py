"""
An async client of the poker protocol (docs/poker.md).

    client = await PokerClient.connect(reactor, "127.0.0.1", 7777)
    client.onEvent = lambda event: print(event.kind, event.words)
    await client.login("alice")
    await client.sit("demo1", 1, 100)
    await client.act("CALL")

Commands are answered in order (the server reads the next only after it
has answered the last); a reply of class 4 or 5 raises L{PokerError}.
Events arrive between replies and go to C{onEvent}.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from coursenet.tls import clientEndpoint
from poker.wire import PokerError


@dataclass(frozen=True)
class Reply:
    """
    A final reply with the lines before it (C{NNN-text}), texts only.
    """

    code: int
    text: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    """
    An event line: C{kind} (C{TURN}, C{DEAL}, ...) and the words after it;
    C{table} is the first of them for the events that name a table.
    """

    kind: str
    words: tuple[str, ...]

    @property
    def table(self) -> str:
        return self.words[0] if self.words else ""

    def value(self, key: str, default: str | None = None) -> str | None:
        """
        The value of a C{key=value} word.
        """
        prefix = key + "="
        for word in self.words:
            if word.startswith(prefix):
                return word[len(prefix) :]
        return default

    def number(self, key: str) -> int:
        value = self.value(key)
        return int(value) if value is not None else 0


def parseEvent(text: str) -> Event:
    words = text.split()
    return Event(words[0], tuple(words[1:])) if words else Event("", ())


class PokerClientProtocol(LineOnlyReceiver):
    """
    The client's end of one connection.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16

    def __init__(self) -> None:
        self.onEvent: Callable[[Event], Any] = lambda event: None
        self.greeting: Deferred[Reply] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._waiting: deque[Deferred[Reply]] = deque([self.greeting])
        self._lines: list[str] = []

    def connectionMade(self) -> None:
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("ascii", "replace")
        if text[:3].isdigit() and len(text) >= 4 and text[3] in " -":
            if text[3] == "-":
                self._lines.append(text[4:])
                return
            reply = Reply(int(text[:3]), text[4:], tuple(self._lines))
            self._lines = []
            if self._waiting:
                d = self._waiting.popleft()
                if reply.code >= 400:
                    d.errback(PokerError(reply.code, reply.text))
                else:
                    d.callback(reply)
            return
        self.onEvent(parseEvent(text))

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def command(self, line: str) -> Deferred[Reply]:
        d: Deferred[Reply] = Deferred()
        self._waiting.append(d)
        self.sendLine(line.encode("ascii") + b"\r")
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(ConnectionError("connection closed"))
        self.closed.callback(None)


class PokerClient:
    """
    One player's (or spectator's) connection, with a method per command.
    """

    def __init__(self, protocol: PokerClientProtocol) -> None:
        self.protocol = protocol
        self.name: str | None = None
        self.token: str | None = None

    @classmethod
    async def connect(
        cls, reactor: Any, host: str, port: int, tls: bool = False, cafile: str | None = None
    ) -> "PokerClient":
        endpoint = clientEndpoint(reactor, host, port, tls=tls, cafile=cafile)
        protocol: Any = await endpoint.connect(Factory.forProtocol(PokerClientProtocol))
        await protocol.greeting
        return cls(protocol)

    @property
    def onEvent(self) -> Callable[[Event], Any]:
        return self.protocol.onEvent

    @onEvent.setter
    def onEvent(self, f: Callable[[Event], Any]) -> None:
        self.protocol.onEvent = f

    def command(self, line: str) -> Deferred[Reply]:
        return self.protocol.command(line)

    async def login(self, name: str, password: str | None = None) -> Reply:
        """
        Log in; a guest's token (to log in again as the same guest after a
        disconnection) is kept in C{self.token}.
        """
        reply = await self.command(f"LOGIN {name} {password}" if password else f"LOGIN {name}")
        self.name = name
        for word in reply.text.split():
            if word.startswith("token="):
                self.token = word[len("token=") :]
        return reply

    async def tables(self) -> list[str]:
        return list((await self.command("TABLES")).lines)

    async def open(self, table: str, seats: int = 6) -> Reply:
        return await self.command(f"OPEN {table} {seats}")

    async def sit(self, table: str, seat: int, buyIn: int) -> Reply:
        return await self.command(f"SIT {table} {seat} {buyIn}")

    async def leave(self) -> Reply:
        return await self.command("LEAVE")

    async def watch(self, table: str) -> Reply:
        return await self.command(f"WATCH {table}")

    async def unwatch(self, table: str) -> Reply:
        return await self.command(f"UNWATCH {table}")

    def act(self, verb: str, amount: int | None = None) -> Deferred[Reply]:
        return self.command(f"ACT {verb}" if amount is None else f"ACT {verb} {amount}")

    async def balance(self) -> int:
        reply = await self.command("BALANCE")
        return int(reply.text.split()[0].split("=")[1].rstrip(";"))

    async def history(self, table: str, hand: int) -> str:
        """
        A finished hand in PHH, as text.
        """
        reply = await self.command(f"HISTORY {table} {hand}")
        return "\n".join(reply.lines) + "\n"

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        except ConnectionError:
            pass
        await self.protocol.closed

    def disconnect(self) -> Deferred[None]:
        assert self.protocol.transport is not None
        self.protocol.transport.loseConnection()
        return self.protocol.closed
