"""
C{poker-bot HOST:PORT --bots N --tables T --hands H --strategy S}: many bots
in one process, playing until H hands are over at their tables.

Each table also gets a spectator, which checks every hand: the revealed
deck and secret hash to the commitment published at the hand's start, the
board dealt and the hands shown down are the ones that deck order deals,
and the chips at the table
after the hand add up to those before it.  Each bot checks that its own
hole cards are the ones the revealed deck gave it.  A spectator that ever
sees a hole card it was not shown down is a failure too.  The run prints
hands per second and a summary, and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from poker.client import Event, PokerClient
from poker.engine import dealOrder
from poker.shuffle import splitDeck, verify
from poker.wire import PokerError

STRATEGIES = ("random", "call", "tight")
RANK = {r: i for i, r in enumerate("23456789TJQKA", 2)}


@dataclass
class Stats:
    """
    What a run saw: hands over, checks passed, failures, latencies.
    """

    target: int
    hands: int = 0
    verified: int = 0
    conserved: int = 0
    holesChecked: int = 0
    actions: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    #: Seconds from a bot's action to the next turn (or the hand's end).
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    done: Deferred = field(default_factory=Deferred)

    def fail(self, why: str) -> None:
        if len(self.failures) < 100:
            self.failures.append(why)

    def handOver(self) -> None:
        self.hands += 1
        if self.hands >= self.target and not self.done.called:
            self.finished = time.monotonic()
            self.done.callback(None)

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.finished or time.monotonic()) - self.started)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> str:
        status = "OK" if not self.failures else f"FAILED ({len(self.failures)} failures)"
        return (
            f"{status}: hands={self.hands} in {self.seconds:.1f}s ({self.hands / self.seconds:.1f} hands/s);"
            f" commitments verified={self.verified}; chips conserved in {self.conserved} hands;"
            f" hole cards checked={self.holesChecked}; actions={self.actions} refused={self.refused};"
            f" p50={self.percentile(50) * 1000:.1f}ms p99={self.percentile(99) * 1000:.1f}ms action-to-turn"
        )


class Spectator:
    """
    Watches one table and checks each hand as it ends.
    """

    def __init__(self, client: PokerClient, table: str, stats: Stats) -> None:
        self.client = client
        self.table = table
        self.stats = stats
        self.commit: str | None = None
        self.order: list[tuple[int, int]] = []
        self.board: list[str] = []
        self.shown: dict[int, list[str]] = {}
        self.expectSeats = False
        client.onEvent = self.event

    def event(self, event: Event) -> None:
        if event.table != self.table:
            return
        kind, words = event.kind, event.words
        if kind == "HAND":
            self.commit = event.value("commit")
            self.expectSeats = True
            self.order = []
            self.board = []
            self.shown = {}
        elif kind == "SEATS" and self.expectSeats:
            self.expectSeats = False
            self.order = [(int(w.split(":")[0]), int(w.split(":")[2])) for w in words[1:]]
        elif kind == "DEAL":
            self.stats.fail(f"{self.table}: a spectator was sent hole cards: {' '.join(words)}")
        elif kind == "BOARD":
            self.board = list(words[1:])
        elif kind == "SHOW":
            self.shown[int(words[1])] = list(words[2:])
        elif kind == "STACKS" and self.order:
            after = {int(w.split(":")[0]): int(w.split(":")[1]) for w in words[1:]}
            before = sum(stack for _, stack in self.order)
            got = sum(after.get(seat, 0) for seat, _ in self.order)
            if got != before:
                self.stats.fail(f"{self.table}: chips not conserved: {before} before the hand, {got} after")
            else:
                self.stats.conserved += 1
        elif kind == "REVEAL":
            self.checkReveal(event)
        elif kind == "END":
            self.stats.handOver()

    def checkReveal(self, event: Event) -> None:
        deck, secret = event.value("deck") or "", event.value("secret") or ""
        if self.commit is None:
            return  # joined mid-hand
        why = verify(self.commit, deck, secret)
        if why is None:
            holes, board = dealOrder(len(self.order), splitDeck(deck))
            if self.board != board[: len(self.board)]:
                why = f"the board {self.board} is not the one the revealed deck deals"
            seats = [seat for seat, _ in self.order]
            for seat, cards in self.shown.items():
                if seat not in seats or list(holes[seats.index(seat)]) != cards:
                    why = f"seat {seat} showed {cards}, not what the revealed deck dealt it"
        if why is not None:
            self.stats.fail(f"{self.table}: hand {event.words[1]}: {why}")
        else:
            self.stats.verified += 1
        self.commit = None


class Bot:
    """
    One seated player.
    """

    def __init__(
        self, client: PokerClient, name: str, table: str, seat: int, buyIn: int, strategy: str,
        stats: Stats, reactor: Any, think: float = 0.0, seed: int | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.table = table
        self.seat = seat
        self.buyIn = buyIn
        self.strategy = strategy
        self.stats = stats
        self.reactor = reactor
        self.think = think
        self.rng = random.Random(seed)
        self.holes: list[str] = []
        self.index: int | None = None
        self.players = 0
        self.board: list[str] = []
        self.sentAt: float | None = None
        self.expectSeats = False
        self.running = True
        client.onEvent = self.event

    def event(self, event: Event) -> None:
        kind = event.kind
        if event.table != self.table:
            return
        if kind in ("TURN", "END") and self.sentAt is not None:
            if len(self.stats.latencies) < 1_000_000:
                self.stats.latencies.append(time.monotonic() - self.sentAt)
            self.sentAt = None
        if kind == "TURN":
            if int(event.words[1]) == self.seat and self.running:
                if self.think:
                    self.reactor.callLater(self.rng.uniform(0, 2 * self.think), self.decide, event)
                else:
                    self.decide(event)
        elif kind == "HAND":
            self.holes, self.board, self.index, self.players = [], [], None, 0
            self.expectSeats = True
        elif kind == "SEATS" and self.expectSeats:
            # The players dealt in, in dealing order.
            self.expectSeats = False
            seats = [int(w.split(":")[0]) for w in event.words[1:]]
            self.players = len(seats)
            self.index = seats.index(self.seat) if self.seat in seats else None
        elif kind == "DEAL":
            self.holes = list(event.words[1:])
        elif kind == "BOARD":
            self.board = list(event.words[1:])
        elif kind == "REVEAL":
            self.checkHoles(event)
            self.index = None
        elif kind == "LEFT" and event.words[2] == self.name and self.running:
            self.resit()

    def checkHoles(self, event: Event) -> None:
        if self.index is None or not self.holes:
            return
        holes, _ = dealOrder(self.players, splitDeck(event.value("deck") or ""))
        if list(holes[self.index]) != self.holes:
            self.stats.fail(f"{self.name}: dealt {self.holes}, the revealed deck gives {list(holes[self.index])}")
        else:
            self.stats.holesChecked += 1

    def resit(self) -> None:
        d = Deferred.fromCoroutine(self.client.sit(self.table, self.seat, self.buyIn))
        d.addErrback(self.cannotSit)

    def cannotSit(self, failure: Any) -> None:
        self.running = False
        self.stats.fail(f"{self.name} could not sit again at {self.table}: {failure.value}")

    def decide(self, turn: Event) -> None:
        call, low, high = turn.number("call"), turn.number("min"), turn.number("max")
        verb, amount = self.choose(call, low, high)
        self.stats.actions += 1
        self.sentAt = time.monotonic()
        d = self.client.act(verb, amount)
        d.addErrback(self.refused)

    def refused(self, failure: Any) -> None:
        failure.trap(PokerError, ConnectionError)
        self.stats.refused += 1

    def choose(self, call: int, low: int, high: int) -> tuple[str, int | None]:
        """
        The bot's action, always one the TURN line says is legal.
        """
        passive = ("CALL", None) if call else ("CHECK", None)
        raiseVerb = "RAISE" if call or not self.board else "BET"
        if self.strategy == "call":
            return passive
        if self.strategy == "random":
            r = self.rng.random()
            if r < 0.15 and call:
                return ("FOLD", None)
            if r < 0.30 and high:
                amount = low if self.rng.random() < 0.7 else self.rng.randint(low, high)
                return (raiseVerb, amount)
            return passive
        # tight: raise good starting hands, call cheap, otherwise give up.
        ranks = sorted((RANK[c[0]] for c in self.holes), reverse=True) if len(self.holes) == 2 else [0, 0]
        pair = ranks[0] == ranks[1]
        paired = any(c[0] in {b[0] for b in self.board} for c in self.holes)
        strong = pair or ranks[1] >= 10 or (not self.board and ranks[0] == 14) or (self.board and paired)
        if strong and high and self.rng.random() < 0.5:
            return (raiseVerb, low)
        if strong or call <= 2:
            return passive
        return ("FOLD", None) if call else ("CHECK", None)


async def runBots(
    reactor: Any,
    host: str,
    port: int,
    bots: int,
    tables: int,
    hands: int,
    strategy: str = "random",
    think: float = 0.0,
    prefix: str = "bot",
    timeout: float = 600.0,
    connectAtOnce: int = 100,
    seed: int | None = None,
    tls: bool = False,
    cafile: str | None = None,
    duration: float | None = None,
    onSeated: Any = None,
) -> Stats:
    """
    Seat C{bots} bots at C{tables} tables (opening those missing, on a
    guests server) and play until C{hands} hands are over, or C{timeout}
    (a failure).  With C{duration}, play that many seconds after every bot
    is seated instead (the benchmark), C{onSeated} called then.
    """
    stats = Stats(hands)
    limit = DeferredSemaphore(connectAtOnce)
    names = [f"{prefix}t{j + 1}" for j in range(tables)]
    lobby = await PokerClient.connect(reactor, host, port, tls=tls, cafile=cafile)
    await lobby.login(f"{prefix}0")
    existing = {line.split()[0]: line for line in await lobby.tables()}
    perTable = -(-bots // tables)
    buyIns = {}
    for name in names:
        if name not in existing:
            await lobby.open(name, max(2, min(9, perTable)))
    for line in await lobby.tables():
        words = line.split()
        if words[0] in names:
            low, high = (int(x) for x in dict(w.split("=", 1) for w in words[1:] if "=" in w)["buyin"].split(".."))
            buyIns[words[0]] = high
    await lobby.quit()

    async def spectate(name: str) -> PokerClient:
        client = await PokerClient.connect(reactor, host, port, tls=tls, cafile=cafile)
        Spectator(client, name, stats)
        await client.watch(name)
        return client

    async def seatBot(i: int) -> Bot:
        table = names[i % tables]
        client = await PokerClient.connect(reactor, host, port, tls=tls, cafile=cafile)
        name = f"{prefix}{i + 1}"
        bot = Bot(client, name, table, i // tables + 1, buyIns[table], strategy, stats, reactor, think,
                  None if seed is None else seed + i)
        await client.login(name)
        await client.sit(table, bot.seat, bot.buyIn)
        return bot

    spectators = [await spectate(name) for name in names]
    stats.started = time.monotonic()
    seating = gatherResults(
        [Deferred.fromCoroutine(_limited(limit, seatBot, i)) for i in range(bots)], consumeErrors=True
    )
    seated = await seating.addTimeout(timeout, reactor)
    def giveUp() -> None:
        if not stats.done.called:
            stats.done.errback(TimeoutError())

    timer = reactor.callLater(timeout, giveUp)
    if duration is not None:
        if onSeated is not None:
            onSeated()
        # What happened while bots were still sitting down is not counted.
        stats.hands, stats.latencies, stats.actions = 0, [], 0
        stats.verified = stats.conserved = stats.holesChecked = 0
        stats.started = time.monotonic()

        def enough() -> None:
            if not stats.done.called:
                stats.finished = time.monotonic()
                stats.done.callback(None)

        stats.target = 1 << 62
        timer.cancel()
        timer = reactor.callLater(duration, enough)
    try:
        await stats.done
    except TimeoutError:
        stats.fail(f"only {stats.hands} of {hands} hands were over after {timeout:g} s")
        stats.finished = time.monotonic()
    else:
        if timer.active():
            timer.cancel()
    for bot in seated:
        bot.running = False
    await gatherResults([Deferred.fromCoroutine(_limited(limit, _close, b.client)) for b in seated])
    await gatherResults([Deferred.fromCoroutine(_close(c)) for c in spectators])
    return stats


async def _limited(limit: DeferredSemaphore, f: Any, *args: Any) -> Any:
    await limit.acquire()
    try:
        return await f(*args)
    finally:
        limit.release()


async def _close(client: PokerClient) -> None:
    try:
        await client.quit()
    except Exception:
        client.disconnect()


def parseAddress(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"HOST:PORT expected, not {text}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poker-bot", description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("address", type=parseAddress, metavar="HOST:PORT")
    parser.add_argument("--bots", type=int, default=6)
    parser.add_argument("--tables", type=int, default=1)
    parser.add_argument("--hands", type=int, default=100, help="hands to play, all tables together")
    parser.add_argument("--strategy", choices=STRATEGIES, default="random")
    parser.add_argument("--think", type=float, default=0.0, help="mean seconds a bot thinks before acting")
    parser.add_argument("--prefix", default="bot", help="bot names are PREFIX1.., tables PREFIXt1..")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up (and fail) after this many seconds")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--cafile")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.bots < 2 * args.tables:
        parser.error("at least two bots a table")
    if -(-args.bots // args.tables) > 9:
        parser.error("at most nine bots a table: give more --tables")
    from twisted.internet import task

    result: list[Stats] = []

    async def run(reactor: Any) -> None:
        host, port = args.address
        stats = await runBots(
            reactor, host, port, args.bots, args.tables, args.hands, args.strategy, args.think,
            args.prefix, args.timeout, seed=args.seed, tls=args.tls, cafile=args.cafile,
        )
        result.append(stats)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    stats = result[0]
    print(stats.summary())
    for why in stats.failures[:20]:
        print("  " + why)
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
