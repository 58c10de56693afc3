"""
The chat wire format: parsing and formatting, with no transport; the
parser fuzzed with hypothesis.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.ircwire import BadMessage, formatMessage, parseMessage, parseTags
from chat.protocol import encodeEvent
from chat.rooms import Event
from chat.wire import (
    MAX_LINE,
    MAX_TEXT,
    ChatError,
    Code,
    Command,
    ServerEvent,
    checkNick,
    checkRoom,
    checkText,
    formatLine,
    formatMultiline,
    parseCommand,
    parseServerLine,
)


def test_parseCommand_verb_is_case_insensitive():
    """The verb is upper-cased and the rest of the line kept as sent."""
    assert parseCommand(b"say lab  two  spaces") == Command("SAY", "lab  two  spaces")


@pytest.mark.parametrize(
    "line, code",
    [
        (b"\xff\xfe", Code.SYNTAX),
        (b"SAY lab a\x00b", Code.SYNTAX),
        (b"", Code.SYNTAX),
        (b" SAY", Code.SYNTAX),
        (b"S4Y x", Code.SYNTAX),
    ],
)
def test_parseCommand_refuses(line, code):
    """Invalid UTF-8, NUL, empty lines and odd verbs are 500s."""
    with pytest.raises(ChatError) as e:
        parseCommand(line)
    assert e.value.code == code


def test_split_words_and_text():
    """split() gives the words, then the rest of the line as the text."""
    assert Command("SAY", "lab hello there").split(1, True, "SAY room text") == ["lab", "hello there"]
    assert Command("PART", "lab").split(1, True, "PART room [reason]") == ["lab", ""]
    with pytest.raises(ChatError) as e:
        Command("WHO", "a b").split(1, False, "WHO room")
    assert e.value.code == Code.BAD_ARGUMENT and "usage: WHO room" in e.value.message


def test_names():
    """Nicknames and rooms follow their rules; rooms are case-folded and may carry #."""
    assert checkNick("Ada_1") == "Ada_1"
    assert checkRoom("#Lab-2") == "lab-2"
    for bad in ["", "1ada", "a" * 21, "ad a", "é"]:
        with pytest.raises(ChatError):
            checkNick(bad)
    for bad in ["", "#", "-x", "a" * 33, "a b"]:
        with pytest.raises(ChatError):
            checkRoom(bad)


def test_checkText_limit():
    """Text over MAX_TEXT UTF-8 bytes is a 552 that says the limit."""
    checkText("é" * (MAX_TEXT // 2))
    with pytest.raises(ChatError) as e:
        checkText("é" * (MAX_TEXT // 2 + 1))
    assert e.value.code == Code.TOO_LONG and str(MAX_TEXT) in e.value.message


def test_formatLine_is_one_bounded_line():
    """A formatted line never holds a line break and never passes MAX_LINE."""
    line = formatLine("a\r\nb" + "é" * 600)
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert len(line) <= MAX_LINE + 2
    line.decode("utf-8")


def test_multiline_reply_parses_back():
    """NNN- lines then NNN: the client reads continuation and final lines."""
    data = formatMultiline(211, ["ada", "bob"], "2 in lab")
    lines = data.split(b"\r\n")[:-1]
    assert [parseServerLine(x) for x in lines] == [
        (211, False, "ada"), (211, False, "bob"), (211, True, "2 in lab")
    ]


def test_events_parse_back():
    """Every event the server encodes is read back with the same fields."""
    cases = [
        (Event("MESSAGE", "ada", "lab", "hi there"), ServerEvent("MESSAGE", "lab", "ada", "hi there")),
        (Event("PRIVATE", "ada", text="psst"), ServerEvent("PRIVATE", nick="ada", text="psst")),
        (Event("JOIN", "ada", "lab"), ServerEvent("JOIN", "lab", "ada")),
        (Event("PART", "ada", "lab", "bye"), ServerEvent("PART", "lab", "ada", "bye")),
        (Event("QUIT", "ada", text="gone"), ServerEvent("QUIT", nick="ada", text="gone")),
        (Event("NICK", "ada", text="eve"), ServerEvent("NICK", nick="ada", text="eve")),
        (Event("TOPIC", "ada", "lab", "sockets"), ServerEvent("TOPIC", "lab", "ada", "sockets")),
        (Event("MESSAGE", "bot", "lab", "beep", notice=True), ServerEvent("NOTICE", "lab", "bot", "beep")),
        (Event("PRIVATE", "bot", text="psst", notice=True), ServerEvent("PRIVNOTICE", nick="bot", text="psst")),
        (Event("MODE", "ada", "lab", "+mv bob"), ServerEvent("MODE", "lab", "ada", "+mv bob")),
        (Event("KICK", "ada", "lab", "too loud", target="bob"),
         ServerEvent("KICK", "lab", "ada", "too loud", target="bob")),
        (Event("INVITE", "ada", "lab", target="bob"), ServerEvent("INVITE", "lab", "ada")),
    ]
    for event, expected in cases:
        assert parseServerLine(encodeEvent(event)[:-2]) == expected


def test_parseServerLine_refuses_garbage():
    """A line that is neither reply nor known event is an error."""
    with pytest.raises(ChatError):
        parseServerLine(b"HELLO there")
    with pytest.raises(ChatError):
        parseServerLine(b"MESSAGE lab")


@given(st.binary(max_size=600))
def test_fuzz_parseCommand_only_raises_ChatError(line):
    """Any bytes either parse to an upper-case alphabetic verb or raise ChatError."""
    try:
        command = parseCommand(line)
    except ChatError as e:
        assert e.code == Code.SYNTAX
    else:
        first, _, rest = line.decode("utf-8").partition(" ")
        assert command == Command(first.upper(), rest)
        assert command.verb.isalpha()


_word = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Co", "Cn")), min_size=1, max_size=20)


@given(st.sampled_from(["SAY", "MSG", "PART", "TOPIC"]), _word, st.text(max_size=200))
def test_fuzz_split_round_trip(verb, word, text):
    """A command built from a word and free text splits back into them."""
    text = "".join(c for c in text if c.isprintable())
    line = f"{verb.lower()} {word} {text}".encode("utf-8")
    command = parseCommand(line)
    assert command.verb == verb
    assert command.split(1, True, "usage") == [word, text]


@given(st.binary(max_size=600))
def test_fuzz_parseServerLine(line):
    """The client parser returns a reply tuple or event, or raises ChatError."""
    try:
        parsed = parseServerLine(line)
    except ChatError:
        return
    assert isinstance(parsed, (tuple, ServerEvent))


# -- IRC messages (chat.ircwire) ---------------------------------------------------



_word = st.text(st.characters(blacklist_characters=" \r\n\x00:", blacklist_categories=("Cs",)), min_size=1, max_size=20)
_text = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=50)


@given(st.lists(_word, max_size=5), _text, st.dictionaries(_word.filter(lambda w: "=" not in w and ";" not in w and not w.startswith("@")), _text, max_size=3))
def test_irc_messages_round_trip(middle, last, tags):
    """Whatever the parameters and tag values, formatting then parsing a message gives them back."""
    line = formatMessage("PRIVMSG", *middle, last, source="a!b@c", tags=tags, limit=10_000)
    message = parseMessage(line[:-2].decode("utf-8"))
    assert (message.command, message.params, message.source) == ("PRIVMSG", [*middle, last], "a!b@c")
    assert message.tags == tags


@given(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=200))
def test_irc_parser_takes_any_line(line):
    """Any line either parses to a message with an upper-case command or is refused as BadMessage; nothing else escapes."""
    try:
        message = parseMessage(line)
    except BadMessage:
        return
    assert message.command == message.command.upper() and message.command


def test_irc_tag_escapes():
    """Tag values unescape \\: \\s \\\\ \\r \\n; a key without value is empty."""
    assert parseTags(r"a=x\:y\sz\\;b;c=\r\n") == {"a": "x;y z\\", "b": "", "c": "\r\n"}
