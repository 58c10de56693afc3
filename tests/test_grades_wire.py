"""
The grades wire with no transport: the command parser, the value checks
and the CSV reader, by example and fuzzed with hypothesis; and the server
fed arbitrary bytes.
"""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grades.wire import (
    CSV_HEADER,
    MAX_LINE,
    VERBS,
    Code,
    GradesError,
    Row,
    parseCommand,
    parseCourse,
    parseCSV,
    parseGrade,
    parseId,
    parseName,
)
from tests.grades_support import World


def test_parseCommand():
    """A verb is case-insensitive, arguments split on runs of blanks, leading and trailing blanks ignored."""
    assert parseCommand(b"name 051883261") == parseCommand(b"  NAME\t051883261  ")
    command = parseCommand(b"SET 1  MATH +5")
    assert (command.verb, command.args) == ("SET", ("1", "MATH", "+5"))
    with pytest.raises(GradesError) as e:
        parseCommand(b"DROP TABLE grades")
    assert (e.value.code, e.value.message) == (Code.SYNTAX, "unknown command DROP; try HELP")


def test_values():
    """Ids keep leading zeros, courses are upper-cased, grades are 0-100 or +N/-N, names are letters between separators."""
    assert parseId("051883261") == "051883261"
    assert parseCourse("cs-101") == "CS-101"
    assert parseGrade("87") == (87, False)
    assert parseGrade("-3") == (-3, True)
    assert parseName("JEAN-LUC O'NEIL") == "JEAN-LUC O'NEIL"
    for bad in ("", "12a", "1" * 17):
        with pytest.raises(GradesError):
            parseId(bad)
    for bad in ("101", "8.5", "++1"):
        with pytest.raises(GradesError):
            parseGrade(bad)
    for bad in ("DAN  HACKER", "DAN,HACKER", "R2D2", "ERR 400 X", "OK GO", "LIST OF", " DAN"):
        with pytest.raises(GradesError):
            parseName(bad)


def test_csv():
    """A CSV block: optional header, CRLF or LF, blank lines skipped, fields trimmed."""
    data = f"{CSV_HEADER}\r\n051883261, DAN HACKER ,math,87\r\n\r\n2,ADA LOVELACE,HISTORY,100\n".encode()
    assert parseCSV(data) == [Row("051883261", "DAN HACKER", "MATH", 87), Row("2", "ADA LOVELACE", "HISTORY", 100)]


@given(st.binary(max_size=MAX_LINE))
def test_fuzzParseCommand(line):
    """Any bytes parse to a known verb with blank-free arguments, or raise GradesError 400; nothing else."""
    try:
        command = parseCommand(line)
    except GradesError as e:
        assert e.code == Code.SYNTAX
        return
    assert command.verb in VERBS
    assert all(arg and not any(c in arg for c in " \t") for arg in command.args)


@given(st.binary(max_size=2000))
def test_fuzzParseCSV(data):
    """Any bytes are a list of valid rows or a GradesError naming what is wrong; nothing else."""
    try:
        rows = parseCSV(data)
    except GradesError as e:
        assert e.code in (Code.SYNTAX, Code.TOO_LARGE)
        return
    for row in rows:
        assert parseId(row.id) == row.id and parseCourse(row.course) == row.course and 0 <= row.grade <= 100


_names = st.from_regex(r"[A-Z][a-z]{0,8}( [A-Z][a-z]{0,8}){0,3}", fullmatch=True).filter(
    lambda n: n.split(" ")[0].upper() not in ("ERR", "OK", "LIST", "READY", "BYE")
)
_rows = st.builds(
    Row,
    st.from_regex(r"[0-9]{1,16}", fullmatch=True),
    _names,
    st.from_regex(r"[A-Z][A-Z0-9_-]{0,31}", fullmatch=True),
    st.integers(0, 100),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(_rows, max_size=20))
def test_fuzzCSVRoundTrip(rows):
    """EXPORT's CSV of any valid rows reads back as the same rows through IMPORT's reader."""
    data = "\n".join([CSV_HEADER] + [r.csv() for r in rows]).encode()
    assert parseCSV(data) == rows


_verbs = sorted(VERBS - {"IMPORT", "END"})
_lines = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda verb, args: " ".join([verb, *args]).encode("utf-8", "surrogatepass"),
        st.sampled_from(_verbs),
        st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["051883261", "MATH", "+1", "-200", "100", "0"])),
                 max_size=4),
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_lines, max_size=12))
def test_fuzzServerAnswersEveryLine(tmp_path, chunks):
    """Arbitrary lines sent to a logged-in instructor get exactly one reply each (no crash, no 500), and the record is intact."""
    world = World(tempfile.mkdtemp(dir=tmp_path))
    try:
        peer = world.extended("mia")
        lines = [c.replace(b"\n", b" ").replace(b"\r", b" ") for c in chunks]
        lines = [line for line in lines if not line.strip().upper().startswith((b"IMPORT", b"END"))]
        for line in lines:
            peer.send(line + b"\n")
            out = peer.lines()
            assert out, line
            assert not out[0].startswith("ERR 500"), (line, out)
            if out[0].startswith("LIST "):
                assert len(out) == 1 + int(out[0][5:]), (line, out)
            else:
                assert len(out) == 1, (line, out)
        check = world.extended("dan")
        assert check.ask("NAME 051883261") == ["OK DAN HACKER"]
    finally:
        world.close()
