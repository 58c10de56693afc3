"""
C{poker}: the terminal client, and the shuffle and history tools.

    poker play HOST:PORT --name NAME [--password PW]   play at a terminal
    poker verify COMMIT DECK SECRET                    check a revealed shuffle
    poker verify --phh FILE                            check every hand of a PHH file
    poker export --db PATH [--table T] [--out FILE]    stored hands as PHH
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred

from poker.client import Event, PokerClient
from poker.shuffle import verify
from poker.wire import PokerError

SHORTCUTS = {"f": "ACT FOLD", "x": "ACT CHECK", "c": "ACT CALL", "b": "ACT BET", "r": "ACT RAISE"}


class TableView:
    """
    What the terminal shows: the table as the events describe it, printed
    whenever it is someone's turn.
    """

    def __init__(self, out: Any = sys.stdout) -> None:
        self.out = out
        self.name = ""
        self.seats: dict[int, tuple[str, int]] = {}
        self.board: list[str] = []
        self.holes: list[str] = []
        self.pots = ""
        self.me: str | None = None

    def event(self, event: Event) -> None:
        kind, words = event.kind, event.words
        if kind == "SEATS":
            self.name = event.table
            self.seats = {int(w.split(":")[0]): (w.split(":")[1], int(w.split(":")[2])) for w in words[1:]}
        elif kind == "HAND":
            self.board, self.holes, self.pots = [], [], ""
            self.print(f"--- hand {words[1]} at {words[0]} (commitment {(event.value('commit') or '')[:16]}...)")
        elif kind == "DEAL":
            self.holes = list(words[1:])
            self.print(f"your cards: {' '.join(self.holes)}")
        elif kind == "BOARD":
            self.board = list(words[1:])
        elif kind == "POTS":
            self.pots = " ".join(words[1:])
        elif kind == "TURN":
            self.show(event)
        elif kind in ("ACTION", "WIN", "SHOW", "TIMEOUT", "SIT", "LEFT", "AWAY", "BACK", "CLOSED"):
            self.print(" ".join([kind, *words[1:]]))
        elif kind == "STACKS":
            for w in words[1:]:
                seat, stack = (int(x) for x in w.split(":"))
                if seat in self.seats:
                    self.seats[seat] = (self.seats[seat][0], stack)

    def show(self, turn: Event) -> None:
        seat = int(turn.words[1])
        lines = [f"[{self.name}] board: {' '.join(self.board) or '-'}   pots: {self.pots or '-'}"]
        for number, (name, stack) in sorted(self.seats.items()):
            mark = "->" if number == seat else "  "
            mine = f"  {' '.join(self.holes)}" if name == self.me and self.holes else ""
            lines.append(f" {mark} seat {number}: {name} ({stack}){mine}")
        name = self.seats.get(seat, ("?", 0))[0]
        if name == self.me:
            legal = f"to call {turn.number('call')}" if turn.number("call") else "check is free"
            if turn.number("max"):
                legal += f"; bet/raise to {turn.number('min')}..{turn.number('max')}"
            lines.append(f"your turn ({legal}; {turn.value('deadline')} s): f x c b N r N, or any command")
        self.print("\n".join(lines))

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def expand(line: str) -> str:
    """
    A terminal shortcut (C{c}, C{r 20}) as the command it stands for.
    """
    words = line.split()
    if words and words[0] in SHORTCUTS:
        return " ".join([SHORTCUTS[words[0]], *words[1:]])
    return line


async def play(reactor: Any, host: str, port: int, name: str | None, password: str | None,
               watch: str | None, tls: bool, cafile: str | None) -> int:
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    client = await PokerClient.connect(reactor, host, port, tls=tls, cafile=cafile)
    view = TableView()
    view.me = name
    client.onEvent = view.event
    if name:
        print((await client.login(name, password)).text)
    if watch:
        print((await client.watch(watch)).text)
    for line in await client.tables():
        print("table", line)

    class Keyboard(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            text = expand(line.decode("utf-8", "replace").strip())
            if not text:
                return
            d = client.command(text)

            def answered(reply: Any) -> None:
                for extra in reply.lines:
                    print(extra)
                print(f"{reply.code} {reply.text}")

            def refused(failure: Any) -> None:
                failure.trap(PokerError, ConnectionError)
                print(str(failure.value))

            d.addCallbacks(answered, refused)

        def connectionLost(self, reason: Any = None) -> None:
            client.disconnect()

    stdio.StandardIO(Keyboard())
    await client.protocol.closed
    return 0


def verifyPHH(path: str) -> int:
    """
    Check the commitment of every hand in a PHH file (one hand, or many as
    C{poker export} writes them); 1 if any fails.
    """
    from pokerkit import HandHistory

    with open(path) as f:
        text = f.read()
    hands = HandHistory.loads_all(text) if text.lstrip().startswith("[") else [HandHistory.loads(text)]
    bad = 0
    for hh in hands:
        fields = hh.user_defined_fields
        why = verify(fields.get("_commit", ""), fields.get("_deck", ""), fields.get("_secret", ""))
        label = f"{hh.table} hand {hh.hand}"
        if why is None:
            # pokerkit replays it: the file is a valid hand.
            for _ in hh:
                pass
            print(f"{label}: ok")
        else:
            bad += 1
            print(f"{label}: FAILED: {why}")
    return 1 if bad else 0


def export(db: str, table: str | None, out: str | None) -> int:
    from pokerkit import HandHistory

    from poker.store import exportHands

    hands = [HandHistory.loads(phh) for _, _, phh in exportHands(db, table)]
    text = HandHistory.dumps_all(hands)
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"{len(hands)} hands written to {out}")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poker", description="The poker terminal client and tools (docs/poker.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("play", help="play or watch at a terminal")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("--name")
    p.add_argument("--password")
    p.add_argument("--watch", metavar="TABLE")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cafile")
    v = sub.add_parser("verify", help="check a revealed shuffle against its commitment")
    v.add_argument("commit", nargs="?")
    v.add_argument("deck", nargs="?")
    v.add_argument("secret", nargs="?")
    v.add_argument("--phh", metavar="FILE", help="check every hand of a PHH file instead")
    e = sub.add_parser("export", help="write stored hands as PHH")
    e.add_argument("--db", required=True)
    e.add_argument("--table")
    e.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "verify":
        if args.phh:
            return verifyPHH(args.phh)
        if not (args.commit and args.deck and args.secret):
            parser.error("verify COMMIT DECK SECRET, or verify --phh FILE")
        why = verify(args.commit, args.deck, args.secret)
        print("ok: the deck and secret match the commitment" if why is None else f"FAILED: {why}")
        return 0 if why is None else 1
    if args.command == "export":
        return export(args.db, args.table, args.out)
    from twisted.internet import task

    from poker.bot import parseAddress

    try:
        host, port = parseAddress(args.address)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if args.cafile and not os.path.isfile(args.cafile):
        p.error(f"--cafile {args.cafile}: no such file")
    codes: list[int] = []

    async def run(reactor: Any) -> None:
        codes.append(await play(reactor, host, port, args.name, args.password, args.watch, args.tls, args.cafile))

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return codes[0] if codes else 1


if __name__ == "__main__":
    sys.exit(main())
