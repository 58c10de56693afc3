"""
The chat server through the course protocol, in memory: StringTransports
and a Clock, no sockets.  Rooms, nicknames, events, history and every
limit.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from chat.session import Limits
from chat.wire import MAX_LINE
from coursenet.accounts import PasswordChecker
from tests.chat_support import World, codes


@pytest.fixture
def world():
    return World()


def test_greeting_names_version_and_limits(world):
    """A new connection is greeted with 220, the protocol version and the limits."""
    (line,) = world.connect().lines()
    assert line.startswith("220 CHAT/1 ") and f"max-line={MAX_LINE}" in line


def test_commands_before_nick_are_refused(world):
    """JOIN or SAY before NICK get 503 and the connection stays usable."""
    peer = world.connect()
    peer.lines()
    peer.send("JOIN lab")
    peer.send("SAY lab hi")
    peer.send("NICK ada")
    assert codes(peer.lines()) == [503, 503, 230]


def test_nick_collision_is_case_insensitive(world):
    """A second user cannot take a nickname that differs only in case."""
    world.user("Ada")
    eve = world.connect()
    eve.lines()
    eve.send("NICK aDA")
    eve.send("NICK eve")
    lines = eve.lines()
    assert codes(lines) == [433, 230]
    assert "in use" in lines[0]


def test_say_reaches_the_room_but_not_the_sender(world):
    """SAY is delivered once to every other member and confirmed with 200 to the sender."""
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    cy = world.user("cy", "other")
    ada.lines()
    ada.send("SAY lab hello there")
    assert ada.lines() == ["200 said in lab"]
    assert bob.lines() == ["MESSAGE lab ada hello there"]
    assert cy.lines() == []


def test_presence_events(world):
    """Members see JOIN, PART, NICK, TOPIC and QUIT of the others."""
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    assert ada.lines() == ["JOIN lab bob"]
    bob.send("TOPIC lab sockets today")
    bob.send("NICK robert")
    bob.send("PART lab lunch")
    bob.send("JOIN lab")
    bob.send("QUIT see you")
    bob.lose()
    assert ada.lines() == [
        "TOPIC lab bob sockets today",
        "NICK bob robert",
        "PART lab robert lunch",
        "JOIN lab robert",
        "QUIT robert see you",
    ]
    ada.send("WHO lab")
    assert ada.lines() == ["211-@ada", "211 1 in lab"]


def test_private_message_and_unknown_nick(world):
    """MSG reaches only its target; an unknown nick is a 540."""
    ada = world.user("ada")
    bob = world.user("bob")
    ada.send("MSG BOB psst")
    ada.send("MSG nobody hi")
    assert codes(ada.lines()) == [200, 540]
    assert bob.lines() == ["PRIVATE ada psst"]


def test_say_outside_room_and_errors_keep_connection(world):
    """SAY to a room one is not in is 542 with a hint (the room takes no messages from outside, +n); bad names are 553; usage errors 501."""
    world.user("bob", "lab")
    ada = world.user("ada")
    ada.send("SAY lab hi")
    ada.send("JOIN b@d")
    ada.send("SAY")
    ada.send("FROB")
    lines = ada.lines()
    assert codes(lines) == [542, 553, 501, 500]
    assert "JOIN lab first" in lines[0]
    assert ada.proto.session.online and not ada.transport.disconnecting


def test_list_and_topic(world):
    """LIST shows rooms with member counts and topics; TOPIC alone reads it."""
    ada = world.user("ada", "lab", "cafe")
    ada.send("TOPIC lab TCP and UDP")
    ada.send("TOPIC lab")
    ada.send("LIST")
    assert ada.lines() == [
        "200 topic of lab set",
        "212 lab TCP and UDP",
        "210-cafe 1",
        "210-lab 1 TCP and UDP",
        "210 2 rooms",
    ]


def test_history_replayed_on_join():
    """Whoever joins gets the room's last messages, oldest first, before the 250."""
    world = World(historySize=2)
    ada = world.user("ada", "lab")
    for n in range(3):
        ada.send(f"SAY lab message {n}")
    bob = world.user("bob")
    bob.send("JOIN lab")
    lines = bob.lines()
    assert [line.split(" ", 3)[3] for line in lines[:2]] == ["ada message 1", "ada message 2"]
    assert lines[0].startswith("HISTORY lab ") and lines[2].startswith("250 lab joined")


def test_overlong_line_is_refused_and_rest_processed(world):
    """A line over MAX_LINE gets a 500 saying the limit; the lines after it still run."""
    ada = world.user("ada")
    ada.proto.dataReceived(b"SAY lab " + b"x" * 2000 + b"\r\nPING a\r\n")
    world.clock.advance(0)
    lines = ada.lines()
    assert codes(lines) == [500, 200]
    assert f"limit is {MAX_LINE}" in lines[0]


def test_overlong_line_in_pieces(world):
    """An overlong line sent in pieces is refused once, then ignored up to its end."""
    ada = world.user("ada")
    for _ in range(5):
        ada.proto.dataReceived(b"y" * 400)
    ada.proto.dataReceived(b"yy\r\nPING b\r\n")
    world.clock.advance(0)
    assert codes(ada.lines()) == [500, 200]


def test_invalid_utf8_is_refused(world):
    """Invalid UTF-8 is a 500 and the connection stays."""
    ada = world.user("ada", "lab")
    ada.send(b"SAY lab \xc3\x28")
    ada.send("SAY lab ok")
    assert codes(ada.lines()) == [500, 200]


def test_message_too_long(world):
    """Text over 400 bytes in a line under 512 is a 552 that says the limit."""
    ada = world.user("ada", "lab")
    ada.send("SAY lab " + "z" * 450)
    (line,) = ada.lines()
    assert line.startswith("552 ") and "400" in line


def test_flood_control_delays_lines_instead_of_dropping_them():
    """Past the burst, lines wait for their token (none is refused or lost) and run in order as time passes."""
    world = World(limits=Limits(floodRate=2, floodBurst=3))
    ada = world.user("ada")  # NICK took one token
    for n in range(6):
        ada.send(f"PING t{n}")
    assert ada.lines() == ["200 PONG t0", "200 PONG t1"]
    world.clock.advance(0.5)
    assert ada.lines() == ["200 PONG t2"]
    world.clock.advance(1.5)
    assert ada.lines() == ["200 PONG t3", "200 PONG t4", "200 PONG t5"]


def test_fifty_pasted_lines_are_all_delivered_paced():
    """A paste of 50 lines at the default limits reaches the room whole and in order, the last ones paced at 10 a second."""
    world = World(limits=Limits())
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    ada.proto.dataReceived(b"".join(f"SAY lab line {n:02d}\r\n".encode() for n in range(50)))
    early = [line for line in bob.lines() if line.startswith("MESSAGE")]
    assert 15 <= len(early) < 25  # the burst, less what NICK and JOIN took
    for _ in range(40):
        world.clock.advance(0.1)
    said = early + [line for line in bob.lines() if line.startswith("MESSAGE")]
    assert said == [f"MESSAGE lab ada line {n:02d}" for n in range(50)]


def test_connection_behind_its_flood_limit_for_too_long_is_cut():
    """A client that keeps its lines waiting past --flood-cut seconds gets 421 and is disconnected."""
    world = World(limits=Limits(floodRate=1, floodBurst=2, floodCut=5))
    ada = world.user("ada")
    for _ in range(10):
        ada.send("PING x")
        world.clock.advance(0.5)
    lines = ada.lines()
    assert any(line.startswith("421 flood: more than 1 lines a second for 5 seconds") for line in lines)
    assert ada.transport.disconnecting


def test_idle_ping_then_timeout():
    """Silence brings a PING; a PONG keeps the connection; silence after a PING closes it with 421."""
    world = World(limits=Limits(floodRate=0, idleTimeout=10, pingTimeout=5))
    ada = world.user("ada")
    world.clock.advance(10)
    (ping,) = ada.lines()
    assert ping.startswith("PING ")
    ada.send("PONG " + ping.split()[1])
    world.clock.advance(9)
    assert ada.lines() == [] and not ada.transport.disconnecting
    world.clock.advance(1)
    assert ada.lines()[0].startswith("PING ")
    world.clock.advance(5)
    lines = ada.lines()
    assert codes(lines) == [421] and "PING" in lines[0]
    assert ada.transport.disconnecting


def test_slow_consumer_is_cut_off_and_others_served():
    """A member whose transport is full is cut off past max-output; the others still get every message."""
    world = World(limits=Limits(floodRate=0, maxOutput=1000))
    ada = world.user("ada", "lab")
    slow = world.user("slow", "lab")
    bob = world.user("bob", "lab")
    ada.lines()
    slow.transport.producer.pauseProducing()  # what a full socket buffer does
    for n in range(30):
        ada.send(f"SAY lab {n:02d} " + "m" * 60)
    assert slow.transport.disconnected  # aborted, not closed politely
    assert slow.proto.session.online is False  # and out of the rooms at once
    lines = bob.lines()
    assert [line[16:18] for line in lines if line.startswith("MESSAGE")] == [f"{n:02d}" for n in range(30)]
    assert "QUIT slow cut off: not reading" in lines
    ada.send("WHO lab")
    assert ada.lines()[-3:] == ["211-@ada", "211-bob", "211 2 in lab"]


def test_slow_consumer_recovers_when_drained():
    """A transport that drains resets the count: a slow but reading client stays."""
    world = World(limits=Limits(floodRate=0, maxOutput=1000))
    ada = world.user("ada", "lab")
    slow = world.user("slow", "lab")
    for _ in range(5):
        slow.transport.producer.pauseProducing()
        for n in range(8):
            ada.send("SAY lab " + "m" * 60)
        slow.transport.producer.resumeProducing()
    assert slow.proto.session.online and not slow.transport.disconnecting


def test_quit_releases_nick_and_logs(world):
    """QUIT answers 221, frees the nickname and logs the departure."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        ada = world.user("ada")
        ada.send("QUIT bye")
        assert codes(ada.lines()) == [221]
        ada.lose()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any(formatEvent(e).endswith(" [ada] left: bye") for e in observer), [formatEvent(e) for e in observer]
    world.user("ada").send("PING x")


def test_server_full():
    """Past max-connections a newcomer gets 421 and is closed."""
    world = World(maxConnections=1)
    world.connect()
    late = world.connect()
    lines = late.lines()
    assert codes(lines) == [421] and "full" in lines[0]
    assert late.transport.disconnecting


def test_rooms_per_user_limit():
    """Joining more rooms than allowed is a 450 that says to PART one."""
    world = World(maxRoomsPerUser=2)
    ada = world.user("ada", "a", "b")
    ada.send("JOIN c")
    (line,) = ada.lines()
    assert line.startswith("450 ") and "PART" in line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=700), max_size=8))
def test_fuzz_server_survives_anything(chunks):
    """Arbitrary bytes never crash the server: every output line is a bounded reply or event."""
    world = World()
    peer = world.connect()
    peer.send("NICK fuzz")
    peer.send("JOIN lab")
    for chunk in chunks:
        peer.proto.dataReceived(chunk)
    world.clock.advance(1)
    data = peer.transport.value()
    for line in data.split(b"\r\n")[:-1]:
        assert len(line) <= MAX_LINE
        assert line[:1].isdigit() or line.split(b" ")[0] in (b"MESSAGE", b"HISTORY", b"PING", b"PRIVATE")


@pytest_twisted.ensureDeferred
async def test_registered_nick_needs_password(reactor):
    """A nickname that is an account needs its password (any case); others stay anonymous."""
    checker = PasswordChecker(users=[("Demo", "secret")], reactor=reactor)
    world = World(checker=checker)
    peer = world.connect()
    peer.lines()
    await world.server.register(peer.proto.session, "ada")
    for args, code in [("demo", 530), ("DEMO wrong", 530), ("demo secret", 230)]:
        peer.send(f"NICK {args}")
        while peer.proto.readingPaused:
            await deferLater(reactor, 0.01)
        assert codes(peer.lines()) == [code]


@pytest_twisted.ensureDeferred
async def test_accounts_only(reactor):
    """With anonymous nicknames off, a nickname that is not an account is a 531."""
    checker = PasswordChecker(users=[("demo", "secret")], reactor=reactor)
    world = World(checker=checker, anonymous=False)
    peer = world.connect()
    peer.lines()
    peer.send("NICK ada")
    assert codes(peer.lines()) == [531]

