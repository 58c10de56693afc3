"""
The pluggable pieces of the poker server.
"""

from __future__ import annotations

from zope.interface import Interface


class IListener(Interface):
    """
    Whoever a table sends event lines to: a seated player's connection or
    a spectator's.
    """

    def send(data: bytes) -> None:
        """
        Send C{data}, whole lines with their line endings.
        """

    def replaced() -> None:
        """
        The player logged in again on another connection: this one is
        told so and closed.
        """


class IBank(Interface):
    """
    Where chips live between tables: the players' balances and the stacks
    at each seat, kept so that chips are neither created nor lost (a
    restart returns every seat's stack, as of the last finished hand, to
    its owner's balance).
    """

    def balance(name: str) -> int | None:
        """
        C{name}'s balance, or L{None} if they have none yet.
        """

    def grant(name: str, amount: int) -> int:
        """
        Give C{name} chips from outside the game (a new account's or a
        guest's bankroll) up to a balance of C{amount}; return the balance.
        """

    def buyIn(name: str, table: str, seat: int, amount: int) -> None:
        """
        Move C{amount} from C{name}'s balance to a seat.

        @raise poker.wire.PokerError: 446 if the balance is too small.
        """

    def cashOut(name: str, table: str, seat: int, stack: int) -> None:
        """
        Move a seat's C{stack} back to C{name}'s balance; the seat is free.
        """

    def settle(table: str, stacks: list, record: tuple) -> None:
        """
        A hand ended: C{stacks} are its players' C{(seat, name, stack)},
        C{record} its C{(hand number, commitment, PHH text)}.
        """

    def hand(table: str, number: int):
        """
        A L{Deferred} firing with a stored hand's PHH text, or L{None}.
        """

    def close():
        """
        Write what is pending and close; a L{Deferred}.
        """
