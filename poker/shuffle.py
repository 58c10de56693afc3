"""
The verifiable shuffle (docs/poker.md, section 8).

Before a hand the server publishes C{commit = SHA-256(deck ":" secret)}, in
hex, where C{deck} is the 52 cards in dealing order written together
(C{AhTd2c...}, 104 characters) and C{secret} 32 random bytes in hex.  After
the hand it reveals C{deck} and C{secret}; anyone can check that the hash
matches, that the deck holds each card once, and that the cards they saw
are the ones that order deals (L{poker.engine.dealOrder}).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass

RANKS = "23456789TJQKA"
SUITS = "cdhs"
#: The 52 cards in a fixed order, as the wire writes them.
CARDS = tuple(r + s for r in RANKS for s in SUITS)


@dataclass(frozen=True)
class Shuffle:
    """
    A deck order with the secret that hides it until it is revealed.
    """

    deck: tuple[str, ...]
    secret: str

    @classmethod
    def new(cls) -> "Shuffle":
        """
        A fresh uniformly random order, drawn from 256 bits of the
        operating system's CSPRNG (one read a hand rather than one for
        each of the shuffle's 51 draws).  Each hand seeds afresh, so
        the decks revealed say nothing about the next one.
        """
        deck = list(CARDS)
        random.Random(secrets.token_bytes(32)).shuffle(deck)
        return cls(tuple(deck), secrets.token_hex(32))

    @property
    def deckText(self) -> str:
        return "".join(self.deck)

    @property
    def commitment(self) -> str:
        return commitment(self.deckText, self.secret)


def commitment(deckText: str, secret: str) -> str:
    """
    The published commitment to a deck order and secret.
    """
    return hashlib.sha256(f"{deckText}:{secret}".encode("ascii")).hexdigest()


def splitDeck(deckText: str) -> list[str]:
    """
    C{AhTd...} as C{["Ah", "Td", ...]}.
    """
    return [deckText[i : i + 2] for i in range(0, len(deckText), 2)]


def verify(commit: str, deckText: str, secret: str) -> str | None:
    """
    Why a reveal does not match its commitment, or L{None} if it does.
    """
    try:
        deckText.encode("ascii")
        secret.encode("ascii")
    except UnicodeEncodeError:
        return "deck and secret must be ASCII"
    cards = splitDeck(deckText)
    if len(deckText) != 104 or sorted(cards) != sorted(CARDS):
        return "the deck is not the 52 cards, each once"
    if not hmac.compare_digest(commitment(deckText, secret), commit.lower()):
        return "SHA-256 of deck:secret is not the commitment"
    return None
