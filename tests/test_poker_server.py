"""
The poker server in memory (C{task.Clock}, C{StringTransport}): seats and
hands at a table, the action clock, reconnection, spectators, the bank,
table failures, the protocol's refusals and hand histories.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pokerkit import HandHistory
from zope.interface.verify import verifyObject

from poker import cli
from poker.interfaces import IBank, IListener
from poker.lobby import PokerServer
from poker.shuffle import verify
from poker.store import Bank, audit
from poker.table import TableConfig
from poker.tap import Options, parseTables
from poker.wire import PokerError, parseCommand
from tests.poker_support import Conn, fixedShuffler, memoryServer, stackedDeck, syncRun, turnOf

CARD = re.compile(r"\A[2-9TJQKA][cdhs]\Z")


def seatPlayers(server, clock, names, table="t1", buyIn=100):
    conns = {}
    for i, name in enumerate(names):
        c = Conn(server, clock)
        assert c.send(f"LOGIN {name}")[-1].startswith("230 ")
        assert c.send(f"SIT {table} {i + 1} {buyIn}")[-1].startswith("250 ")
        conns[name] = c
    return conns


def drain(conns):
    for c in conns.values():
        c.read()


def currentTurn(conns):
    """
    The latest TURN line any connection saw.
    """
    best = None
    for c in conns.values():
        c.read()
    for c in conns.values():
        line = c.last("TURN")
        if line is not None:
            best = line
    return turnOf(best) if best else None


def test_interfacesAreProvided():
    """The protocol provides IListener and the SQLite bank IBank, every declared method present."""
    server, clock = memoryServer()
    c = Conn(server, clock)
    assert verifyObject(IListener, c.protocol)
    assert verifyObject(IBank, server.bank)


def test_headsUpAtTheTable():
    """Heads-up at a table, the button posts the small blind and acts first before the flop; the button moves to the other player next hand."""
    server, clock = memoryServer()
    conns = seatPlayers(server, clock, ["ann", "bob"])
    clock.advance(1)
    lines = conns["bob"].read()
    assert "HAND t1 1 button=1" in " ".join(lines)
    assert "POST t1 1 1 BLIND" in lines and "POST t1 2 2 BLIND" in lines
    assert turnOf(conns["bob"].last("TURN"))["seat"] == 1
    assert conns["ann"].send("ACT FOLD")[-1] == "200 FOLD done"
    clock.advance(1)
    lines = conns["bob"].read()
    assert any(line.startswith("HAND t1 2 button=2") for line in lines)
    assert "POST t1 2 1 BLIND" in lines and "POST t1 1 2 BLIND" in lines


def test_actionClockChecksWhenFreeElseFolds():
    """When the clock runs out a player facing a bet is folded and a player with a free check checks."""
    server, clock = memoryServer([TableConfig("t1", handPause=1.0, actionTimeout=20.0)])
    conns = seatPlayers(server, clock, ["ann", "bob", "cat"])
    clock.advance(1)
    turn = currentTurn(conns)
    assert turn == {"seat": 1, "call": 2, "min": 4, "max": 100, "deadline": 20}
    clock.advance(19.9)
    assert conns["bob"].last("TIMEOUT") is None
    clock.advance(0.2)
    assert "TIMEOUT t1 1 FOLD" in conns["bob"].read()
    assert conns["bob"].send("ACT CALL")[-1] == "200 CALL done"
    assert currentTurn(conns)["call"] == 0
    clock.advance(20)
    assert "TIMEOUT t1 3 CHECK" in conns["cat"].read()


def test_reconnectMidHand():
    """A player who drops mid-hand is checked for while away, logs in again with the token, gets their cards and the board back, and acts."""
    server, clock = memoryServer()
    conns = seatPlayers(server, clock, ["ann", "bob", "cat"])
    bobToken = next(w.split("=")[1] for w in conns["bob"].seen[1].split() if w.startswith("token="))
    clock.advance(1)
    bobCards = conns["bob"].last("DEAL")
    assert bobCards is not None
    assert conns["ann"].send("ACT CALL")[-1].startswith("200")
    assert conns["bob"].send("ACT CALL")[-1].startswith("200")
    conns["bob"].drop()
    assert any(line.startswith("AWAY t1 2 bob") for line in conns["cat"].read())
    lines = conns["cat"].send("ACT CHECK")
    # Bob, first to act after the flop, is checked for at once.
    assert "TIMEOUT t1 2 CHECK" in lines
    assert turnOf([x for x in lines if x.startswith("TURN")][-1])["seat"] == 3
    back = Conn(server, clock)
    assert back.send("LOGIN bob")[-1].startswith("531 ")
    lines = back.send(f"LOGIN bob {bobToken}")
    assert "back at t1 seat 2" in lines[-1]
    assert bobCards in lines
    assert any(line.startswith("BOARD t1 ") for line in lines)
    assert any(line.startswith("TURN t1 3 ") for line in lines)
    conns["cat"].send("ACT CHECK")
    conns["ann"].send("ACT CHECK")
    assert turnOf(back.last("TURN"))["seat"] == 2
    assert back.send("ACT CHECK")[-1] == "200 CHECK done"


def test_graceOverCashesOut():
    """A player who does not come back within the grace period loses the seat when the hand ends and gets the stack back in the balance."""
    server, clock = memoryServer(grace=30.0)
    conns = seatPlayers(server, clock, ["ann", "bob"])
    clock.advance(1)
    conns["bob"].drop()
    # Bob was big blind; Ann folds to him.
    conns["ann"].send("ACT FOLD")
    clock.advance(30)
    assert "LEFT t1 2 bob 101" in conns["ann"].read()
    assert server.bank.balance("bob") == 1000 - 100 + 101
    assert "bob" not in server.sessions
    assert server.bank.held() == server.bank.minted


def playRandomly(server, clock, conns, hands, rng, check=None, table="t1"):
    """
    Play C{hands} hands at C{table}, each player acting at random when it
    is their turn (re-seated when busted); C{check} runs after each hand.
    """
    t = server.tables[table]
    target = t.handNumber + hands
    while t.handNumber < target or t.hand is not None:
        if t.hand is None:
            for i, (name, c) in enumerate(conns.items()):
                if server.sessions[name].seat is None:
                    assert c.send(f"SIT {table} {i + 1} 100")[-1].startswith("250 ")
            clock.advance(t.config.handPause)
            continue
        legal = t.hand.legal()
        seat = t.order[legal.player]
        r = rng.random()
        if r < 0.15 and legal.toCall:
            line = "ACT FOLD"
        elif r < 0.3 and legal.maxTo:
            verb = "RAISE" if legal.facingBet else "BET"
            line = f"ACT {verb} {rng.randint(legal.minTo, legal.maxTo) if rng.random() < 0.3 else legal.minTo}"
        else:
            line = "ACT CALL" if legal.toCall else "ACT CHECK"
        number = t.handNumber
        reply = conns[seat.name].send(line)[-1]
        assert reply.startswith("200 "), reply
        if t.handNumber != number or t.hand is None:
            if check is not None:
                check()


def test_spectatorNeverSeesHoleCards():
    """Over 40 hands a spectator gets no DEAL and no card outside the board and shown hands before the deck is revealed; each player gets only their own two cards."""
    server, clock = memoryServer()
    spectator = Conn(server, clock)
    assert spectator.send("WATCH t1")[-1] == "260 watching t1"
    conns = seatPlayers(server, clock, ["ann", "bob", "cat", "dan"])
    playRandomly(server, clock, conns, 40, random.Random(3))
    spectator.read()
    hands = 0
    for line in spectator.seen:
        words = line.split()
        if words[0] == "DEAL":
            pytest.fail(f"spectator got {line}")
        if words[0] in ("BOARD", "SHOW", "REVEAL"):
            continue
        assert not [w for w in words if CARD.match(w)], line
        hands += words[0] == "END"
    assert hands == 40
    for name, c in conns.items():
        for line in c.seen:
            if line.startswith("DEAL "):
                assert len(line.split()) == 4
    assert server.bank.held() == server.bank.minted


def test_chipsConservedOverTwoThousandHands():
    """2000 hands of random play at a six-seat table: after every hand the chips at the table and in the balances add up to what was ever granted."""
    server, clock = memoryServer([TableConfig("t1", seats=6, handPause=0.0)])
    conns = seatPlayers(server, clock, [f"p{i}" for i in range(6)])
    bank = server.bank
    checks = []

    def check():
        assert bank.held() == bank.minted
        checks.append(1)

    playRandomly(server, clock, conns, 2000, random.Random(5), check)
    assert len(checks) >= 2000
    assert bank.held() == bank.minted


def test_restartReturnsSeatsAndConservesChips(tmp_path):
    """A server that stops mid-hand leaves every seat's stack as of the last finished hand; the next start returns them to their owners, and no chip is made or lost."""
    path = str(tmp_path / "poker.sqlite")
    server, clock = memoryServer(path=path)
    conns = seatPlayers(server, clock, ["ann", "bob", "cat"])
    playRandomly(server, clock, conns, 5, random.Random(9))
    clock.advance(1)
    assert server.tables["t1"].hand is not None  # a hand in play
    table = server.tables["t1"]
    toAct = table.order[table.hand.legal().player].name
    assert conns[toAct].send("ACT CALL")[-1].startswith("200 ")
    # Seats' stacks are those the hand in play (if any) began with.
    stacks = {s.name: s.stack for s in table.seats if s is not None}
    balances = {n: server.bank.balance(n) for n in stacks}
    minted, held = audit(path)
    assert minted == held == 3000
    again = Bank(path, clock, run=syncRun, batch=False)
    assert again.restored == len(stacks) >= 2
    assert {n: again.balance(n) for n in stacks} == {n: balances[n] + stacks[n] for n in stacks}
    assert again.held() == again.minted == 3000
    # The hand numbers go on: no stored history is overwritten.
    restarted = PokerServer([TableConfig("t1")], again, clock, guests=True)
    assert restarted.tables["t1"].handNumber == server.tables["t1"].handNumber - 1


def test_tableFailureTouchesNoOtherTable():
    """An error inside one table's hand voids that hand and returns every stack; the other table plays on."""
    server, clock = memoryServer([TableConfig("t1", handPause=1.0), TableConfig("t2", handPause=1.0)])
    one = seatPlayers(server, clock, ["ann", "bob"], "t1")
    two = {}
    for i, name in enumerate(["cat", "dan"]):
        c = Conn(server, clock)
        c.send(f"LOGIN {name}")
        c.send(f"SIT t2 {i + 1} 100")
        two[name] = c
    clock.advance(1)
    broken = server.tables["t1"]

    def explode(*args):
        raise RuntimeError("boom")

    broken.hand.act = explode
    reply = one["ann"].send("ACT CALL")
    assert reply[-1].startswith("451 table t1 failed")
    assert any(line.startswith("CLOSED t1") for line in reply)
    assert server.bank.balance("ann") == 1000 and server.bank.balance("bob") == 1000
    assert server.sessions["ann"].seat is None
    # t2 was not touched: its player to act still acts.
    turn = currentTurn(two)
    assert turn["seat"] == 1
    assert two["cat"].send("ACT CALL")[-1] == "200 CALL done"
    # t1 is usable again.
    assert one["ann"].send("SIT t1 1 100")[-1].startswith("250 ")
    assert server.bank.held() == server.bank.minted


def test_refusalsSayWhatIsWrong():
    """Each refusal a player can cause gets its numbered reply saying what is wrong, and the connection goes on."""
    server, clock = memoryServer(checker=None)
    c = Conn(server, clock)
    assert c.send("SIT t1 1 100")[-1].startswith("503 log in first")
    assert c.send("FROB")[-1].startswith("500 unknown command FROB")
    assert c.send("LOGIN 9lives")[-1].startswith("501 bad name")
    c.send("LOGIN ann")
    assert c.send("SIT nowhere 1 100")[-1].startswith("443 no table nowhere")
    assert c.send("SIT t1 7 100")[-1].startswith("444 no seat 7")
    assert c.send("SIT t1 1 10")[-1] == "445 buy-in 10 out of range: 40 to 200"
    assert c.send("SIT t1 1 abc")[-1].startswith("501 buy-in must be a whole number")
    assert c.send("ACT CALL")[-1].startswith("447 you are not seated")
    assert c.send("ACT BET")[-1].startswith("501 BET takes an amount")
    assert c.send("ACT FOLD 3")[-1].startswith("501 FOLD takes no amount")
    assert c.send("SIT t1 1 100")[-1].startswith("250 ")
    assert c.send("SIT t1 2 100")[-1].startswith("448 you sit at t1 seat 1")
    other = Conn(server, clock)
    other.send("LOGIN bob")
    assert other.send("SIT t1 1 100")[-1].startswith("444 seat 1 is taken; free: 2 3 4 5 6")
    other.send("SIT t1 2 100")
    clock.advance(1)
    assert other.send("ACT CALL")[-1] == "440 not your turn: seat 1 is to act"
    assert c.send("ACT CHECK")[-1] == "441 cannot CHECK: 1 to call; legal: FOLD, CALL 1, RAISE 4..100"
    assert c.send("ACT RAISE 1000")[-1].startswith("442 RAISE 1000 out of range")
    assert c.send("x" * 300)[-1].startswith("500 line too long")
    assert c.send("PING")[-1] == "200 PONG -"


def test_accountsNeedTheirPassword():
    """On an accounts server a name that is an account needs its password; a guests-off server refuses other names."""
    from coursenet.accounts import PasswordChecker

    server, clock = memoryServer(guests=False)
    server.checker = PasswordChecker(users=[("alice", "secret")], reactor=clock)
    c = Conn(server, clock)
    assert c.send("LOGIN alice")[-1].startswith("530 alice is an account")
    assert c.send("LOGIN mallory")[-1].startswith("530 no account mallory")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parserFuzz(data):
    """Any bytes give a command or a PokerError with a 5xx code, never another exception."""
    try:
        command = parseCommand(data)
    except PokerError as e:
        assert 500 <= e.code < 600
    else:
        assert command.verb.isupper()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=80).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=10))
def test_protocolAnswersEveryLine(lines):
    """Whatever lines a client sends, each gets exactly one final numbered reply and every line sent back is a reply or an event."""
    server, clock = memoryServer()
    c = Conn(server, clock)
    c.read()
    c.protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))
    out = c.read()
    finals = [x for x in out if re.match(r"\d{3} ", x)]
    assert len(finals) == len(lines)
    for x in out:
        assert re.match(r"\d{3}[ -]", x) or re.match(r"[A-Z]+ ", x), x


def test_historyIsPHHThatPokerkitReplays(tmp_path, capsys):
    """HISTORY gives a finished hand in PHH that pokerkit replays to the announced stacks, with the shuffle's commitment and reveal; poker export and poker verify --phh read the stored hands."""
    path = str(tmp_path / "poker.sqlite")
    deck = stackedDeck(["AsAc", "KsKc", "2h7d"], "3c8d9hJsQd")
    server, clock = memoryServer(path=path)
    server.tables["t1"].shuffler = fixedShuffler(deck)
    conns = seatPlayers(server, clock, ["ann", "bob", "cat"])
    clock.advance(1)
    hand = conns["ann"].last("HAND")
    assert conns["ann"].send("HISTORY t1 1")[-1].startswith("452 hand 1 at t1 is not over yet")
    conns["ann"].send("ACT CALL")
    conns["bob"].send("ACT CALL")
    conns["cat"].send("ACT CHECK")
    for _ in range(3):
        for name in ("bob", "cat", "ann"):
            conns[name].send("ACT CHECK")
    assert conns["ann"].last("POTS") == "POTS t1 6:2,3,1"
    stacks = conns["ann"].last("STACKS")
    assert stacks == "STACKS t1 1:98 2:104 3:98"  # bob, small blind, was dealt the aces
    reveal = conns["ann"].last("REVEAL").split()
    commit = hand.split("commit=")[1]
    assert verify(commit, reveal[3].split("=")[1], reveal[4].split("=")[1]) is None
    lines = conns["ann"].send("HISTORY t1 1")
    assert lines[-1] == "270 end of hand 1 at t1 (PHH)"
    text = "\n".join(x[4:] for x in lines[:-1])
    hh = HandHistory.loads(text)
    *_, final = list(hh)
    assert list(final.stacks) == [104, 98, 98]  # pokerkit order: small blind, big blind, button
    assert hh.user_defined_fields["_commit"] == commit
    assert hh.players == ["bob", "cat", "ann"]
    out = tmp_path / "hands.phhs"
    assert cli.main(["export", "--db", path, "--out", str(out)]) == 0
    assert cli.main(["verify", "--phh", str(out)]) == 0
    assert "t1 hand 1: ok" in capsys.readouterr().out
    assert cli.main(["verify", commit, reveal[3].split("=")[1], "11" * 32]) == 1


def test_tablesFileAndOptions(tmp_path):
    """The tables file sets seats, blinds, ante, buy-in, clock and pause; mistakes are refused naming the table; no --tables gives the two demo tables."""
    configs = parseTables("[high]\nseats = 9\nblinds = 5/10\nante = 1\nbuyin = 200..1000\nclock = 15\n")
    assert configs == [TableConfig("high", 9, 5, 10, 1, 200, 1000, 15.0, 2.0)]
    with pytest.raises(ValueError, match="table x: seats must be 2 to 9"):
        parseTables("[x]\nseats = 12\n")
    with pytest.raises(ValueError, match="table y: unknown setting colour"):
        parseTables("[y]\ncolour = red\n")
    options = Options()
    options.parseOptions(["--guests", "--db", str(tmp_path / "db")])
    assert [c.name for c in options["table-configs"]] == ["demo1", "demo2"]
    with pytest.raises(Exception, match="nobody could play"):
        Options().parseOptions(["--db", str(tmp_path / "db")])


def test_terminalViewDrawsTheTable():
    """The terminal client's view shows the board, the pots, every seat with its stack, your cards and what you may do when it is your turn; shortcuts expand to commands."""
    import io

    from poker.client import parseEvent

    out = io.StringIO()
    view = cli.TableView(out)
    view.me = "ann"
    for line in [
        "HAND t1 3 button=1 commit=ab",
        "SEATS t1 2:bob:98 1:ann:100",
        "DEAL t1 Ah Kd",
        "BOARD t1 2c 7d 9h",
        "POTS t1 6:2,1",
        "TURN t1 1 call=4 min=8 max=100 deadline=30",
    ]:
        view.event(parseEvent(line))
    text = out.getvalue()
    assert "board: 2c 7d 9h   pots: 6:2,1" in text
    assert "-> seat 1: ann (100)  Ah Kd" in text and "   seat 2: bob (98)" in text
    assert "your turn (to call 4; bet/raise to 8..100; 30 s)" in text
    assert cli.expand("r 20") == "ACT RAISE 20" and cli.expand("c") == "ACT CALL" and cli.expand("TABLES") == "TABLES"


@pytest.mark.parametrize("strategy", ["random", "call", "tight"])
def test_botStrategiesChooseLegalActions(strategy):
    """Every bot strategy only ever chooses an action its TURN line allows."""
    from poker.bot import Bot, Stats

    rng = random.Random(strategy)
    bot = Bot.__new__(Bot)
    bot.strategy, bot.rng, bot.stats = strategy, rng, Stats(1)
    for _ in range(2000):
        cards = rng.sample([r + s for r in "23456789TJQKA" for s in "cdhs"], 7)
        bot.holes, bot.board = cards[:2], cards[2 : 2 + rng.choice([0, 3, 4, 5])]
        call = rng.choice([0, 0, 1, 2, 10, 50])
        low = rng.choice([0, 2, 4, 20])
        high = 0 if low == 0 else rng.randint(low, 200)
        verb, amount = bot.choose(call, low, high)
        if verb in ("BET", "RAISE"):
            assert high and low <= amount <= high
            assert verb == ("RAISE" if call or not bot.board else "BET")
        elif verb == "CHECK":
            assert call == 0
        elif verb == "CALL":
            assert call > 0
        else:
            assert verb == "FOLD" and amount is None
