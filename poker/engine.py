"""
One hand of no-limit Texas Hold'em, played by pokerkit.

The rules (blinds, betting rounds, short all-ins, side pots, showdown) are
pokerkit's; this module only deals from a deck order chosen outside (so
the shuffle can be committed to, L{poker.shuffle}), checks an action
before handing it over so the refusal can say what is legal, and turns
pokerkit's operations into L{Step}s the table announces.

Player indices are pokerkit's: the players in seat order starting left of
the button, so index 0 posts the small blind and the last is the button
(heads-up, pokerkit makes index 1, the button, post the small blind).
"""

from __future__ import annotations

import functools
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from coursenet.errors import ReplyError
from pokerkit import (
    Automation,
    BetCollection,
    BlindOrStraddlePosting,
    BoardDealing,
    Card,
    CheckingOrCalling,
    ChipsPulling,
    ChipsPushing,
    CompletionBettingOrRaisingTo,
    Folding,
    HandHistory,
    HoleCardsShowingOrMucking,
    HoleDealing,
    Mode,
    NoLimitTexasHoldem,
    AntePosting,
    StandardHighHand,
)

#: Everything but the players' decisions, collecting the bets (done here,
#: to announce the pots each collection makes), the dealing (done here, from the
#: committed deck order) and the showdown (here every hand still in is
#: shown: pokerkit's automation would first ask whether each can win,
#: which costs more than the rest of the hand).
AUTOMATIONS = (
    Automation.ANTE_POSTING,
    Automation.BLIND_OR_STRADDLE_POSTING,
    Automation.RUNOUT_COUNT_SELECTION,
    Automation.HAND_KILLING,
    Automation.CHIPS_PUSHING,
    Automation.CHIPS_PULLING,
)

_evaluated: dict[tuple, Any] = {}


class _RememberedHighHand(StandardHighHand):
    """
    pokerkit's standard high hand, each hand evaluated once.  Pushing the
    pots, pokerkit evaluates every hand still in against every other, and
    each comparison evaluates both again; that was most of a hand's cost.
    """

    @classmethod
    def from_game(cls, hole_cards: Any, board_cards: Any = ()) -> Any:
        key = (tuple(hole_cards), tuple(board_cards))
        hand = _evaluated.get(key)
        if hand is None:
            if len(_evaluated) >= 10_000:
                _evaluated.clear()
            hand = _evaluated[key] = super().from_game(*key)
        return hand

    @property
    def entry(self) -> Any:
        entry = self.__dict__.get("_entry")
        if entry is None:
            entry = self.__dict__["_entry"] = self.lookup.get_entry(self.cards)
        return entry


class _Holdem(NoLimitTexasHoldem):
    hand_types = (_RememberedHighHand,)


#: The four actions a player chooses from, as the wire names them.
FOLD, CHECK, CALL, BET, RAISE = "FOLD", "CHECK", "CALL", "BET", "RAISE"


class IllegalAction(ReplyError):
    """
    An action the rules do not allow now; C{code} is the wire's reply code
    and the message says what is legal instead.
    """



#: Reply codes of refused actions (docs/poker.md, section 6).
NOT_YOUR_TURN = 440
ILLEGAL = 441
OUT_OF_RANGE = 442


@dataclass(frozen=True)
class Legal:
    """
    What the player to act may do: C{toCall} chips to call (0: a check is
    free), and a bet or raise to any total from C{minTo} to C{maxTo} for
    the street (both 0 when the betting is closed to them, as after a
    short all-in that does not reopen it).
    """

    player: int
    toCall: int
    minTo: int
    maxTo: int
    #: Whether chips were bet on this street already: a raise, not a bet.
    facingBet: bool

    def describe(self) -> str:
        """
        The legal actions in the wire's words, for error replies.
        """
        parts = ["FOLD"]
        parts.append(f"CALL {self.toCall}" if self.toCall else "CHECK")
        if self.maxTo:
            verb = RAISE if self.facingBet else BET
            parts.append(f"{verb} {self.minTo}" if self.minTo == self.maxTo else f"{verb} {self.minTo}..{self.maxTo}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Step:
    """
    One thing that happened in the hand, for the table to announce.

    C{kind} is one of: C{post} (player, amount: a blind or ante), C{hole}
    (player, cards), C{board} (cards: the whole board so far), C{action}
    (player, verb, amount: the chips put in for CALL, the total for the
    street for BET/RAISE), C{pots} (pots: (amount, players) each), C{show}
    (player, cards), C{muck} (player), C{win} (player, amount, pot).
    """

    kind: str
    player: int = -1
    amount: int = 0
    verb: str = ""
    cards: tuple[str, ...] = ()
    pots: tuple[tuple[int, tuple[int, ...]], ...] = ()
    pot: int = 0


@functools.lru_cache(maxsize=256)
def _games(smallBlind: int, bigBlind: int, ante: int) -> tuple[Any, Any]:
    """
    pokerkit's game for these stakes (it names the variant in hand
    histories), and the same game played with the remembering evaluator;
    both are descriptions only, shared by every hand at those stakes.
    """
    args = (AUTOMATIONS, True, ante, (smallBlind, bigBlind), bigBlind)
    return NoLimitTexasHoldem(*args, mode=Mode.CASH_GAME), _Holdem(*args, mode=Mode.CASH_GAME)


def cardText(card: Any) -> str:
    """
    A card as the wire writes it: rank then suit, C{Ah}, C{Td}, C{2c}.
    """
    return f"{card.rank}{card.suit}"


def parseCards(text: str) -> list[Any]:
    """
    Cards written together (C{AhTd2c}) as pokerkit's cards.
    """
    return list(Card.parse(text))


#: pokerkit's card for each of the wire's 52.
_CARDS = {cardText(c): c for c in Card.parse("".join(r + s for r in "23456789TJQKA" for s in "cdhs"))}


@dataclass
class Hand:
    """
    A hand in play.

    @param stacks: the players' stacks, by pokerkit index.
    @param deck: the deck order, 52 cards as L{cardText} writes them; the
        hole cards, burns and board are taken from its front in the order
        pokerkit deals them.
    """

    stacks: Sequence[int]
    smallBlind: int
    bigBlind: int
    ante: int
    deck: Sequence[str]
    state: Any = field(init=False)
    game: Any = field(init=False)
    _seen: int = field(default=0, init=False)
    _collected: deque = field(default_factory=deque, init=False)
    _lastBetStreet: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.game, rules = _games(self.smallBlind, self.bigBlind, self.ante)
        self.state = rules(list(self.stacks), len(self.stacks))
        self.state.deck_cards = deque(_CARDS[c] for c in self.deck)

    @property
    def over(self) -> bool:
        return not self.state.status

    def run(self) -> list[Step]:
        """
        Deal what is due and collect what happened since the last call:
        call after the hand is made and after each action.
        """
        state = self.state
        while state.status and state.actor_index is None:
            if state.can_collect_bets():
                state.collect_bets()
                # The pots as this collection left them, for its step.
                self._collected.append(tuple((p.amount, tuple(p.player_indices)) for p in state.pots))
            elif state.showdown_index is not None:
                state.show_or_muck_hole_cards(True)
            elif state.can_burn_card():
                state.burn_card()
            elif state.can_deal_hole():
                state.deal_hole()
            elif state.can_deal_board():
                state.deal_board()
            else:  # pragma: no cover - pokerkit automates every other step
                raise RuntimeError(f"hand stuck: {state.operations[-1:]!r}")
        return self._steps()

    def _steps(self) -> list[Step]:
        steps: list[Step] = []
        operations = self.state.operations
        for op in operations[self._seen :]:
            step = self._step(op)
            if step is not None:
                steps.append(step)
        self._seen = len(operations)
        return steps

    def _step(self, op: Any) -> Step | None:
        if isinstance(op, (BlindOrStraddlePosting, AntePosting)):
            return Step("post", op.player_index, op.amount, "ANTE" if isinstance(op, AntePosting) else "BLIND")
        if isinstance(op, HoleDealing):
            return Step("hole", op.player_index, cards=tuple(map(cardText, op.cards)))
        if isinstance(op, BoardDealing):
            board = tuple(cardText(c) for c in self.state.get_board_cards(0))
            return Step("board", cards=board)
        if isinstance(op, Folding):
            return Step("action", op.player_index, 0, FOLD)
        if isinstance(op, CheckingOrCalling):
            return Step("action", op.player_index, op.amount, CALL if op.amount else CHECK)
        if isinstance(op, CompletionBettingOrRaisingTo):
            return Step("action", op.player_index, op.amount, self._lastVerb)
        if isinstance(op, BetCollection):
            return Step("pots", pots=self._collected.popleft())
        if isinstance(op, HoleCardsShowingOrMucking):
            if op.hole_cards:
                return Step("show", op.player_index, cards=tuple(map(cardText, op.hole_cards)))
            return Step("muck", op.player_index)
        if isinstance(op, ChipsPushing):
            self._pot = op.pot_index
            return None
        if isinstance(op, ChipsPulling):
            return Step("win", op.player_index, op.amount, pot=getattr(self, "_pot", 0))
        return None

    _lastVerb = BET

    # -- the player to act ------------------------------------------------------

    def legal(self) -> Legal | None:
        """
        What the player to act may do, or L{None} if nobody is to act.
        """
        version = len(self.state.operations)
        if self._legalAt != version:
            self._legal, self._legalAt = self._computeLegal(), version
        return self._legal

    _legal: Legal | None = None
    _legalAt = -1

    def _computeLegal(self) -> Legal | None:
        state = self.state
        player = state.actor_index
        if player is None or not state.status:
            return None
        toCall = state.checking_or_calling_amount or 0
        minTo = maxTo = 0
        if state.can_complete_bet_or_raise_to():
            minTo = state.min_completion_betting_or_raising_to_amount or 0
            maxTo = state.max_completion_betting_or_raising_to_amount or 0
        return Legal(player, toCall, minTo, maxTo, max(state.bets) > 0)

    def act(self, player: int, verb: str, amount: int | None = None) -> list[Step]:
        """
        Apply C{player}'s action, or raise L{IllegalAction} saying what is
        legal; return what happened up to the next decision.
        """
        legal = self.legal()
        if legal is None or legal.player != player:
            raise IllegalAction(NOT_YOUR_TURN, "not your turn")
        state = self.state
        with warnings.catch_warnings():
            # pokerkit warns about a fold when a check is free; a player
            # may still fold.
            warnings.simplefilter("ignore")
            if verb == FOLD:
                state.fold()
            elif verb == CHECK:
                if legal.toCall:
                    raise IllegalAction(ILLEGAL, f"cannot CHECK: {legal.toCall} to call; legal: {legal.describe()}")
                state.check_or_call()
            elif verb == CALL:
                if not legal.toCall:
                    raise IllegalAction(ILLEGAL, f"nothing to call; legal: {legal.describe()}")
                state.check_or_call()
            elif verb in (BET, RAISE):
                self._betOrRaise(legal, verb, amount)
            else:
                raise IllegalAction(ILLEGAL, f"unknown action {verb}; legal: {legal.describe()}")
        return self.run()

    def _betOrRaise(self, legal: Legal, verb: str, amount: int | None) -> None:
        if not legal.maxTo:
            raise IllegalAction(ILLEGAL, f"betting is closed to you; legal: {legal.describe()}")
        if verb == BET and legal.facingBet:
            raise IllegalAction(ILLEGAL, f"there is a bet already: RAISE it; legal: {legal.describe()}")
        if verb == RAISE and not legal.facingBet:
            raise IllegalAction(ILLEGAL, f"no bet to raise: BET; legal: {legal.describe()}")
        if amount is None or not legal.minTo <= amount <= legal.maxTo:
            raise IllegalAction(
                OUT_OF_RANGE,
                f"{verb} {amount} out of range: {verb} from {legal.minTo} to {legal.maxTo} (the total for the street)",
            )
        self._lastVerb = verb
        self.state.complete_bet_or_raise_to(amount)

    def defaultAction(self) -> str:
        """
        What the clock does for the player to act: check if free, else fold.
        """
        legal = self.legal()
        return CHECK if legal is not None and not legal.toCall else FOLD

    # -- after the hand ------------------------------------------------------------

    @property
    def finalStacks(self) -> list[int]:
        return list(self.state.stacks)

    def holeCards(self, player: int) -> tuple[str, ...]:
        """
        The cards C{player} was dealt (pokerkit forgets those of a hand
        it kills).
        """
        return tuple(
            cardText(c)
            for op in self.state.operations
            if isinstance(op, HoleDealing) and op.player_index == player
            for c in op.cards
        )

    def board(self) -> tuple[str, ...]:
        return tuple(cardText(c) for c in self.state.get_board_cards(0))

    def history(self, **fields: Any) -> HandHistory:
        """
        The hand in PHH (pokerkit's hand-history format), with C{fields}
        (players, table, hand, user-defined C{_...} fields) added.
        """
        user = {k: v for k, v in fields.items() if k.startswith("_")}
        plain = {k: v for k, v in fields.items() if not k.startswith("_")}
        return HandHistory.from_game_state(self.game, self.state, user_defined_fields=user, **plain)


def dealOrder(players: int, deck: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """
    Which cards of C{deck} a hand of C{players} deals: each player's two
    hole cards (by pokerkit index) and the five board cards, burns skipped.
    Used by clients to check a revealed deck against what they saw.
    """
    holes = [(deck[p], deck[players + p]) for p in range(players)]
    at = 2 * players
    board = [deck[at + 1], deck[at + 2], deck[at + 3], deck[at + 5], deck[at + 7]]
    return holes, board
