"""
Helpers for the poker tests: stacked decks, an in-memory server on a
C{task.Clock}, and connections to it over C{StringTransport}.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from poker.lobby import PokerServer
from poker.protocol import PokerFactory
from poker.shuffle import CARDS, Shuffle
from poker.store import Bank
from poker.table import TableConfig


def stackedDeck(holes: Sequence[str], board: str = "") -> tuple[str, ...]:
    """
    A deck order that deals C{holes} (each player's two cards written
    together, by pokerkit index: small blind first, button last) and the
    C{board} (up to five cards written together), the rest in a fixed order.
    """
    players = len(holes)
    pairs = [(h[:2], h[2:4]) for h in holes]
    boardCards = [board[i : i + 2] for i in range(0, len(board), 2)]
    chosen = {c for pair in pairs for c in pair} | set(boardCards)
    rest = [c for c in CARDS if c not in chosen]
    deck: list[str] = [pairs[p][0] for p in range(players)] + [pairs[p][1] for p in range(players)]
    # burn, flop x3, burn, turn, burn, river
    layout = ["burn", 0, 1, 2, "burn", 3, "burn", 4]
    for slot in layout:
        if slot != "burn" and isinstance(slot, int) and slot < len(boardCards):
            deck.append(boardCards[slot])
        else:
            deck.append(rest.pop())
    deck.extend(rest)
    assert sorted(deck) == sorted(CARDS)
    return tuple(deck)


def fixedShuffler(*decks: tuple[str, ...]) -> Any:
    """
    A shuffler that deals C{decks} in turn, then random ones.
    """
    queue = list(decks)

    def shuffler() -> Shuffle:
        if queue:
            return Shuffle(queue.pop(0), "00" * 32)
        return Shuffle.new()

    return shuffler


def syncRun(f: Any, *args: Any) -> Any:
    return succeed(f(*args))


def memoryServer(
    tables: Sequence[TableConfig] = (TableConfig("t1", seats=6, handPause=1.0),),
    path: str = ":memory:",
    **kwargs: Any,
) -> tuple[PokerServer, task.Clock]:
    """
    A guests server on a C{task.Clock}, its bank written at once.
    """
    clock = task.Clock()
    bank = Bank(path, clock, run=syncRun, batch=False)
    kwargs.setdefault("guests", True)
    return PokerServer(list(tables), bank, clock, **kwargs), clock


class Conn:
    """
    One connection to an in-memory server: send lines, read what came.
    """

    _port = 40000

    def __init__(self, server: PokerServer, clock: task.Clock) -> None:
        Conn._port += 1
        address = IPv4Address("TCP", "127.0.0.1", Conn._port)
        factory = PokerFactory(server, clock)
        self.protocol = factory.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        self.seen: list[str] = []

    def send(self, line: str) -> list[str]:
        """
        Send C{line}; return the lines that came since the last read.
        """
        self.protocol.dataReceived(line.encode("ascii") + b"\r\n")
        return self.read()

    def read(self) -> list[str]:
        data = self.transport.value().decode("ascii")
        self.transport.clear()
        lines = data.split("\r\n")[:-1]
        self.seen.extend(lines)
        return lines

    def drop(self) -> None:
        self.protocol.connectionLost(None)

    def last(self, kind: str) -> str | None:
        """
        The last line seen starting with C{kind}, reading what came first.
        """
        self.read()
        for line in reversed(self.seen):
            if line.startswith(kind + " "):
                return line
        return None


def turnOf(line: str) -> dict[str, Any]:
    """
    A TURN line's seat and numbers.
    """
    words = line.split()
    values = dict(w.split("=") for w in words[3:])
    return {"seat": int(words[2]), **{k: int(v) for k, v in values.items()}}
