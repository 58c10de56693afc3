"""
Chat output coalesced per reactor turn (docs/chat.md, section 7): a room's
events and everything else written to a member in one turn reach it as one
write, in order, and the back-pressure rules still hold.  In memory, on a
Clock: the end of a turn is C{clock.advance(0)}.
"""

from __future__ import annotations

from chat.session import Limits
from coursenet.receiver import COALESCE_LIMIT, Outbox
from tests.chat_support import World, codes


def countWrites(peer) -> list[bytes]:
    """
    The writes made to C{peer}'s transport from now on, each as it was made.
    """
    writes: list[bytes] = []
    write = peer.transport.write

    def counting(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    peer.transport.write = counting
    return writes


def test_twenty_messages_in_one_segment_reach_each_member_as_one_write_in_order():
    """Twenty SAYs arriving in one read reach each other member, on either door, as one write, in order."""
    world = World()
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    irc = world.connect(irc=True)
    irc.send("NICK carol")
    irc.send("USER carol 0 * :Carol")
    irc.send("JOIN #lab")
    irc.lines()
    bobWrites, ircWrites = countWrites(bob), countWrites(irc)
    ada.proto.dataReceived(b"".join(b"SAY lab m%02d\r\n" % n for n in range(20)))
    assert bobWrites == [] and ircWrites == []  # nothing before the turn ends
    bob.endTurn()
    assert len(bobWrites) == 1 and len(ircWrites) == 1
    assert bobWrites[0].decode().split("\r\n")[:-1] == [f"MESSAGE lab ada m{n:02d}" for n in range(20)]
    said = [line.rsplit(" ", 1)[-1] for line in ircWrites[0].decode().split("\r\n")[:-1]]
    assert said == [f":m{n:02d}" for n in range(20)]
    assert codes(ada.lines()) == [200] * 20


def test_replies_and_room_events_keep_each_members_order():
    """Within one turn a sender's replies and the others' messages reach it in the order they happened."""
    world = World()
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    ada.lines()
    ada.send("SAY lab one")
    bob.send("SAY lab two")
    ada.send("SAY lab three")
    ada.send("MSG bob psst")
    bob.send("SAY lab four")
    assert ada.lines() == [
        "200 said in lab",
        "MESSAGE lab bob two",
        "200 said in lab",
        "200 sent to bob",
        "MESSAGE lab bob four",
    ]
    assert bob.lines() == [
        "MESSAGE lab ada one",
        "200 said in lab",
        "MESSAGE lab ada three",
        "PRIVATE ada psst",
        "200 said in lab",
    ]


def test_a_member_in_two_busy_rooms_gets_both_in_order():
    """Events of two rooms said in one turn reach a member of both in the order they were said."""
    world = World()
    ada = world.user("ada", "one", "two")
    bob = world.user("bob", "one", "two")
    for n in range(4):
        ada.send(f"SAY {'one' if n % 2 else 'two'} m{n}")
    assert bob.lines() == ["MESSAGE two ada m0", "MESSAGE one ada m1", "MESSAGE two ada m2", "MESSAGE one ada m3"]


def test_members_who_join_or_leave_mid_turn_get_exactly_their_share():
    """A member who joins mid-turn gets only what was said after; one who leaves, only what was said before."""
    world = World()
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    carol = world.user("carol")
    ada.send("SAY lab before")
    carol.send("JOIN lab")
    bob.send("PART lab")
    ada.send("SAY lab after")
    assert [line for line in bob.lines() if line.startswith(("MESSAGE", "JOIN"))] == [
        "MESSAGE lab ada before",
        "JOIN lab carol",
    ]
    lines = carol.lines()
    assert "MESSAGE lab ada after" in lines and "MESSAGE lab ada before" not in lines
    assert lines.index("PART lab bob ") < lines.index("MESSAGE lab ada after")


def test_quit_sends_what_the_turn_held_before_closing():
    """A member who quits in the turn a room message reached it gets that message, then its bye, before the close."""
    world = World()
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    ada.send("SAY lab last words")
    bob.send("QUIT going")
    assert bob.transport.disconnecting
    assert bob.transport.value().decode().split("\r\n")[:-1] == ["MESSAGE lab ada last words", "221 bye"]


def test_a_full_member_is_still_cut_off_as_its_bytes_are_written():
    """A member whose transport is full is cut off in the turn, at the write that passes max-output, and gets nothing after."""
    world = World(limits=Limits(floodRate=0, maxOutput=1000))
    ada = world.user("ada", "lab")
    slow = world.user("slow", "lab")
    bob = world.user("bob", "lab")
    slow.transport.producer.pauseProducing()  # what a full socket buffer does
    before = len(slow.transport.value())
    said = 0
    while not slow.transport.disconnected:
        ada.send(f"SAY lab {said:02d} " + "m" * 60)
        said += 1
    # 78 bytes a line: the 13th passes 1000 bytes waiting, and is not written.
    assert said == 13
    assert len(slow.transport.value()) - before == 12 * len("MESSAGE lab ada 00 " + "m" * 60 + "\r\n")
    ada.send("SAY lab later")
    slow.endTurn()
    assert len(slow.transport.value()) - before == 12 * len("MESSAGE lab ada 00 " + "m" * 60 + "\r\n")
    assert "QUIT slow cut off: not reading" in bob.lines()


def test_a_member_cut_off_mid_turn_gets_nothing_held_for_it():
    """A member cut off while a room's turn holds output for it gets none of it."""
    world = World(limits=Limits(floodRate=0, maxOutput=10))
    ada = world.user("ada", "lab")
    slow = world.user("slow", "lab")
    ada.send("SAY lab held")  # held for slow until the turn ends
    outbox = slow.proto.transport
    assert isinstance(outbox, Outbox)
    outbox.cutOffNow("test: not reading")
    slow.endTurn()
    assert b"held" not in slow.transport.value()
    assert slow.transport.disconnected


def test_a_turn_over_the_coalescing_limit_is_written_before_the_turn_ends():
    """Output past COALESCE_LIMIT bytes in one turn goes to the transport at once, not held to the end of the turn."""
    world = World()
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    writes = countWrites(ada)
    for n in range(COALESCE_LIMIT // 40 + 10):
        ada.send("PING " + "t" * 30)  # answered with about 40 bytes each
    assert writes and sum(len(w) for w in writes) >= COALESCE_LIMIT
    assert bob.lines() == []


def test_nothing_is_held_past_the_end_of_the_turn():
    """After one turn ends, every member has everything said in it and no call is left pending for output."""
    world = World()
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    ada.send("SAY lab hi")
    world.clock.advance(0)
    assert bob.transport.value() == b"MESSAGE lab ada hi\r\n"
    assert [c for c in world.clock.getDelayedCalls() if c.getTime() <= world.clock.seconds()] == []


def test_per_connection_objects_keep_nothing_in_an_instance_dict():
    """A registered connection's protocol (both doors) puts nothing in an instance dict; its Session has none."""
    world = World()
    ada = world.user("ada", "lab")
    irc = world.connect(irc=True)
    irc.send("NICK bob")
    irc.send("USER bob 0 * :Bob")
    irc.send("JOIN #lab")
    irc.send("PRIVMSG #lab :hi")
    ada.send("SAY lab hello")
    assert irc.lines() and ada.lines()
    for peer in (ada, irc):
        assert vars(peer.proto) == {}
        assert not hasattr(peer.proto.session, "__dict__")


def test_idle_connections_share_one_timer():
    """Many idle connections schedule one call for their PINGs, not one each; each is still PINGed on time."""
    world = World(limits=Limits(floodRate=0, idleTimeout=10, pingTimeout=5))
    peers = [world.user(f"u{n}") for n in range(50)]
    assert len(world.clock.getDelayedCalls()) == 1
    world.clock.advance(10)
    assert all(peer.lines()[0].startswith("PING ") for peer in peers)


def test_write_state_is_set_on_each_tcp_connection_at_once():
    """Twisted still defaults dataBuffer/offset on the class; sharedAttributeLayout sets them on the instance."""
    from twisted.internet import abstract, tcp

    from coursenet._compat import TCP_WRITE_STATE, sharedAttributeLayout

    for name in TCP_WRITE_STATE:
        assert name in vars(abstract.FileDescriptor)
    connection = tcp.Connection.__new__(tcp.Server)
    sharedAttributeLayout(connection)
    assert set(TCP_WRITE_STATE) <= set(vars(connection))


def test_bus_subscriber_hands_over_every_message_of_a_read_in_that_turn():
    """The Redis subscriber passes on all pub/sub messages of one read at once, in order (not one per turn)."""
    from twisted.internet.testing import StringTransport

    from chat.bus import _Subscriber

    received: list = []
    subscriber = _Subscriber()
    subscriber.factory = type("F", (), {})()
    subscriber.factory.bus = type("Bus", (), {"_received": staticmethod(received.append)})()
    subscriber.transport = StringTransport()

    def message(text: bytes) -> bytes:
        return b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$%d\r\n%s\r\n" % (len(text), text)

    subscriber.dataReceived(message(b"one") + message(b"two") + message(b"three")[:20])
    assert received == ["one", "two"]
    subscriber.dataReceived(message(b"three")[20:])
    assert received == ["one", "two", "three"]
