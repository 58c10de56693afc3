"""
A table: its seats, its hands one after another, the action clock, the
players who drop and come back, and the spectators.

The rules of a hand are pokerkit's (L{poker.engine.Hand}); the table
decides who is dealt in, where the button goes, who is to act and when
the clock runs out, and says all of it to everyone watching as the event
lines of docs/poker.md, section 5.  Hole cards go to their owner only.

Every entry point runs under L{Table._guard}: an unexpected error voids
the hand in play, gives every player back the chips they sat down to it
with, and leaves the table empty and usable.  Nothing of it reaches
another table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.logger import Logger

from poker.engine import FOLD, Hand, IllegalAction, Step
from poker.interfaces import IBank, IListener
from poker.shuffle import Shuffle
from poker.wire import PokerError, formatLine


@dataclass
class TableConfig:
    """
    A table as the tables file describes it (docs/poker.md, section 9).
    """

    name: str
    seats: int = 6
    smallBlind: int = 1
    bigBlind: int = 2
    ante: int = 0
    minBuyIn: int = 40
    maxBuyIn: int = 200
    #: Seconds a player has to act before the clock checks or folds.
    actionTimeout: float = 30.0
    #: Seconds between one hand's end and the next one's start.
    handPause: float = 2.0

    def check(self) -> None:
        """
        @raise ValueError: if the table could not be played.
        """
        if not 2 <= self.seats <= 9:
            raise ValueError(f"table {self.name}: seats must be 2 to 9, not {self.seats}")
        if not 0 < self.smallBlind <= self.bigBlind:
            raise ValueError(f"table {self.name}: blinds must be 0 < small <= big")
        if self.ante < 0:
            raise ValueError(f"table {self.name}: negative ante")
        if not self.bigBlind + self.ante <= self.minBuyIn <= self.maxBuyIn:
            raise ValueError(f"table {self.name}: buy-in range must be big blind + ante <= min <= max")
        if self.actionTimeout <= 0 or self.handPause < 0:
            raise ValueError(f"table {self.name}: timeouts must be positive")


@dataclass(eq=False)
class Seat:
    """
    A player at the table.  C{stack} is what they have between hands (and
    sat down to the hand in play with); during a hand pokerkit holds the
    live stack.
    """

    number: int
    name: str
    stack: int
    listener: IListener | None
    #: Disconnected, within the grace period: sat out, checked or folded.
    away: bool = False
    #: Asked to leave during a hand: folded when their turn comes, cashed
    #: out when it ends.
    leaving: bool = False
    graceTimer: Any = None
    #: Index in the hand in play (pokerkit's), or None if not dealt in.
    index: int | None = None
    holes: list[str] = field(default_factory=list)


class Table:
    """
    One table of L{TableConfig}, playing hand after hand while two or more
    players have chips.

    @param clock: the reactor's time (C{callLater}, C{seconds}); a
        C{task.Clock} in tests.
    @param bank: where chips come from and go back to (L{IBank}).
    @param grace: seconds a disconnected player keeps the seat.
    @param shuffler: makes each hand's deck order (L{Shuffle.new}).
    @param onSeatFreed: called with (table, seat) when a player is
        unseated by the table itself (busted, left, grace over, failure),
        so the lobby can forget where they sat.
    """

    _log = Logger()

    def __init__(
        self,
        config: TableConfig,
        clock: Any,
        bank: IBank,
        grace: float = 60.0,
        shuffler: Callable[[], Shuffle] = Shuffle.new,
        onSeatFreed: Callable[["Table", Seat], None] = lambda table, seat: None,
    ) -> None:
        config.check()
        self.config = config
        self.name = config.name
        self.clock = clock
        self.bank = bank
        self.grace = grace
        self.shuffler = shuffler
        self.onSeatFreed = onSeatFreed
        self.seats: list[Seat | None] = [None] * config.seats
        self.watchers: set[IListener] = set()
        self.hand: Hand | None = None
        self.handNumber = getattr(bank, "lastHands", {}).get(config.name) or 0
        self.button = 0
        self.order: list[Seat] = []
        self.shuffle: Shuffle | None = None
        self.failures = 0
        self._startCall: Any = None
        self._clockCall: Any = None
        self._deadline = 0.0
        self._turnIndex: int | None = None

    # -- what the lobby shows ------------------------------------------------------

    @property
    def players(self) -> int:
        return sum(1 for s in self.seats if s is not None)

    def describe(self) -> str:
        c = self.config
        return (
            f"{c.name} seats={c.seats} players={self.players} blinds={c.smallBlind}/{c.bigBlind}"
            f" ante={c.ante} buyin={c.minBuyIn}..{c.maxBuyIn} clock={c.actionTimeout:g}"
        )

    def chipsInPlay(self) -> int:
        """
        Chips at the table: the seats' stacks as of the hand's start (a hand
        moves chips between them, never off the table).
        """
        return sum(s.stack for s in self.seats if s is not None)

    # -- sending ----------------------------------------------------------------------

    def broadcast(self, line: str) -> None:
        """
        Send C{line} to every player seated and every spectator.
        """
        data = formatLine(line)
        for seat in self.seats:
            if seat is not None and seat.listener is not None:
                seat.listener.send(data)
        for watcher in self.watchers:
            watcher.send(data)

    def _private(self, seat: Seat, line: str) -> None:
        if seat.listener is not None:
            seat.listener.send(formatLine(line))

    # -- guarded entry points -----------------------------------------------------------

    def _guard(self, f: Callable, *args: Any) -> Any:
        """
        Run C{f}; an error other than a refusal breaks this table only.
        """
        try:
            return f(*args)
        except (IllegalAction, PokerError):
            raise
        except Exception:
            self._log.failure("table {table} failed; hand voided, players cashed out", table=self.name)
            self._break()
            raise PokerError(451, f"table {self.name} failed; the hand was voided and every stack returned")

    def _break(self) -> None:
        self.failures += 1
        self.hand = None
        self.order = []
        self._cancel("_clockCall")
        self._cancel("_startCall")
        try:
            self.broadcast(f"CLOSED {self.name} internal error; hand voided, every stack returned")
        except Exception:  # a listener that fails must not stop the cash-out
            pass
        for seat in list(self.seats):
            if seat is not None:
                self._unseat(seat)

    def _cancel(self, attr: str) -> None:
        call = getattr(self, attr)
        if call is not None and call.active():
            call.cancel()
        setattr(self, attr, None)

    # -- the lobby's requests -------------------------------------------------------------

    def sit(self, number: int, name: str, buyIn: int, listener: IListener) -> Seat:
        """
        Seat C{name} at seat C{number} (1-based) with C{buyIn} chips taken
        from the bank.
        """
        c = self.config
        if not 1 <= number <= c.seats:
            raise PokerError(444, f"no seat {number} at {self.name}: seats are 1 to {c.seats}")
        if self.seats[number - 1] is not None:
            free = [str(i + 1) for i, s in enumerate(self.seats) if s is None]
            raise PokerError(444, f"seat {number} is taken; free: {' '.join(free) or 'none'}")
        if not c.minBuyIn <= buyIn <= c.maxBuyIn:
            raise PokerError(445, f"buy-in {buyIn} out of range: {c.minBuyIn} to {c.maxBuyIn}")
        self.bank.buyIn(name, self.name, number, buyIn)
        seat = Seat(number, name, buyIn, listener)
        self.seats[number - 1] = seat
        self.broadcast(f"SIT {self.name} {number} {name} {buyIn}")
        self.snapshot(listener, seat)
        self._guard(self._maybeStart)
        return seat

    def leave(self, seat: Seat) -> bool:
        """
        The player asks to leave: now if they are not in the hand in
        play (C{True}), else folded at their turn and cashed out when the
        hand ends (C{False}).
        """
        if seat.index is None or self.hand is None:
            self._unseat(seat)
            return True
        seat.leaving = True
        self._guard(self._autoActIfTheirTurn, seat)
        return False

    def watch(self, listener: IListener) -> None:
        self.watchers.add(listener)
        self.snapshot(listener, None)

    def unwatch(self, listener: IListener) -> None:
        self.watchers.discard(listener)

    def disconnected(self, seat: Seat) -> None:
        """
        The player's connection is gone: keep the seat for the grace
        period, acting for them (check if free, else fold) meanwhile.
        """
        seat.listener = None
        seat.away = True
        self.broadcast(f"AWAY {self.name} {seat.number} {seat.name} grace={self.grace:g}")
        seat.graceTimer = self.clock.callLater(self.grace, self._guardNoRaise, self._graceOver, seat)
        self._guard(self._autoActIfTheirTurn, seat)

    def reconnected(self, seat: Seat, listener: IListener) -> None:
        """
        The player is back within the grace period: the seat is theirs
        again, with the table's state sent to them.
        """
        if seat.graceTimer is not None and seat.graceTimer.active():
            seat.graceTimer.cancel()
        seat.graceTimer = None
        seat.listener = listener
        seat.away = False
        self.broadcast(f"BACK {self.name} {seat.number} {seat.name}")
        self.snapshot(listener, seat)
        self._guard(self._maybeStart)

    def _graceOver(self, seat: Seat) -> None:
        seat.graceTimer = None
        if self.seats[seat.number - 1] is not seat:
            return
        if seat.index is not None and self.hand is not None:
            seat.leaving = True
        else:
            self._unseat(seat)

    def _guardNoRaise(self, f: Callable, *args: Any) -> None:
        """
        For timers: a table failure is handled (L{_guard}) and not passed
        on to the reactor.
        """
        try:
            self._guard(f, *args)
        except PokerError:
            pass

    def _unseat(self, seat: Seat) -> None:
        if self.seats[seat.number - 1] is not seat:
            return
        # Said while they still sit, so that they hear it too.
        self.broadcast(f"LEFT {self.name} {seat.number} {seat.name} {seat.stack}")
        self.seats[seat.number - 1] = None
        if seat.graceTimer is not None and seat.graceTimer.active():
            seat.graceTimer.cancel()
        self.bank.cashOut(seat.name, self.name, seat.number, seat.stack)
        self.onSeatFreed(self, seat)

    # -- what a newcomer is told ------------------------------------------------------------

    def snapshot(self, listener: IListener, seat: Seat | None) -> None:
        """
        The table as it is now, to one listener: its description, the
        seats, and the hand in play (with C{seat}'s own cards).
        """
        lines = [f"TABLE {self.describe()}"]
        occupied = [s for s in self.seats if s is not None]
        lines.append(f"SEATS {self.name} " + " ".join(f"{s.number}:{s.name}:{self._liveStack(s)}" for s in occupied))
        hand = self.hand
        if hand is not None and self.shuffle is not None:
            lines.append(self._handLine())
            if seat is not None and seat.index is not None and seat.holes:
                lines.append(f"DEAL {self.name} {' '.join(seat.holes)}")
            board = hand.board()
            if board:
                lines.append(f"BOARD {self.name} {' '.join(board)}")
            lines.append(self._potsLine((p.amount, p.player_indices) for p in hand.state.pots))
            turn = self._turnLine()
            if turn:
                lines.append(turn)
        for line in lines:
            listener.send(formatLine(line))

    def _liveStack(self, seat: Seat) -> int:
        if self.hand is not None and seat.index is not None:
            return int(self.hand.state.stacks[seat.index])
        return seat.stack

    def _handLine(self) -> str:
        assert self.shuffle is not None
        return f"HAND {self.name} {self.handNumber} button={self.button} commit={self.shuffle.commitment}"

    def _potsLine(self, pots: Any) -> str:
        """
        The POTS line of C{pots}, C{(amount, player indices)} each.
        """
        text = " ".join(
            f"{amount}:" + ",".join(str(self.order[i].number) for i in players) for amount, players in pots
        )
        return f"POTS {self.name} {text}".rstrip()

    # -- hands -------------------------------------------------------------------------------

    def _eligible(self) -> list[Seat]:
        return [s for s in self.seats if s is not None and s.stack > 0 and not s.away and not s.leaving]

    def _maybeStart(self) -> None:
        if self.hand is not None or self._startCall is not None or len(self._eligible()) < 2:
            return
        self._startCall = self.clock.callLater(self.config.handPause, self._guardNoRaise, self._startHand)

    def _startHand(self) -> None:
        self._startCall = None
        players = self._eligible()
        if self.hand is not None or len(players) < 2:
            return
        # The button moves to the next player clockwise; the hand is dealt
        # from the seat after it, the button last.
        numbers = [s.number for s in players]
        after = [n for n in numbers if n > self.button]
        self.button = after[0] if after else numbers[0]
        at = numbers.index(self.button)
        self.order = players[at + 1 :] + players[: at + 1]
        for i, seat in enumerate(self.order):
            seat.index = i
            seat.holes = []
        self.handNumber += 1
        self.shuffle = self.shuffler()
        c = self.config
        self.hand = Hand([s.stack for s in self.order], c.smallBlind, c.bigBlind, c.ante, self.shuffle.deck)
        self.broadcast(self._handLine())
        self.broadcast(f"SEATS {self.name} " + " ".join(f"{s.number}:{s.name}:{s.stack}" for s in self.order))
        self._play(self.hand.run())

    def _play(self, steps: list[Step]) -> None:
        """
        Announce C{steps}, then prompt the next player or end the hand.
        """
        self._announce(steps)
        while self.hand is not None:
            legal = self.hand.legal()
            if legal is None:
                self._finish()
                return
            seat = self.order[legal.player]
            if seat.away or seat.leaving:
                verb = self.hand.defaultAction() if not seat.leaving else FOLD
                self.broadcast(f"TIMEOUT {self.name} {seat.number} {verb}")
                self._announce(self.hand.act(legal.player, verb))
                continue
            self._turnIndex = legal.player
            self._deadline = self.clock.seconds() + self.config.actionTimeout
            self._clockCall = self.clock.callLater(self.config.actionTimeout, self._guardNoRaise, self._timeout)
            self.broadcast(self._turnLine())
            return

    def _turnLine(self) -> str:
        hand = self.hand
        if hand is None:
            return ""
        legal = hand.legal()
        if legal is None:
            return ""
        seat = self.order[legal.player]
        left = max(0.0, self._deadline - self.clock.seconds())
        return (
            f"TURN {self.name} {seat.number} call={legal.toCall} min={legal.minTo} max={legal.maxTo}"
            f" deadline={left:.0f}"
        )

    def _announce(self, steps: list[Step]) -> None:
        t = self.name
        dealt: list[Seat] = []
        for step in steps:
            kind = step.kind
            if kind == "hole":
                seat = self.order[step.player]
                seat.holes.extend(step.cards)
                if len(seat.holes) == 2:
                    dealt.append(seat)
                continue
            if dealt:
                self._deal(dealt)
                dealt = []
            if kind == "action":
                number = self.order[step.player].number
                amount = f" {step.amount}" if step.verb not in ("FOLD", "CHECK") else ""
                self.broadcast(f"ACTION {t} {number} {step.verb}{amount}")
            elif kind == "post":
                self.broadcast(f"POST {t} {self.order[step.player].number} {step.amount} {step.verb}")
            elif kind == "board":
                self.broadcast(f"BOARD {t} {' '.join(step.cards)}")
            elif kind == "pots":
                self.broadcast(self._potsLine(step.pots))
            elif kind == "show":
                self.broadcast(f"SHOW {t} {self.order[step.player].number} {' '.join(step.cards)}")
            elif kind == "muck":
                self.broadcast(f"MUCK {t} {self.order[step.player].number}")
            elif kind == "win":
                self.broadcast(f"WIN {t} {self.order[step.player].number} {step.amount} pot={step.pot}")
        if dealt:
            self._deal(dealt)

    def _deal(self, seats: list[Seat]) -> None:
        for seat in seats:
            self._private(seat, f"DEAL {self.name} {' '.join(seat.holes)}")

    def act(self, seat: Seat, verb: str, amount: int | None) -> None:
        """
        C{seat}'s player acts; L{IllegalAction} if the rules refuse it.
        """
        self._guard(self._act, seat, verb, amount)

    def _act(self, seat: Seat, verb: str, amount: int | None) -> None:
        hand = self.hand
        if hand is None or seat.index is None:
            raise IllegalAction(440, "you are not in a hand at this table; wait for the next one")
        legal = hand.legal()
        if legal is None or legal.player != seat.index:
            who = self.order[legal.player].number if legal is not None else None
            raise IllegalAction(440, f"not your turn: seat {who} is to act")
        steps = hand.act(seat.index, verb, amount)
        self._cancel("_clockCall")
        self._play(steps)

    def _timeout(self) -> None:
        self._clockCall = None
        hand = self.hand
        if hand is None:
            return
        legal = hand.legal()
        if legal is None:
            return
        verb = hand.defaultAction()
        self.broadcast(f"TIMEOUT {self.name} {self.order[legal.player].number} {verb}")
        self._play(hand.act(legal.player, verb))

    def _autoActIfTheirTurn(self, seat: Seat) -> None:
        hand = self.hand
        if hand is None or seat.index is None:
            return
        legal = hand.legal()
        if legal is not None and legal.player == seat.index:
            self._cancel("_clockCall")
            self._play([])

    def _finish(self) -> None:
        hand, shuffle = self.hand, self.shuffle
        assert hand is not None and shuffle is not None
        t = self.name
        final = hand.finalStacks
        before = sum(s.stack for s in self.order)
        if sum(final) != before:  # pokerkit moves chips, it never makes them
            raise RuntimeError(f"chips not conserved: {before} before, {sum(final)} after")
        for seat, stack in zip(self.order, final):
            seat.stack = stack
        self.broadcast(f"STACKS {t} " + " ".join(f"{s.number}:{s.stack}" for s in self.seats if s is not None))
        self.broadcast(f"REVEAL {t} {self.handNumber} deck={shuffle.deckText} secret={shuffle.secret}")
        self.broadcast(f"END {t} {self.handNumber}")
        history = hand.history(
            players=[s.name for s in self.order],
            seats=[s.number for s in self.order],
            seat_count=self.config.seats,
            table=t,
            hand=self.handNumber,
            finishing_stacks=final,
            _commit=shuffle.commitment,
            _deck=shuffle.deckText,
            _secret=shuffle.secret,
        )
        self.bank.settle(
            t,
            [(s.number, s.name, s.stack) for s in self.order],
            (self.handNumber, shuffle.commitment, history.dumps()),
        )
        self.hand = None
        played = self.order
        self.order = []
        for seat in played:
            seat.index = None
            seat.holes = []
            if seat.stack == 0 or seat.leaving:
                self._unseat(seat)
        self._maybeStart()
