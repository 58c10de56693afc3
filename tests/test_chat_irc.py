"""
The IRC front door in memory: registration, the shared rooms both ways,
numerics for refusals, and its limits.
"""

from __future__ import annotations

from tests.chat_support import World


def ircUser(world: World, nick: str):
    peer = world.connect(irc=True)
    peer.send(f"NICK {nick}")
    peer.send(f"USER {nick} 0 * :{nick}")
    peer.lines()
    return peer


def test_registration_welcomes_after_nick_and_user():
    """NICK then USER bring 001 and ISUPPORT; commands before are 451."""
    world = World()
    peer = world.connect(irc=True)
    peer.send("JOIN #lab")
    peer.send("NICK ada")
    peer.send("USER ada 0 * :Ada")
    lines = peer.lines()
    assert " 451 " in lines[0]
    assert ":coursenet.chat 001 ada :Welcome" in lines[1]
    assert any("CHANTYPES=#" in line for line in lines)


def test_irc_and_course_users_share_a_room():
    """A course SAY reaches IRC as PRIVMSG #room, and an IRC PRIVMSG reaches the course client."""
    world = World()
    course = world.user("course", "lab")
    irc = ircUser(world, "ircy")
    irc.send("JOIN #lab")
    lines = irc.lines()
    assert lines[0] == ":ircy!~ircy@127.0.0.1 JOIN #lab"
    assert ":coursenet.chat 353 ircy = #lab :@course ircy" in lines
    assert course.lines() == ["JOIN lab ircy"]
    course.send("SAY lab hi irc")
    assert irc.lines() == [":course!course@127.0.0.1 PRIVMSG #lab :hi irc"]
    irc.send("PRIVMSG #lab :hi course")
    irc.send("PRIVMSG course :psst")
    assert course.lines()[-2:] == ["MESSAGE lab ircy hi course", "PRIVATE ircy psst"]


def test_irc_refusals_are_numerics():
    """Nick in use is 433, bad nick 432, unknown nick 401, no such channel 403, unknown command 421."""
    world = World()
    world.user("taken")
    peer = world.connect(irc=True)
    peer.send("NICK TAKEN")
    peer.send("NICK 9bad")
    peer.send("NICK ok")
    peer.send("USER ok 0 * :ok")
    peer.lines()
    peer.send("PRIVMSG nobody :x")
    peer.send("PRIVMSG #lab :x")
    peer.send("FROB")
    numerics = [line.split()[1] for line in peer.lines()]
    assert numerics == ["401", "403", "421"]
    peer2 = world.connect(irc=True)
    peer2.send("NICK TAKEN")
    peer2.send("NICK 9bad")
    assert [line.split()[1] for line in peer2.lines()] == ["433", "432"]


def test_irc_topic_list_who_names_and_history():
    """TOPIC, LIST, WHO and the history replay as NOTICEs work through the front door."""
    world = World()
    course = world.user("course", "lab")
    course.send("SAY lab earlier")
    irc = ircUser(world, "ircy")
    irc.send("JOIN #lab")
    lines = irc.lines()
    assert any(line.startswith(":coursenet.chat NOTICE #lab :[") and "<course> earlier" in line for line in lines)
    irc.send("TOPIC #lab :sockets")
    assert irc.lines() == [":ircy!~ircy@127.0.0.1 TOPIC #lab :sockets"]
    assert course.lines()[-1] == "TOPIC lab ircy sockets"
    irc.send("LIST")
    assert ":coursenet.chat 322 ircy #lab 2 :sockets" in irc.lines()
    irc.send("WHO #lab")
    assert len([line for line in irc.lines() if " 352 " in line]) == 2
    irc.send("PING :tok")
    assert irc.lines() == [":coursenet.chat PONG coursenet.chat :tok"]


def test_irc_overlong_line_and_bad_utf8():
    """A line over 512 bytes is a 417, invalid UTF-8 a FAIL INVALID_UTF8 with nothing relayed, and the connection goes on."""
    world = World()
    course = world.user("course", "lab")
    irc = ircUser(world, "ircy")
    irc.send("JOIN #lab")
    irc.lines()
    irc.proto.dataReceived(b"PRIVMSG #lab :" + b"x" * 600 + b"\r\nPRIVMSG #lab :\xff ok\r\nPRIVMSG #lab :fine\r\n")
    lines = irc.lines()
    assert " 417 " in lines[0]
    assert lines[1] == ":coursenet.chat FAIL PRIVMSG INVALID_UTF8 :Line is not valid UTF-8; nothing was done"
    seen = course.lines()
    assert seen[-1] == "MESSAGE lab ircy fine"
    assert not any("ok" in line for line in seen)


def test_irc_nick_change_and_quit_seen_by_course():
    """An IRC NICK change and QUIT reach the course client as NICK and QUIT events."""
    world = World()
    course = world.user("course", "lab")
    irc = ircUser(world, "ircy")
    irc.send("JOIN #lab")
    irc.lines()
    course.lines()
    irc.send("NICK ircy2")
    assert irc.lines() == [":ircy!~ircy@127.0.0.1 NICK ircy2"]
    irc.send("QUIT :later")
    irc.lose()
    assert course.lines() == ["NICK ircy ircy2", "QUIT ircy2 later"]


def test_irc_line_limit_is_510_bytes_whatever_the_ending():
    """510 bytes before the line ending are taken with CRLF or a bare LF; 511 are a 417 with either, the 512-byte bare-LF line included."""
    world = World()
    irc = ircUser(world, "ircy")

    def ping(size: int, ending: bytes) -> str:
        token = b"PING :" + b"t" * (size - len(b"PING :"))
        irc.proto.dataReceived(token + ending)
        (line,) = irc.lines()
        return line.split()[1]

    assert [ping(510, b"\r\n"), ping(510, b"\n")] == ["PONG", "PONG"]
    assert [ping(511, b"\n"), ping(511, b"\r\n"), ping(512, b"\n")] == ["417", "417", "417"]
