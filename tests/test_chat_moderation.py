"""
Channel moderation, one set of rules for both doors: what an operator
does through one door, the users of the other door see.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from chat.moderation import Ban, Change, RoomSettings, maskMatches, normalizeMask, parseModeChanges
from chat.rooms import ChatServer
from chat.store import SQLiteHistory
from tests.chat_support import World, codes
from tests.test_chat_irc import ircUser


def test_instructor_on_course_door_moderates_and_irc_users_see_it():
    """From the course door an instructor makes a room moderated, voices two students, kicks and bans a third by mask; IRC users see each effect."""
    world = World(instructors=["prof"])
    ann = ircUser(world, "ann")
    ben = ircUser(world, "ben")
    cal = ircUser(world, "cal")
    for peer in (ann, ben, cal):
        peer.send("JOIN #lab")
    prof = world.user("prof")
    prof.proto.session.account = "prof"  # logged in: what NICK prof PASSWORD does
    for peer in (ann, ben, cal):
        peer.lines()
    prof.send("MODE lab +m")
    assert prof.lines() == ["MODE lab prof +m", "200 mode of lab: +m"]
    assert ann.lines() == [":prof!prof@127.0.0.1 MODE #lab +m"]
    prof.send("MODE lab +vv ann ben")
    prof.lines()
    assert ben.lines()[-1] == ":prof!prof@127.0.0.1 MODE #lab +vv ann ben"
    cal.lines()
    cal.send("PRIVMSG #lab :can I speak?")
    assert " 404 cal #lab :" in cal.lines()[0]
    ann.send("PRIVMSG #lab :voiced")
    assert ben.lines() == [":ann!~ann@127.0.0.1 PRIVMSG #lab :voiced"]
    cal.lines()
    prof.send("KICK lab cal talking out of turn")
    prof.send("MODE lab +b cal!*@*")
    assert codes(prof.lines())[-2:] == [200, 200]
    assert cal.lines() == [":prof!prof@127.0.0.1 KICK #lab cal :talking out of turn"]
    assert ann.lines()[-2:] == [
        ":prof!prof@127.0.0.1 KICK #lab cal :talking out of turn",
        ":prof!prof@127.0.0.1 MODE #lab +b cal!*@*",
    ]
    cal.send("JOIN #lab")
    assert " 474 cal #lab :" in cal.lines()[0]
    ann.send("NAMES #lab")
    assert ":coursenet.chat 353 ann = #lab :@ann +ben" in ann.lines()  # the first joiner is an operator


def test_instructor_on_irc_door_moderates_and_course_users_see_it():
    """From the IRC door an instructor makes a room moderated, voices two, kicks and bans a third by mask; course users see each effect."""
    world = World(instructors=["prof"])
    ann, ben, cal = (world.user(nick, "lab") for nick in ("ann", "ben", "cal"))
    prof = world.connect(irc=True)
    prof.proto.session.account = "prof"  # logged in, as SASL or OPER does
    prof.send("NICK prof")
    prof.send("USER prof 0 * :Prof")
    prof.lines()
    for peer in (ann, ben, cal):
        peer.lines()
    prof.send("MODE #lab +m")
    assert ann.lines() == ["MODE lab prof +m"]
    prof.send("MODE #lab +v ann")
    prof.send("MODE #lab +v ben")
    assert ben.lines()[-2:] == ["MODE lab prof +v ann", "MODE lab prof +v ben"]
    cal.send("SAY lab me too")
    assert codes(cal.lines()) == [548]
    ben.send("SAY lab voiced")
    assert ann.lines()[-1] == "MESSAGE lab ben voiced"
    cal.lines()
    prof.send("KICK #lab cal :enough")
    prof.send("MODE #lab +b *!cal@*")
    assert cal.lines() == ["KICK lab prof cal enough"]
    assert ann.lines()[-2:] == ["KICK lab prof cal enough", "MODE lab prof +b *!cal@*"]
    cal.send("JOIN lab")
    assert codes(cal.lines()) == [544]
    ann.send("MODE lab +b")
    assert ann.lines()[0].startswith("215-*!cal@* prof!~prof@127.0.0.1 ")


def test_first_joiner_is_operator_and_others_are_refused():
    """The first member of a room is its operator; another member's MODE, KICK and +t TOPIC are refused on both doors."""
    world = World()
    ada = world.user("ada", "lab")
    bob = world.user("bob", "lab")
    irc = ircUser(world, "ircy")
    irc.send("JOIN #lab")
    irc.lines()
    bob.send("MODE lab +m")
    bob.send("KICK lab ada")
    assert codes(bob.lines()) == [543, 543]
    irc.send("MODE #lab +m")
    irc.send("KICK #lab ada")
    assert [line.split()[1] for line in irc.lines()] == ["482", "482"]
    ada.send("MODE lab +t")
    ada.lines()
    bob.send("TOPIC lab mine")
    assert codes(bob.lines()) == [543]
    ada.send("MODE lab +o bob")
    ada.lines()
    bob.send("TOPIC lab mine")
    assert codes(bob.lines())[-1] == 200


def test_invite_key_and_limit_on_both_doors():
    """+i needs an INVITE, +k the key, +l a free place; an invitation lets one in once, across doors."""
    world = World()
    ada = world.user("ada", "lab")
    ada.send("MODE lab +ikl secret 2")
    assert ada.lines()[-1] == "200 mode of lab: +ikl secret 2"
    irc = ircUser(world, "ircy")
    irc.send("JOIN #lab secret")
    assert " 473 ircy #lab " in irc.lines()[0]
    ada.send("INVITE ircy lab")
    assert codes(ada.lines()) == [200]
    assert irc.lines() == [":ada!ada@127.0.0.1 INVITE ircy #lab"]
    irc.send("JOIN #lab wrong")
    assert " 475 ircy #lab " in irc.lines()[0]
    irc.send("JOIN #lab secret")
    assert irc.lines()[0] == ":ircy!~ircy@127.0.0.1 JOIN #lab"
    ada.send("MODE lab -i")
    bob = world.user("bob")
    bob.send("JOIN lab secret")
    assert codes(bob.lines()) == [547]  # full: two members, and +l 2


@pytest_twisted.ensureDeferred
async def test_modes_and_bans_survive_a_restart(reactor, tmp_path):
    """A room's modes, key, limit and bans are stored with its history and come back after a restart."""
    path = str(tmp_path / "history.sqlite")
    store = SQLiteHistory(path, reactor=reactor)
    server = ChatServer(store, reactor=reactor)
    settings = RoomSettings({"m", "n"}, "k3y", 5, [Ban("bob!*@*", "ada!ada@host", 1.0)])
    store.setSettings("lab", settings.toDict())
    await store.close()
    store = SQLiteHistory(path, reactor=reactor)
    try:
        server = ChatServer(store, reactor=reactor)
        room = server._open("lab")
        await room.whenLoaded()
        assert room.settings == settings
    finally:
        await store.close()


def test_mode_changes_are_parsed_alike_for_both_doors():
    """+mv-o bob carl reads as three changes; a b without argument is a list query; unknown letters are reported."""
    changes, unknown = parseModeChanges("+mvX-o+b", ["bob", "carl"])
    assert changes == [Change(True, "m"), Change(True, "v", "bob"), Change(False, "o", "carl"), Change(True, "b")]
    assert unknown == ["X"]


@pytest.mark.parametrize(
    "mask,hostmask,hit",
    [
        ("bob", "bob!~b@10.0.0.1", True),
        ("BOB", "bob!~b@10.0.0.1", True),
        ("*@10.0.0.*", "eve!~e@10.0.0.9", True),
        ("*!*@10.0.0.1", "eve!~e@10.0.0.9", False),
        ("b?b!*@*", "bib!x@y", True),
        ("[x]", "[x]!u@h", True),
    ],
)
def test_ban_masks(mask, hostmask, hit):
    """Ban masks are nick!user@host globs, completed from a bare nick or user@host, matched without case."""
    assert maskMatches(normalizeMask(mask), hostmask) is hit


@pytest_twisted.ensureDeferred
async def test_stored_settings_are_bounded_by_max_rooms(reactor, tmp_path):
    """Settings are kept for at most --max-rooms rooms, those changed last, so the database does not grow with every room ever moderated."""
    store = SQLiteHistory(str(tmp_path / "h.sqlite"), reactor=reactor, rooms=2)
    try:
        for name in ("a", "b", "c"):
            store.setSettings(name, RoomSettings({"m"}).toDict())
            await store.load(name, 1)  # one write batch each
        kept = [(await store.load(name, 1))[2] is not None for name in ("a", "b", "c")]
    finally:
        await store.close()
    assert kept == [False, True, True]
