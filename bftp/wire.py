"""
The BFTP wire format, pure: no transport, no reactor.

Commands and replies are CRLF-terminated UTF-8 lines; file data travels as
chunks, each behind an 8-hex-digit length header, ended by a zero-length
chunk.  docs/bftp.md is the specification this module follows.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from dataclasses import dataclass

from coursenet.errors import ReplyError

VERSION = "BFTP/1"
SUPPORTED_VERSIONS = (VERSION,)

#: The longest command or reply line, CRLF excluded.
MAX_LINE = 4096
#: The largest chunk a peer may send; both sides enforce it.
MAX_CHUNK = 1 << 20
#: The chunk size senders use.
CHUNK_SIZE = 1 << 20
#: Limits on names and on whole (resolved) paths, in UTF-8 bytes.
MAX_NAME = 255
MAX_PATH = 1024

HEADER_LEN = 8
END_OF_DATA = b"00000000"


class Code(enum.IntEnum):
    """
    Reply codes.  The first digit is the class: 1 data follows, 2 done,
    3 more is needed from the client, 4 transient failure (try again later),
    5 permanent failure (do not retry the same command).
    """

    DATA_FOLLOWS = 150
    OK = 200
    STATUS = 211
    LISTING = 212
    DIGEST = 213
    HELP = 214
    READY = 220
    BYE = 221
    TRANSFER_DONE = 226
    LOGGED_IN = 230
    FILE_OK = 250
    PATH_CREATED = 257
    NEED_PASSWORD = 331
    SEND_DATA = 350
    CLOSING = 421
    BUSY = 450
    LOCAL_ERROR = 451
    NO_SPACE = 452
    SYNTAX = 500
    BAD_ARGUMENT = 501
    BAD_SEQUENCE = 503
    BAD_VERSION = 505
    NOT_LOGGED_IN = 530
    PERMISSION = 534
    NOT_FOUND = 550
    EXISTS = 551
    TOO_LARGE = 552
    BAD_NAME = 553
    DIGEST_MISMATCH = 554
    WRONG_TYPE = 555


class ProtocolError(ReplyError):
    """
    Input that breaks the protocol.  Carries the reply that explains it.
    """


class FramingError(ProtocolError):
    """
    A chunk header that cannot be read: the data stream is lost.

    @ivar pieces: the payload found before the bad header in the same
        L{ChunkDecoder.feed} call, which is good data all the same.
    """

    pieces: list[memoryview] = []


def formatReply(code: int, text: str) -> bytes:
    """
    One reply line, CRLF included.  Control characters in C{text} are
    replaced so a reply is always exactly one line.
    """
    clean = "".join(c if c.isprintable() else "?" for c in text)
    line = f"{int(code)} {clean}".encode("utf-8")
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE].decode("utf-8", "ignore").encode("utf-8")
    return line + b"\r\n"


def formatMultiline(code: int, lines: list[str], last: str) -> bytes:
    """
    A multi-line reply: C{NNN-line} for each of C{lines}, then C{NNN last}.
    """
    out = []
    for line in lines:
        out.append(formatReply(code, line).replace(b" ", b"-", 1))
    out.append(formatReply(code, last))
    return b"".join(out)


_REPLY = re.compile(rb"^([1-5][0-9][0-9])([ -])(.*)$", re.S)


def parseReply(line: bytes) -> tuple[int, bool, str]:
    """
    Split a reply line into C{(code, isLast, text)}.

    @raise ProtocolError: if the line is not a reply.
    """
    m = _REPLY.match(line)
    if m is None:
        raise ProtocolError(Code.SYNTAX, f"not a BFTP reply: {line[:80]!r}")
    return int(m.group(1)), m.group(2) == b" ", m.group(3).decode("utf-8", "replace")


@dataclass(frozen=True)
class Command:
    """
    A parsed command line: an upper-case verb and its arguments.
    """

    verb: str
    args: tuple[str, ...]
    #: Everything after the verb and one space, for PASS (spaces allowed).
    rest: str
    #: The line for logs; a password never reaches it.
    raw: str


def parseCommand(line: bytes) -> Command:
    """
    Parse one command line (without CRLF).

    The verb is case-insensitive; arguments are separated by single spaces.
    Path arguments are percent-encoded by the sender (L{encodePath}) and
    decoded by the command that takes them, so this only splits.

    @raise ProtocolError: for an empty line, non-UTF-8 text or control
        characters.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Code.SYNTAX, "command is not valid UTF-8")
    if any(not c.isprintable() for c in text):
        raise ProtocolError(
            Code.SYNTAX, "control character in command; percent-encode it"
        )
    parts = text.split(" ")
    verb = parts[0].upper()
    if not verb:
        raise ProtocolError(Code.SYNTAX, "empty command; try HELP")
    if not verb.isascii() or not verb.isalpha():
        raise ProtocolError(Code.SYNTAX, f"unknown command {parts[0][:32]!r}; try HELP")
    args = tuple(p for p in parts[1:] if p != "")
    rest = text[len(parts[0]) + 1 :]
    return Command(verb, args, rest, "PASS ***" if verb == "PASS" else text)


def encodePath(path: str) -> str:
    """
    Percent-encode a path for a command or listing: a space, C{%} and any
    character that is not printable become C{%XX} of their UTF-8 bytes;
    everything else, non-ASCII letters included, stays as it is.
    """
    return "".join(
        c if c.isprintable() and c not in " %" else urllib.parse.quote(c, safe="")
        for c in path
    )


def decodePath(arg: str) -> str:
    """
    Decode a percent-encoded path argument and check what it may contain.

    @raise ProtocolError: (553) for invalid escapes, non-UTF-8 bytes, NUL or
        other control characters, or names and paths over the limits.
    """
    if re.search(r"%(?![0-9A-Fa-f]{2})", arg):
        raise ProtocolError(Code.BAD_NAME, "bad percent escape in path")
    raw = urllib.parse.unquote_to_bytes(arg)
    if len(raw) > MAX_PATH:
        raise ProtocolError(Code.BAD_NAME, f"path longer than {MAX_PATH} bytes")
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Code.BAD_NAME, "path is not valid UTF-8")
    if any(not c.isprintable() and c != " " for c in path):
        raise ProtocolError(Code.BAD_NAME, "control character (or NUL) in path")
    for name in path.split("/"):
        if len(name.encode("utf-8")) > MAX_NAME:
            raise ProtocolError(Code.BAD_NAME, f"name longer than {MAX_NAME} bytes")
    return path


def decodeOffset(arg: str) -> int:
    """
    Parse a decimal byte offset.

    @raise ProtocolError: (501) unless it is a non-negative decimal integer.
    """
    if not arg.isascii() or not arg.isdigit() or len(arg) > 20:
        raise ProtocolError(Code.BAD_ARGUMENT, f"offset must be a decimal number, got {arg[:32]!r}")
    return int(arg)


def chunkHeader(length: int) -> bytes:
    """
    The 8-hex-digit header for a chunk of C{length} bytes.
    """
    if not 0 <= length <= MAX_CHUNK:
        raise ValueError(f"chunk of {length} bytes")
    return b"%08x" % (length,)


class ChunkDecoder:
    """
    Turn a stream of bytes into chunk payloads, up to the zero-length chunk
    that ends the data.

    Feed it with L{feed}; it returns the payload pieces found (memoryviews
    into the input, valid until the next call) and, once the end chunk is
    seen, sets L{done} and keeps what came after it in L{rest}.
    """

    def __init__(self, maxChunk: int = MAX_CHUNK) -> None:
        self.maxChunk = maxChunk
        self.done = False
        self.rest = b""
        self.received = 0
        self._header = b""
        self._remaining = 0

    @property
    def payloadLeft(self) -> int:
        """
        Bytes of the current chunk's payload still to come: 0 between
        chunks.
        """
        return self._remaining

    @property
    def headerNeed(self) -> int:
        """
        Bytes still to come of the next chunk header: 0 inside a payload
        and once the end chunk is seen.
        """
        if self.done or self._remaining:
            return 0
        return HEADER_LEN - len(self._header)

    def took(self, n: int) -> None:
        """
        The next C{n} bytes of the current payload were taken from the
        stream without passing through L{feed} (spliced into a file).
        """
        if not 0 < n <= self._remaining:
            raise ValueError(f"took {n} bytes of a payload with {self._remaining} left")
        self._remaining -= n
        self.received += n

    def feed(self, data: bytes) -> list[memoryview]:
        """
        @raise FramingError: for a header that is not 8 hex digits or that
            announces more than C{maxChunk} bytes; its C{pieces} are the
            payload that came before it in C{data}.
        """
        if self.done:
            self.rest += data
            return []
        view = memoryview(data)
        pieces = []
        pos, end = 0, len(view)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                pieces.append(view[pos : pos + take])
                self._remaining -= take
                self.received += take
                pos += take
                continue
            need = HEADER_LEN - len(self._header)
            self._header += bytes(view[pos : pos + need])
            pos += min(need, end - pos)
            if len(self._header) < HEADER_LEN:
                break
            header, self._header = self._header, b""
            try:
                length = _parseHeader(header, self.maxChunk)
            except FramingError as e:
                e.pieces = pieces
                raise
            if length == 0:
                self.done = True
                self.rest = bytes(view[pos:])
                break
            self._remaining = length
        return pieces


def _parseHeader(header: bytes, maxChunk: int) -> int:
    if not re.fullmatch(rb"[0-9a-fA-F]{8}", header):
        raise FramingError(
            Code.SYNTAX,
            f"bad chunk header {header!r}: expected 8 hex digits; data stream lost",
        )
    length = int(header, 16)
    if length > maxChunk:
        raise FramingError(
            Code.TOO_LARGE,
            f"chunk of {length} bytes exceeds the limit of {maxChunk}; data stream lost",
        )
    return length
