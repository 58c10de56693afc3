"""
The limits both chat front doors share, in memory: admission (one cap for
both doors, the busy reply of each), the flood limit with PONG counted,
output to a client that does not read, and logs that a stranger cannot
make grow line by line.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from chat.session import Limits
from tests.chat_support import World, codes
from tests.test_chat_irc import ircUser

DOORS = pytest.mark.parametrize("irc", [False, True], ids=["course", "irc"])


@pytest.fixture
def logged():
    """Every log event while the test runs."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def isBusyReply(line: str, irc: bool) -> bool:
    return line.startswith("ERROR :Closing Link: " if irc else "421 ")


@DOORS
def test_refused_connection_that_talks_then_goes(irc, logged):
    """A connection refused as full that sends a line and is then lost raises nothing and logs no error."""
    world = World(maxConnections=1)
    world.connect()
    late = world.connect(irc=irc)
    late.send("NICK late")
    late.lose()
    assert [e for e in logged if "log_failure" in e] == []
    (reply,) = late.lines()
    assert isBusyReply(reply, irc) and "full" in reply
    assert late.transport.disconnecting


@DOORS
def test_both_doors_share_one_cap(irc):
    """One course and one IRC connection fill a cap of two: a third, on either door, is refused until one leaves."""
    world = World(maxConnections=2)
    first = world.connect()
    world.connect(irc=True)
    late = world.connect(irc=irc)
    (reply,) = late.lines()
    assert isBusyReply(reply, irc) and "server full (2 connections)" in reply
    first.lose()
    again = world.connect(irc=irc)
    assert not again.transport.disconnecting
    assert world.server.admission.connections == 2


def test_per_address_cap_across_doors():
    """Connections from one address are capped whichever door they use, with a reply that names the address."""
    world = World(maxPerAddress=1)
    world.connect(irc=True)
    late = world.connect()
    (reply,) = late.lines()
    assert reply.startswith("421 too many connections from 127.0.0.1 (limit 1)")


@DOORS
def test_pong_counts_against_the_flood_limit(irc):
    """PONG lines take tokens like any other, on both doors: past the burst the next command waits for its turn."""
    world = World(limits=Limits(floodRate=2, floodBurst=5))
    peer = ircUser(world, "ircy") if irc else world.user("ada")  # IRC: NICK and USER, course: NICK
    for _ in range(4 if irc else 5):
        peer.send("PONG :x" if irc else "PONG x")
    peer.send("PING :y" if irc else "PING y")
    world.clock.advance(0.5)
    assert peer.lines() == []  # the last PONG ran; the PING waits its own turn
    world.clock.advance(0.5)
    (pong,) = peer.lines()
    assert pong == (":coursenet.chat PONG coursenet.chat :y" if irc else "200 PONG y")


@DOORS
def test_overlong_lines_count_against_the_flood_limit(irc):
    """An overlong line takes a token: past the burst, the line after it waits."""
    world = World(limits=Limits(floodRate=1, floodBurst=4))
    peer = ircUser(world, "ircy") if irc else world.user("ada")
    for _ in range(4):
        peer.proto.dataReceived(b"x" * 6000 + b"\r\n")
    peer.send("PING :y" if irc else "PING y")
    lines = peer.lines()
    assert len([line for line in lines if " 417 " in line or line.startswith("500 line too long")]) == 4
    assert not any("PONG" in line for line in lines)
    world.clock.advance(3)
    assert "PONG" in peer.lines()[0]


@DOORS
def test_client_that_never_drains_is_cut_off_after_the_drain_timeout(irc):
    """A member whose output stays full for drain-timeout seconds is aborted and leaves its rooms at once."""
    world = World(limits=Limits(floodRate=0, drainTimeout=5))
    watcher = world.user("watcher", "lab")
    stuck = ircUser(world, "stuck") if irc else world.user("stuck")
    stuck.send("JOIN #lab" if irc else "JOIN lab")
    watcher.lines()
    stuck.transport.producer.pauseProducing()  # what a full socket buffer does
    world.clock.advance(4.9)
    assert not stuck.transport.disconnected
    world.clock.advance(0.1)
    assert stuck.transport.disconnected and not stuck.proto.session.online
    assert watcher.lines() == ["QUIT stuck cut off: not reading"]


def test_reading_client_is_not_cut_by_a_long_conversation():
    """A client whose buffer fills and drains again and again, however long, stays: the drain timeout counts from the last drain."""
    world = World(limits=Limits(floodRate=0, maxOutput=10_000, drainTimeout=5))
    ada = world.user("ada", "lab")
    reader = world.user("reader", "lab")
    for _ in range(10):
        reader.transport.producer.pauseProducing()
        ada.send("SAY lab " + "m" * 300)
        world.clock.advance(4)
        reader.transport.producer.resumeProducing()
    assert reader.proto.session.online and not reader.transport.disconnecting


@DOORS
def test_unregistered_lines_log_nothing(irc, logged):
    """However many lines a client sends before it has a nickname (bad, overlong, refused, flooding), nothing is logged at info or above."""
    world = World(limits=Limits(floodRate=5, floodBurst=10))
    peer = world.connect(irc=irc)
    for n in range(100):
        peer.send(["FROB", "JOIN lab", "SAY lab hi", b"\xff\xfe", "x" * 600, "PONG z", "LIST"][n % 7])
        world.clock.advance(0.05)
    for _ in range(300):
        world.clock.advance(0.1)
    lines = peer.lines()
    assert len(lines) > 85
    assert [e["log_format"] for e in logged if e["log_level"] >= LogLevel.info] == []


def test_a_line_waiting_for_the_flood_limit_goes_with_its_client():
    """A client that leaves while a line waits for its token leaves nothing scheduled, and the line is not run."""
    world = World(limits=Limits(floodRate=1, floodBurst=2))
    ada = world.user("ada", "lab")  # NICK and JOIN took the burst
    bob = world.user("bob", "lab")
    ada.send("SAY lab late")

    def soon():
        return [call for call in world.clock.getDelayedCalls() if call.active() and call.getTime() <= 2]

    assert len(soon()) == 1  # the line's turn
    ada.lose()
    bob.endTurn()  # bob's QUIT line is flushed at the end of the turn
    assert soon() == []
    world.clock.advance(5)
    assert "MESSAGE lab ada late" not in bob.lines()
