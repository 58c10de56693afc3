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


# -- wire basics (issue 12) ---------------------------------------------------------


def threeInLab():
    """
    A world with C{course} (course door), C{ircy} and C{other} (IRC) in
    room lab, output cleared: C{(world, course, ircy, other)}.
    """
    world = World()
    course = world.user("course", "lab")
    irc = ircUser(world, "ircy")
    other = ircUser(world, "other")
    for peer in (irc, other):
        peer.send("JOIN #lab")
    for peer in (irc, other, course):
        peer.lines()
    return world, course, irc, other


def test_notice_stays_a_notice_and_gets_no_error_reply():
    """NOTICE reaches IRC users as NOTICE and course users as NOTICE/PRIVNOTICE, is not kept in history, and a failing NOTICE gets no reply."""
    world, course, irc, other = threeInLab()
    irc.send("NOTICE #lab :bot output")
    irc.send("NOTICE course :psst")
    irc.send("NOTICE nobody :x")
    irc.send("NOTICE #nowhere :x")
    assert irc.lines() == []
    assert other.lines() == [":ircy!~ircy@127.0.0.1 NOTICE #lab :bot output"]
    assert course.lines() == ["NOTICE lab ircy bot output", "PRIVNOTICE ircy psst"]
    assert list(world.server.room("lab").history) == []


def test_ctcp_formatting_and_tab_pass_through_nul_is_refused():
    """CTCP \\x01, colour, bold and TAB arrive as sent on both doors; a line with NUL is refused and not relayed."""
    world, course, irc, other = threeInLab()
    irc.send("PRIVMSG #lab :\x01ACTION waves\x01")
    irc.send("PRIVMSG #lab :\x02bold\x02 \x0304red\x03\tTAB")
    assert other.lines() == [
        ":ircy!~ircy@127.0.0.1 PRIVMSG #lab :\x01ACTION waves\x01",
        ":ircy!~ircy@127.0.0.1 PRIVMSG #lab :\x02bold\x02 \x0304red\x03\tTAB",
    ]
    assert course.lines() == ["MESSAGE lab ircy \x01ACTION waves\x01", "MESSAGE lab ircy \x02bold\x02 \x0304red\x03\tTAB"]
    irc.proto.dataReceived(b"PRIVMSG #lab :nul\x00here\r\n")
    assert irc.lines() == [":coursenet.chat FAIL * INVALID_TEXT :NUL in line; nothing was done"]
    assert other.lines() == []


def test_cr_only_line_endings_are_split():
    """A CR alone ends a line, as does CRLF split between two reads (no empty extra line)."""
    world = World()
    irc = ircUser(world, "ircy")
    irc.proto.dataReceived(b"PING :a\rPING :b\r")
    irc.proto.dataReceived(b"\nPING :c\n")
    assert [line.rsplit(":", 1)[1] for line in irc.lines()] == ["a", "b", "c"]


def test_message_tags_are_parsed_not_taken_for_a_command():
    """A tagged line runs its command; tags longer than 4096 bytes get 417."""
    world = World()
    irc = ircUser(world, "ircy")
    irc.send("@label=1;+x=y PING :tagged")
    assert irc.lines() == [":coursenet.chat PONG coursenet.chat :tagged"]
    irc.send("@+big=" + "a" * 4100 + " PING :x")
    assert " 417 " in irc.lines()[0]


def test_empty_list_elements_are_skipped():
    """JOIN ,,#a,, joins #a and produces no malformed line."""
    world = World()
    irc = ircUser(world, "ircy")
    irc.send("JOIN ,,#a,,")
    lines = irc.lines()
    assert lines[0] == ":ircy!~ircy@127.0.0.1 JOIN #a"
    assert not any("  " in line for line in lines)


def test_a_496_byte_privmsg_to_a_nick_is_accepted():
    """A PRIVMSG filling the 512-byte line is taken for a nick (no 404); the recipient gets it cut to its own line."""
    world = World()
    irc = ircUser(world, "ircy")
    bob = ircUser(world, "bob")
    line = "PRIVMSG bob :" + "x" * (510 - len("PRIVMSG bob :"))
    irc.send(line)
    assert irc.lines() == []
    (got,) = bob.lines()
    assert got.startswith(":ircy!~ircy@127.0.0.1 PRIVMSG bob :xxx") and len(got.encode()) == 510


# -- registration (issue 12) ------------------------------------------------------------


def test_cap_negotiation_holds_welcome_until_cap_end():
    """CAP LS 302, REQ (ACK and NAK), LIST and an unknown subcommand (410); 001 only after CAP END."""
    world = World()
    peer = world.connect(irc=True)
    peer.send("CAP LS 302")
    peer.send("NICK ada")
    peer.send("USER ada 0 * :Ada Lovelace")
    (ls,) = peer.lines()
    assert ls.startswith(":coursenet.chat CAP * LS :") and "multi-prefix" in ls and "server-time" in ls
    peer.send("CAP REQ :multi-prefix server-time")
    peer.send("CAP REQ :multi-prefix bogus")
    peer.send("CAP LIST")
    peer.send("CAP FROB")
    assert peer.lines() == [
        ":coursenet.chat CAP ada ACK :multi-prefix server-time",
        ":coursenet.chat CAP ada NAK :multi-prefix bogus",
        ":coursenet.chat CAP ada LIST :multi-prefix server-time",
        ":coursenet.chat 410 ada FROB :Invalid CAP command",
    ]
    peer.send("CAP END")
    lines = peer.lines()
    assert lines[0] == ":coursenet.chat 001 ada :Welcome to the coursenet chat, ada!~ada@127.0.0.1"
    isupport = " ".join(line for line in lines if " 005 " in line)
    for token in ("CHANLIMIT=#:20", "NICKLEN=20", "TOPICLEN=300", "CHANMODES=b,k,l,imnst", "PREFIX=(ov)@+",
                  "CASEMAPPING=ascii"):
        assert token in isupport


def test_user_keeps_username_and_realname():
    """USER's username and realname are what WHOIS and WHO show; an empty realname is 461 USER."""
    world = World()
    bad = world.connect(irc=True)
    bad.send("NICK x")
    bad.send("USER x 0 * :")
    assert bad.lines() == [":coursenet.chat 461 x USER :Not enough parameters"]
    peer = world.connect(irc=True)
    peer.send("NICK ada")
    peer.send("USER lovelace 0 * :Ada Lovelace")
    asker = ircUser(world, "bob")
    asker.send("WHOIS ada")
    assert ":coursenet.chat 311 bob ada ~lovelace 127.0.0.1 * :Ada Lovelace" in asker.lines()
    asker.send("WHO ada")
    assert asker.lines()[0] == ":coursenet.chat 352 bob * ~lovelace 127.0.0.1 coursenet.chat ada H :0 Ada Lovelace"


def test_numerics_issue_12_lists():
    """MODE otheruser 502, WHOIS a b asks about b, PART/TOPIC of no channel 403, 401 then 318, PING without a token 409."""
    world = World()
    ircUser(world, "bob")
    peer = ircUser(world, "ada")
    peer.send("MODE bob")
    peer.send("WHOIS coursenet.chat bob")
    peer.send("PART #nowhere")
    peer.send("TOPIC #nowhere")
    peer.send("WHOIS ghost")
    peer.send("PING")
    numerics = [line.split()[1] for line in peer.lines()]
    assert numerics[0] == "502"
    assert numerics[1] == "311" and numerics[1:].index("318") > 0
    tail = numerics[numerics.index("318") + 1 :]
    assert tail == ["403", "403", "401", "318", "409"]


# -- commands (issue 12) ------------------------------------------------------------------


def test_away_whowas_lusers_time_userhost_ison_motd():
    """AWAY is kept (301 on PRIVMSG and WHOIS, - in USERHOST), WHOWAS remembers who left, and LUSERS, TIME, ISON, MOTD answer."""
    world = World()
    ada = ircUser(world, "ada")
    bob = ircUser(world, "bob")
    bob.send("AWAY :lunch")
    assert bob.lines() == [":coursenet.chat 306 bob :You have been marked as being away"]
    ada.send("PRIVMSG bob :hi")
    assert ada.lines() == [":coursenet.chat 301 ada bob :lunch"]
    ada.send("USERHOST bob")
    assert ada.lines() == [":coursenet.chat 302 ada :bob=-~bob@127.0.0.1"]
    ada.send("ISON bob nobody")
    assert ada.lines() == [":coursenet.chat 303 ada :bob"]
    ada.send("LUSERS")
    assert ":coursenet.chat 251 ada :There are 2 users and 0 invisible on 1 servers" in ada.lines()
    ada.send("TIME")
    ada.send("MOTD")
    assert [line.split()[1] for line in ada.lines()] == ["391", "422"]
    bob.send("QUIT :bye")
    bob.lose()
    ada.send("WHOWAS bob")
    assert [line.split()[1] for line in ada.lines()] == ["314", "312", "369"]


def test_who_masks():
    """WHO * lists every visible user, WHO nick* those matching; +i users only to those sharing a channel."""
    world = World()
    ircUser(world, "alpha")
    ircUser(world, "alfred")
    hidden = ircUser(world, "alice")
    hidden.send("MODE alice +i")
    assert hidden.lines() == [":alice!~alice@127.0.0.1 MODE alice +i"]
    bob = ircUser(world, "bob")
    bob.send("WHO *")
    assert sorted(line.split()[7] for line in bob.lines() if " 352 " in line) == ["alfred", "alpha", "bob"]
    bob.send("WHO al*")
    assert sorted(line.split()[7] for line in bob.lines() if " 352 " in line) == ["alfred", "alpha"]
    bob.send("WHO alice")
    assert [line.split()[7] for line in bob.lines() if " 352 " in line] == ["alice"]


def test_oper_makes_an_instructor_operator_everywhere():
    """OPER with a non-instructor name is 491; without the password file's right password 464."""
    world = World(instructors=["prof"])
    peer = ircUser(world, "ada")
    peer.send("OPER ada x")
    peer.send("OPER")
    assert [line.split()[1] for line in peer.lines()] == ["491", "461"]


# -- capabilities (issue 12) ---------------------------------------------------------------


def capUser(world: World, nick: str, caps: str):
    peer = world.connect(irc=True)
    peer.send(f"CAP REQ :{caps}")
    peer.send(f"NICK {nick}")
    peer.send(f"USER {nick} 0 * :{nick}")
    peer.send("CAP END")
    peer.lines()
    return peer


def test_multi_prefix_shows_every_prefix():
    """With multi-prefix NAMES shows @+ for a voiced operator; without, only @."""
    world = World()
    ada = capUser(world, "ada", "multi-prefix")
    plain = ircUser(world, "plain")
    ada.send("JOIN #lab")
    plain.send("JOIN #lab")
    ada.send("MODE #lab +v ada")
    ada.lines()
    plain.lines()
    ada.send("NAMES #lab")
    plain.send("NAMES #lab")
    assert ":coursenet.chat 353 ada = #lab :@+ada plain" in ada.lines()
    assert ":coursenet.chat 353 plain = #lab :@ada plain" in plain.lines()


def test_server_time_echo_message_account_tag_and_message_tags():
    """server-time stamps events, echo-message returns one's own message with the same msgid others get, account-tag names a logged-in sender."""
    world = World()
    ada = capUser(world, "ada", "echo-message message-tags")
    ada.proto.session.account = "ada"
    bob = capUser(world, "bob", "server-time account-tag message-tags")
    ada.send("JOIN #lab")
    bob.send("JOIN #lab")
    ada.lines()
    bob.lines()
    ada.send("@+draft/reply=x PRIVMSG #lab :hello")
    (echo,) = ada.lines()
    (got,) = bob.lines()
    assert echo.endswith(" :ada!~ada@127.0.0.1 PRIVMSG #lab :hello") and "+draft/reply=x" in echo
    tags = dict(t.partition("=")[::2] for t in got[1:].split(" ", 1)[0].split(";"))
    assert tags["account"] == "ada" and tags["time"].endswith("Z") and tags["+draft/reply"] == "x"
    assert tags["msgid"] in echo


def test_away_notify():
    """A client with away-notify sees AWAY of those it shares a channel with; others do not."""
    world = World()
    watcher = capUser(world, "watcher", "away-notify")
    plain = ircUser(world, "plain")
    bob = ircUser(world, "bob")
    for peer in (watcher, plain, bob):
        peer.send("JOIN #lab")
    for peer in (watcher, plain, bob):
        peer.lines()
    bob.send("AWAY :gone")
    bob.send("AWAY")
    assert watcher.lines() == [":bob!~bob@127.0.0.1 AWAY :gone", ":bob!~bob@127.0.0.1 AWAY"]
    assert plain.lines() == []


def test_sasl_plain_logs_in_a_registered_nick():
    """SASL PLAIN with the right password gives 900 and 903 and the account's nickname without PASS; a wrong one 904."""
    world = World()

    class Checker:
        def userNames(self):
            return ["demo"]

    world.server.checker = Checker()

    def checkPassword(who, account, password):
        from twisted.internet.defer import fail, succeed

        from chat.wire import ChatError, Code

        if password == "pw":
            return succeed("demo")
        return fail(ChatError(Code.PASSWORD, "wrong password for account demo"))

    world.server.checkPassword = checkPassword  # the real one scrypts in a thread
    import base64

    bad = world.connect(irc=True)
    bad.send("CAP REQ :sasl")
    bad.send("AUTHENTICATE PLAIN")
    bad.send("AUTHENTICATE " + base64.b64encode(b"\x00demo\x00nope").decode())
    assert bad.lines()[-1].split()[1] == "904"
    peer = world.connect(irc=True)
    peer.send("CAP REQ :sasl")
    peer.send("AUTHENTICATE PLAIN")
    peer.send("AUTHENTICATE " + base64.b64encode(b"\x00demo\x00pw").decode())
    peer.send("NICK demo")
    peer.send("USER demo 0 * :Demo")
    peer.send("CAP END")
    lines = peer.lines()
    assert lines[1] == "AUTHENTICATE +"
    assert [line.split()[1] for line in lines[2:5]] == ["900", "903", "001"]
    assert lines[4].endswith("demo!~demo@127.0.0.1")


def test_topic_is_cut_to_topiclen_on_both_doors():
    """A topic longer than TOPICLEN (300 bytes) is cut to it, set from either door."""
    world = World()
    course = world.user("course", "lab")
    irc = ircUser(world, "ircy")
    irc.send("JOIN #lab")
    course.send("TOPIC lab " + "c" * 400)
    assert world.server.room("lab").topic.text == "c" * 300
    irc.send("TOPIC #lab :" + "i" * 450)
    assert world.server.room("lab").topic.text == "i" * 300


def test_help_answers_with_help_numerics():
    """HELP lists the commands, HELP PRIVMSG explains one (704 then 706), an unknown subject is 524."""
    world = World()
    peer = ircUser(world, "ada")
    peer.send("HELP")
    peer.send("HELP privmsg")
    peer.send("HELPOP nothing")
    lines = peer.lines()
    assert [line.split()[1] for line in lines] == ["704", "705", "706", "704", "706", "524"]
    assert lines[3].startswith(":coursenet.chat 704 ada PRIVMSG :PRIVMSG #channel|nick :text")


def test_instructors_are_marked_operators_in_who_and_whois():
    """A logged-in instructor has the * flag in WHO and a 313 in WHOIS; others have neither."""
    world = World(instructors=["prof"])
    prof = world.connect(irc=True)
    prof.proto.session.account = "prof"  # logged in, as SASL or OPER does
    prof.send("NICK prof")
    prof.send("USER prof 0 * :Prof")
    ircUser(world, "ada")
    asker = ircUser(world, "bob")
    asker.send("WHO prof")
    asker.send("WHO ada")
    flags = [line.split()[8] for line in asker.lines() if " 352 " in line]
    assert flags == ["H*", "H"]
    asker.send("WHOIS prof")
    asker.send("WHOIS ada")
    whois = [line.split()[1] for line in asker.lines()]
    assert whois.count("313") == 1 and whois.index("313") < whois.index("318")


def test_lusers_counts_invisible_and_unregistered_connections():
    """LUSERS counts registered users (+i ones as invisible) and, apart, connections still registering."""
    world = World()
    ada = ircUser(world, "ada")
    hidden = ircUser(world, "hidden")
    hidden.send("MODE hidden +i")
    halfway = world.connect(irc=True)
    halfway.send("NICK halfway")
    ada.send("LUSERS")
    lines = ada.lines()
    assert ":coursenet.chat 251 ada :There are 1 users and 1 invisible on 1 servers" in lines
    assert ":coursenet.chat 253 ada 1 :unknown connection(s)" in lines
    hidden.lose()
    halfway.lose()
    ada.send("LUSERS")
    assert ":coursenet.chat 251 ada :There are 1 users and 0 invisible on 1 servers" in ada.lines()
