"""
Hands with known results, played by pokerkit through L{poker.engine.Hand}:
split pots, side pots, a short all-in, showdowns checked against treys,
and random action sequences.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treys import Card as TreysCard
from treys import Evaluator

from poker.engine import CALL, CHECK, FOLD, Hand, IllegalAction, dealOrder
from poker.shuffle import CARDS, Shuffle, commitment, splitDeck, verify
from tests.poker_support import stackedDeck


def playOut(hand: Hand) -> None:
    """
    Everyone checks or calls to the end.
    """
    while not hand.over:
        legal = hand.legal()
        assert legal is not None
        hand.act(legal.player, CALL if legal.toCall else CHECK)


def wins(hand: Hand) -> dict[int, int]:
    """
    Chips won by each player (pokerkit index), from the hand's steps.
    """
    won: dict[int, int] = {}
    for op in hand.state.operations:
        if type(op).__name__ == "ChipsPulling":
            won[op.player_index] = won.get(op.player_index, 0) + op.amount
    return won


def test_splitPot():
    """Two players whose best five cards are the board's split the pot evenly."""
    deck = stackedDeck(["2c3d", "2d3c"], "AhKhQhJhTh")
    hand = Hand([100, 100], 1, 2, 0, deck)
    hand.run()
    playOut(hand)
    assert hand.finalStacks == [100, 100]
    assert wins(hand) == {0: 2, 1: 2}


def test_threeWayAllInTwoSidePots():
    """Three all-ins of 50, 100 and 200 make a main pot of 150 and a side pot of 100; the best short stack wins the main, the second best the side, the big stack gets its uncalled 100 back."""
    # pokerkit order for three players: small blind, big blind, button.
    deck = stackedDeck(["AsAc", "KsKc", "2h7d"], "3c8d9hJsQd")
    hand = Hand([50, 100, 200], 1, 2, 0, deck)
    hand.run()
    legal = hand.legal()
    assert legal is not None and legal.player == 2  # the button acts first, three-handed
    hand.act(2, "RAISE", 200)
    hand.act(0, CALL)
    steps = hand.act(1, CALL)
    pots = [s.pots for s in steps if s.kind == "pots"][0]
    assert sorted((amount, set(players)) for amount, players in pots) == sorted(
        [(150, {0, 1, 2}), (100, {1, 2})]
    )
    assert hand.over
    assert hand.finalStacks == [150, 100, 100]
    assert sum(hand.finalStacks) == 350


def test_shortAllInDoesNotReopenBetting():
    """A raise all-in for less than a full raise lets the first bettor call but not re-raise."""
    deck = Shuffle.new().deck
    # small blind 100 chips, big blind 1000, button 1000: blinds 5/10.
    hand = Hand([1000, 1000, 1000, 125], 5, 10, 0, deck)
    hand.run()
    legal = hand.legal()
    assert legal is not None and legal.player == 2
    hand.act(2, "RAISE", 100)  # a full raise to 100
    hand.act(3, "RAISE", 125)  # all-in: only 25 more, short of a full raise (90)
    hand.act(0, FOLD)
    legal = hand.legal()
    assert legal is not None and legal.player == 1
    assert legal.maxTo > 0  # the big blind has not acted: it may still raise
    hand.act(1, CALL)
    legal = hand.legal()
    assert legal is not None and legal.player == 2
    assert legal.toCall == 25
    assert (legal.minTo, legal.maxTo) == (0, 0)
    with pytest.raises(IllegalAction) as refused:
        hand.act(2, "RAISE", 400)
    assert refused.value.code == 441
    assert "betting is closed" in refused.value.message and "CALL 25" in refused.value.message


def test_headsUpButtonPostsSmallBlindAndActsFirst():
    """Heads-up, the button (pokerkit's last index) posts the small blind and acts first before the flop, last after it."""
    hand = Hand([100, 100], 1, 2, 0, Shuffle.new().deck)
    steps = hand.run()
    posts = {s.player: s.amount for s in steps if s.kind == "post"}
    assert posts == {1: 1, 0: 2}
    legal = hand.legal()
    assert legal is not None and legal.player == 1 and legal.toCall == 1
    hand.act(1, CALL)
    hand.act(0, CHECK)
    legal = hand.legal()
    assert legal is not None and legal.player == 0


def test_illegalActionsSayWhatIsLegal():
    """CHECK facing a bet, CALL with nothing to call, a raise out of range, and out of turn are refused with 441/442/440 and the legal range."""
    hand = Hand([100, 100, 100], 1, 2, 0, Shuffle.new().deck)
    hand.run()
    with pytest.raises(IllegalAction) as e:
        hand.act(2, CHECK)
    assert e.value.code == 441 and "FOLD, CALL 2, RAISE 4..100" in e.value.message
    with pytest.raises(IllegalAction) as e:
        hand.act(2, "RAISE", 3)
    assert e.value.code == 442 and "from 4 to 100" in e.value.message
    with pytest.raises(IllegalAction) as e:
        hand.act(2, "BET", 10)
    assert e.value.code == 441
    with pytest.raises(IllegalAction) as e:
        hand.act(0, CALL)
    assert e.value.code == 440
    hand.act(2, CALL)
    hand.act(0, CALL)
    with pytest.raises(IllegalAction) as e:
        hand.act(1, CALL)
    assert e.value.code == 441 and "nothing to call" in e.value.message


def treysScore(cards: list[str]) -> int:
    evaluator = Evaluator()
    return evaluator.evaluate([TreysCard.new(c) for c in cards[2:]], [TreysCard.new(c) for c in cards[:2]])


def test_showdownWinnersAgreeWithTreys():
    """In 120 random hands checked down by 2 to 6 players, the players pokerkit pays are exactly those treys ranks best."""
    rng = random.Random(17)
    for _ in range(120):
        players = rng.randint(2, 6)
        deck = list(CARDS)
        rng.shuffle(deck)
        hand = Hand([100] * players, 1, 2, 0, deck)
        hand.run()
        playOut(hand)
        holes, board = dealOrder(players, deck)
        scores = [treysScore([*holes[p], *board]) for p in range(players)]
        best = min(scores)
        expected = {p for p in range(players) if scores[p] == best}
        assert set(wins(hand)) == expected, (holes, board)


def test_dealOrderMatchesWhatPokerkitDeals():
    """The cards dealOrder says a deck gives are the ones the hand deals: each player's hole cards and the board."""
    deck = Shuffle.new().deck
    hand = Hand([100] * 4, 1, 2, 0, deck)
    hand.run()
    playOut(hand)
    holes, board = dealOrder(4, deck)
    assert [hand.holeCards(p) for p in range(4)] == [tuple(h) for h in holes]
    assert hand.board() == tuple(board)


def test_commitmentVerifiesOnlyTheRevealedDeck():
    """A reveal verifies against its commitment; another secret, a swapped card or a deck with a card twice does not."""
    s = Shuffle.new()
    assert verify(s.commitment, s.deckText, s.secret) is None
    assert s.commitment == commitment(s.deckText, s.secret)
    assert verify(s.commitment, s.deckText, "00" * 32) is not None
    cards = splitDeck(s.deckText)
    swapped = "".join([cards[1], cards[0], *cards[2:]])
    assert "not the commitment" in (verify(s.commitment, swapped, s.secret) or "")
    doubled = "".join([cards[0], cards[0], *cards[2:]])
    assert "52 cards" in (verify(commitment(doubled, s.secret), doubled, s.secret) or "")


@settings(max_examples=40, deadline=None)
@given(
    stacks=st.lists(st.integers(1, 300), min_size=2, max_size=6),
    moves=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["FOLD", "CHECK", "CALL", "BET", "RAISE"]), st.integers(0, 400)),
        max_size=40,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_randomActionsConserveChipsAndRefuseOutOfTurn(stacks, moves, seed):
    """Whatever actions are tried, by whoever: out-of-turn ones are refused with 440 and change nothing, and stacks plus the pot (bets included) always add up to the chips the hand began with."""
    deck = list(CARDS)
    random.Random(seed).shuffle(deck)
    hand = Hand(stacks, 1, 2, 0, deck)
    hand.run()
    total = sum(stacks)
    for who, verb, amount in moves:
        if hand.over:
            break
        player = who % len(stacks)
        legal = hand.legal()
        assert legal is not None
        before = len(hand.state.operations)
        try:
            hand.act(player, verb, amount if verb in ("BET", "RAISE") else None)
        except IllegalAction as e:
            assert len(hand.state.operations) == before
            if player != legal.player:
                assert e.code == 440
            continue
        assert player == legal.player
        state = hand.state
        assert sum(state.stacks) + state.total_pot_amount == total  # the pot counts the bets
    playOut(hand)
    assert sum(hand.finalStacks) == total
