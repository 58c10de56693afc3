"""
The BFTP wire format on its own: command and reply lines, path encoding and
chunk framing, including property-based fuzzing of the parsers.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bftp.wire import (
    MAX_CHUNK,
    MAX_NAME,
    ChunkDecoder,
    Code,
    FramingError,
    ProtocolError,
    chunkHeader,
    decodeOffset,
    decodePath,
    encodePath,
    formatMultiline,
    formatReply,
    parseCommand,
    parseReply,
)


def test_commandVerbIsCaseInsensitive():
    """A verb is upper-cased and its arguments kept as sent."""
    command = parseCommand(b"get docs/a.txt 10")
    assert command.verb == "GET"
    assert command.args == ("docs/a.txt", "10")


def test_passwordNeverInRawText():
    """PASS keeps its argument, spaces included, out of the text used for logs."""
    command = parseCommand(b"PASS my secret pw")
    assert command.rest == "my secret pw"
    assert "secret" not in command.raw


@pytest.mark.parametrize(
    "line, code",
    [
        (b"", Code.SYNTAX),
        (b"\xff\xfe", Code.SYNTAX),
        (b"GET a\x00b", Code.SYNTAX),
        (b"G3T x", Code.SYNTAX),
    ],
)
def test_badCommandLines(line, code):
    """Empty, non-UTF-8, control-character and non-alphabetic commands get a 500."""
    with pytest.raises(ProtocolError) as e:
        parseCommand(line)
    assert e.value.code == code


def test_pathRoundTrip():
    """Spaces, percent signs and non-ASCII names survive encoding."""
    for path in ["/a b/c%d.txt", "שלום/עולם", "x+y=z;@:"]:
        assert " " not in encodePath(path)
        assert decodePath(encodePath(path)) == path


@pytest.mark.parametrize(
    "arg",
    ["a%00b", "a%0Ab", "%ff%fe", "a%zz", "a%", "x" * (MAX_NAME + 1), "a/" * 2100],
)
def test_badPaths(arg):
    """NUL, control characters, bad escapes, non-UTF-8 and overlong names are refused with 553."""
    with pytest.raises(ProtocolError) as e:
        decodePath(arg)
    assert e.value.code == Code.BAD_NAME


@pytest.mark.parametrize("arg", ["-1", "1e3", "0x10", "", "9" * 21, "１２"])
def test_badOffsets(arg):
    """An offset must be a plain non-negative decimal number."""
    with pytest.raises(ProtocolError) as e:
        decodeOffset(arg)
    assert e.value.code == Code.BAD_ARGUMENT


def test_replyFormatting():
    """A reply is one line whatever its text contains, and parses back."""
    line = formatReply(550, "bad\r\nname")
    assert line.count(b"\r\n") == 1
    assert parseReply(line[:-2]) == (550, True, "bad??name")


def test_multilineReply():
    """Every line but the last of a multi-line reply has a dash after the code."""
    data = formatMultiline(212, ["a b", "c"], "2 entries")
    lines = data.split(b"\r\n")[:-1]
    assert [parseReply(x)[1] for x in lines] == [False, False, True]
    assert parseReply(lines[0])[2] == "a b"


def test_chunkDecoderSplitAnywhere():
    """Payloads come out whole and in order however the stream is cut, and the bytes after the end chunk are kept."""
    stream = chunkHeader(5) + b"hello" + chunkHeader(3) + b"abc" + b"00000000" + b"TAIL"
    for cut in range(1, len(stream)):
        d = ChunkDecoder()
        out = b"".join(bytes(p) for p in d.feed(stream[:cut]))
        out += b"".join(bytes(p) for p in d.feed(stream[cut:]))
        assert out == b"helloabc"
        assert d.done and d.rest == b"TAIL"


@pytest.mark.parametrize("header", [b"0000001G", b"-0000001", b" 0000001", b"0x000001"])
def test_chunkDecoderBadHeader(header):
    """A header that is not 8 hex digits is a framing error."""
    with pytest.raises(FramingError):
        ChunkDecoder().feed(header + b"data")


def test_chunkDecoderHugeHeader():
    """A header announcing more than the chunk limit is refused before any payload is buffered."""
    with pytest.raises(FramingError) as e:
        ChunkDecoder().feed(b"ffffffff")
    assert e.value.code == Code.TOO_LARGE
    assert chunkHeader(MAX_CHUNK) == b"%08x" % MAX_CHUNK


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzzParseCommand(line):
    """Any bytes parse to a command or raise ProtocolError: never another exception."""
    try:
        command = parseCommand(line)
    except ProtocolError as e:
        assert 500 <= e.code < 600
    else:
        assert command.verb.isalpha()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzzDecodePath(arg):
    """Any argument decodes to a printable path or raises ProtocolError."""
    try:
        path = decodePath(arg)
    except ProtocolError:
        pass
    else:
        assert "\x00" not in path


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=40))
def test_fuzzChunkDecoder(pieces):
    """Arbitrary input either decodes or raises FramingError, and the decoder never holds more than one header's worth of bytes."""
    d = ChunkDecoder()
    try:
        for piece in pieces:
            out = d.feed(piece)
            assert sum(len(p) for p in out) <= len(piece)
            assert len(d._header) < 8
    except FramingError:
        pass


def _spec() -> str:
    import pathlib

    return (pathlib.Path(__file__).parent.parent / "docs" / "bftp.md").read_text(encoding="utf-8")


def test_specAppendixBReferencesPointAtTheRightItem():
    """Every "Appendix B, item N" in docs/bftp.md names an existing item about what the citing sentence is about."""
    import re

    text = _spec()
    appendix = text.split("## Appendix B.")[1]
    items = {int(n): title for n, title in re.findall(r"^(\d+)\. \*\*(.+?)\*\*", appendix, re.M)}
    cues = {
        "quota": "expire",
        "RESOLVE_BENEATH": "Symbolic links",
        "stale": "digests",
        "IPv4": "guess throttle",
        "concurrency": "concurrency",
    }
    refs = list(re.finditer(r"Appendix B,\s+item (\d+)", text))
    assert refs
    for m in refs:
        n = int(m.group(1))
        assert n in items, f"item {n} does not exist"
        before = text[max(0, m.start() - 300) : m.start()]
        for cue, title in cues.items():
            if cue in before:
                assert title in items[n], f"{cue!r} cites item {n}: {items[n]!r}"


def test_specLimitsSayTheLoginOptionsExist():
    """Section 11 names --login-timeout and the --guess-* options rather than saying twistd cannot set them."""
    limits = _spec().split("## 11. Limits")[1].split("## 12.")[0]
    assert "has no options" not in limits
    assert "`--login-timeout`" in limits and "`--guess-forget`" in limits
