"""
The grades protocol on the wire (docs/grades.md), with no transport: a line
in, a L{Command} out; values checked; replies and CSV formatted and parsed.

Everything here is pure, so the parser can be fuzzed on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coursenet.errors import ReplyError

#: The extended level's name, given with HELLO.
VERSION = "GRADES/2"
#: The longest command line, in bytes, without its line ending.
MAX_LINE = 512
#: The largest IMPORT block by default, in bytes.
MAX_IMPORT = 1024 * 1024
#: The verbs of the seed's dialogue: the base level.
BASE_VERBS = frozenset({"HELLO", "NAME", "GRADE", "END"})
#: Verbs every level has beyond the seed's.
COMMON_VERBS = frozenset({"USER", "PASS", "STARTTLS", "HELP", "NOOP"})
#: Verbs of the extended level only.
EXTENDED_VERBS = frozenset({"COURSES", "GRADES", "AVG", "RANK", "STATS", "SET", "IMPORT", "EXPORT", "WHOAMI"})
VERBS = BASE_VERBS | COMMON_VERBS | EXTENDED_VERBS

_ID = re.compile(r"[0-9]{1,16}")
_COURSE = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_GRADE = re.compile(r"([+-]?)([0-9]{1,3})")
# Letters of any script, spaces between words, and the marks names have.
_NAME = re.compile(r"[^\W\d_](?:[^\W\d_]|[ '.-](?=[^\W\d_]))*")
_MAX_NAME = 64


class Code:
    """
    The numbers of C{ERR} replies (docs/grades.md section 5).
    """

    SYNTAX = 400  # the line cannot be read, or an argument is malformed
    NOT_LOGGED_IN = 401  # this needs a login first
    FORBIDDEN = 403  # not yours to see or change
    NOT_FOUND = 404  # no such student, course or grade
    SEQUENCE = 409  # the commands came in an order that does not work
    TOO_LARGE = 413  # a line or block over the limits
    CLOSING = 421  # the server is closing this connection
    LOGIN_FAILED = 430  # wrong user name or password
    TLS_REQUIRED = 431  # log in over TLS only
    INTERNAL = 500  # the server failed; nothing was changed
    UNAVAILABLE = 503  # the database cannot be reached now; try again
    VERSION = 505  # HELLO named a level this server does not speak


class GradesError(ReplyError):
    """
    A refusal: C{ERR <code> <text>} on the wire.
    """


@dataclass(frozen=True)
class Command:
    """
    One command line: its verb (upper case) and its arguments, split on
    single spaces or tabs.
    """

    verb: str
    args: tuple[str, ...]
    rest: str = ""


def parseCommand(line: bytes) -> Command:
    """
    Read one command line (no line ending).

    @raise GradesError: if it is not UTF-8 text, is empty, holds control
        characters, or names no known verb.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise GradesError(Code.SYNTAX, "the line is not UTF-8 text")
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
        raise GradesError(Code.SYNTAX, "control characters are not allowed in a command")
    text = text.strip(" \t")
    if not text:
        raise GradesError(Code.SYNTAX, "empty line; try HELP")
    verb, _, rest = text.partition(" ")
    if "\t" in verb:
        verb, _, more = verb.partition("\t")
        rest = (more + " " + rest).strip()
    verb = verb.upper()
    if verb not in VERBS:
        raise GradesError(Code.SYNTAX, f"unknown command {verb[:32]}; try HELP")
    rest = rest.strip(" \t")
    return Command(verb, tuple(rest.split()), rest)


def checkArgs(command: Command, least: int, most: int, usage: str) -> tuple[str, ...]:
    """
    The command's arguments, if there are C{least} to C{most} of them.

    @raise GradesError: with the usage, if not.
    """
    if not least <= len(command.args) <= most:
        raise GradesError(Code.SYNTAX, f"usage: {usage}")
    return command.args


def parseId(text: str) -> str:
    """
    A student id: 1 to 16 digits, leading zeros kept (C{051883261}).
    """
    if not _ID.fullmatch(text):
        raise GradesError(Code.SYNTAX, f"bad student id {text[:32]!r}: use 1-16 digits")
    return text


def parseCourse(text: str) -> str:
    """
    A course name, upper-cased: a letter, then up to 31 letters, digits,
    C{_} or C{-} (C{MATH}, C{CS-101}).
    """
    course = text.upper()
    if not _COURSE.fullmatch(course) or not course.isascii():
        raise GradesError(Code.SYNTAX, f"bad course {text[:40]!r}: a letter, then up to 31 of A-Z 0-9 _ -")
    return course


def checkGrade(value: int) -> int:
    if not 0 <= value <= 100:
        raise GradesError(Code.SYNTAX, f"a grade is 0 to 100, not {value}")
    return value


def parseGrade(text: str) -> tuple[int, bool]:
    """
    A grade for SET: C{87} (set it) or C{+5} / C{-3} (change it by so much).

    @return: the number, and whether it is a change rather than a value.
    """
    m = _GRADE.fullmatch(text)
    if m is None:
        raise GradesError(Code.SYNTAX, f"bad grade {text[:16]!r}: 0 to 100, or +N / -N to change it")
    sign, digits = m.groups()
    if sign:
        return int(sign + digits), True
    return checkGrade(int(digits)), False


def parseName(text: str) -> str:
    """
    A student's name: letters, with single spaces, apostrophes, dots or
    hyphens between them, at most 64 characters (C{DAN HACKER}).  No
    digits, commas or quotes: a name is a plain reply line and a plain CSV
    field, and never starts like a status (C{ERR}, C{OK}, C{LIST}).
    """
    if len(text) > _MAX_NAME or not _NAME.fullmatch(text):
        raise GradesError(
            Code.SYNTAX, f"bad name {text[:40]!r}: letters, single spaces, ' . - between them, at most {_MAX_NAME}"
        )
    first = text.split(" ", 1)[0].upper()
    if first in ("ERR", "OK", "LIST", "READY", "BYE"):
        raise GradesError(Code.SYNTAX, f"a name may not start with the word {first}")
    return text


# -- replies -------------------------------------------------------------------


def formatLine(text: str) -> bytes:
    return text.encode("utf-8") + b"\n"


def formatError(code: int, text: str) -> bytes:
    return formatLine(f"ERR {code} {text}")


def formatList(lines: list[str]) -> bytes:
    """
    C{LIST <n>} and the n lines (the extended level's multi-line reply).
    """
    return formatLine(f"LIST {len(lines)}") + b"".join(formatLine(line) for line in lines)


def parseError(line: str) -> GradesError | None:
    """
    The refusal a reply line carries, or L{None} if it is not C{ERR}.
    """
    if not line.startswith("ERR "):
        return None
    code, _, text = line[4:].partition(" ")
    if not code.isdigit():
        return GradesError(Code.INTERNAL, line)
    return GradesError(int(code), text)


# -- CSV (IMPORT, EXPORT) ---------------------------------------------------------

CSV_HEADER = "id,name,course,grade"


@dataclass(frozen=True)
class Row:
    """
    One line of an IMPORT or EXPORT: a student's grade in a course.
    """

    id: str
    name: str
    course: str
    grade: int

    def csv(self) -> str:
        return f"{self.id},{self.name},{self.course},{self.grade}"


def parseCSV(data: bytes, maxRows: int = 100_000) -> list[Row]:
    """
    Read an IMPORT block: UTF-8 lines C{id,name,course,grade}, an optional
    header line C{id,name,course,grade} first, blank lines ignored.

    @raise GradesError: naming the first bad line; nothing is imported.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise GradesError(Code.SYNTAX, "the CSV is not UTF-8 text")
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or (number == 1 and line.replace(" ", "").lower() == CSV_HEADER):
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) != 4:
                raise GradesError(Code.SYNTAX, f"{len(fields)} fields, not 4 (id,name,course,grade)")
            grade, change = parseGrade(fields[3])
            if change:
                raise GradesError(Code.SYNTAX, "a grade in a CSV is a value, not a change")
            rows.append(Row(parseId(fields[0]), parseName(fields[1]), parseCourse(fields[2]), grade))
        except GradesError as e:
            raise GradesError(Code.SYNTAX, f"CSV line {number}: {e.message}")
        if len(rows) > maxRows:
            raise GradesError(Code.TOO_LARGE, f"more than {maxRows} rows in one IMPORT")
    return rows
