"""
Metainfo (BEP 3): making a C{.torrent} for a file or a directory, and
reading one safely.

Reading refuses anything a hostile C{.torrent} could use to write outside
the download directory: names that are empty, C{.} or C{..}, that hold a
C{/}, a backslash or a NUL, or that are absolute.  Bencode itself is read
and written by C{fastbencode} (Breezy's library), never by hand.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable

from fastbencode import bdecode, bencode

#: The piece length C{swarm create} picks when none is given: 256 KiB.
DEFAULT_PIECE_LENGTH = 1 << 18
#: Limits on what a C{.torrent} may declare, so a small hostile file
#: cannot make a peer allocate or open without bound.
MAX_METAINFO_BYTES = 8 << 20
MAX_FILES = 10_000
MAX_PIECE_LENGTH = 16 << 20
MIN_PIECE_LENGTH = 1 << 14
MAX_PATH_DEPTH = 32
MAX_NAME_BYTES = 255


class MetainfoError(ValueError):
    """
    A C{.torrent} that is malformed or unsafe; the message says which field
    and why.
    """


@dataclass(frozen=True)
class FileEntry:
    """
    One file of a torrent: its path below the torrent's name (a tuple of
    checked components; empty for a single-file torrent), its length, and
    its offset in the torrent's byte stream.
    """

    path: tuple[str, ...]
    length: int
    offset: int


@dataclass(frozen=True)
class Metainfo:
    """
    A parsed C{.torrent}.

    @ivar infoHash: SHA-1 of the bencoded C{info} dictionary (20 bytes);
        only canonical bencode is accepted, so these are its bytes in the
        file.
    @ivar single: whether the torrent is one file (C{name} is the file) or a
        directory (C{name} is the directory, C{files} below it).
    """

    announce: str | None
    name: str
    pieceLength: int
    pieces: tuple[bytes, ...]
    files: tuple[FileEntry, ...]
    single: bool
    infoHash: bytes

    @property
    def length(self) -> int:
        return sum(f.length for f in self.files)

    @property
    def numPieces(self) -> int:
        return len(self.pieces)

    def pieceSize(self, index: int) -> int:
        """
        The length of piece C{index}: C{pieceLength}, except the last.
        """
        if index == len(self.pieces) - 1:
            return self.length - self.pieceLength * index
        return self.pieceLength


def checkName(name: Any, field: str) -> str:
    """
    A file or directory name from a C{.torrent}, as a string, if it cannot
    leave the directory it is in.

    @raise MetainfoError: for empty names, C{.} and C{..}, separators,
        NUL and names that are not UTF-8.
    """
    if not isinstance(name, bytes):
        raise MetainfoError(f"{field}: not a string")
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"{field}: not UTF-8")
    if text in ("", ".", ".."):
        raise MetainfoError(f"{field}: {text!r} is not a file name")
    if "/" in text or "\\" in text or "\0" in text:
        raise MetainfoError(f"{field}: {text!r} holds a path separator or NUL (a path escape)")
    if len(name) > MAX_NAME_BYTES:
        raise MetainfoError(f"{field}: longer than {MAX_NAME_BYTES} bytes")
    return text


def _int(d: dict, key: bytes, field: str, low: int = 0) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise MetainfoError(f"{field}: missing or not an integer >= {low}")
    return value


def parseMetainfo(data: bytes) -> Metainfo:
    """
    Read a C{.torrent}.

    @raise MetainfoError: if it is not bencode, misses a field, or names a
        path that could escape the download directory.
    """
    if len(data) > MAX_METAINFO_BYTES:
        raise MetainfoError(f"metainfo larger than {MAX_METAINFO_BYTES} bytes")
    try:
        top = bdecode(data)
    except Exception as e:
        raise MetainfoError(f"not bencode ({e})") from None
    if not isinstance(top, dict):
        raise MetainfoError("metainfo is not a dictionary")
    if bencode(top) != data:
        # The info hash is the SHA-1 of info's bytes as they stand: with
        # unsorted keys or padded numbers, re-encoding would give another.
        raise MetainfoError("not canonical bencode (unsorted keys, padded numbers or trailing bytes)")
    info = top.get(b"info")
    if not isinstance(info, dict):
        raise MetainfoError("info: missing or not a dictionary")
    announce = top.get(b"announce")
    if announce is not None:
        if not isinstance(announce, bytes):
            raise MetainfoError("announce: not a string")
        try:
            announce = announce.decode("utf-8")
        except UnicodeDecodeError:
            raise MetainfoError("announce: not UTF-8") from None
    name = checkName(info.get(b"name"), "info.name")
    pieceLength = _int(info, b"piece length", "info.piece length", 1)
    if not MIN_PIECE_LENGTH <= pieceLength <= MAX_PIECE_LENGTH:
        raise MetainfoError(f"info.piece length: {pieceLength} outside {MIN_PIECE_LENGTH}..{MAX_PIECE_LENGTH}")
    pieces = info.get(b"pieces")
    if not isinstance(pieces, bytes) or len(pieces) % 20:
        raise MetainfoError("info.pieces: missing or not a multiple of 20 bytes")
    files: list[FileEntry] = []
    if b"files" in info:
        if b"length" in info:
            raise MetainfoError("info: both length and files")
        entries = info[b"files"]
        if not isinstance(entries, list) or not entries:
            raise MetainfoError("info.files: not a non-empty list")
        if len(entries) > MAX_FILES:
            raise MetainfoError(f"info.files: more than {MAX_FILES} files")
        offset = 0
        seen: set[tuple[str, ...]] = set()
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise MetainfoError(f"info.files[{i}]: not a dictionary")
            length = _int(entry, b"length", f"info.files[{i}].length")
            parts = entry.get(b"path")
            if not isinstance(parts, list) or not parts or len(parts) > MAX_PATH_DEPTH:
                raise MetainfoError(f"info.files[{i}].path: not a list of 1..{MAX_PATH_DEPTH} names")
            path = tuple(checkName(p, f"info.files[{i}].path") for p in parts)
            if path in seen:
                raise MetainfoError(f"info.files[{i}].path: {'/'.join(path)} named twice")
            seen.add(path)
            files.append(FileEntry(path, length, offset))
            offset += length
        single = False
    else:
        files.append(FileEntry((), _int(info, b"length", "info.length"), 0))
        single = True
    # Files and their parent directories must not clash ("a" and "a/b").
    dirs = {p[:k] for f in files for p in [f.path] for k in range(1, len(p))}
    clash = dirs & {f.path for f in files}
    if clash:
        raise MetainfoError(f"info.files: {'/'.join(sorted(clash)[0])} is both a file and a directory")
    total = sum(f.length for f in files)
    count = len(pieces) // 20
    if count != max(1, math.ceil(total / pieceLength)):
        raise MetainfoError(
            f"info.pieces: {count} hashes for {total} bytes in pieces of {pieceLength}"
        )
    return Metainfo(
        announce=announce,
        name=name,
        pieceLength=pieceLength,
        pieces=tuple(pieces[i:i + 20] for i in range(0, len(pieces), 20)),
        files=tuple(files),
        single=single,
        infoHash=hashlib.sha1(bencode(info)).digest(),
    )


def readMetainfo(path: str) -> Metainfo:
    """
    Read the C{.torrent} at C{path} (at most L{MAX_METAINFO_BYTES}).
    """
    with open(path, "rb") as f:
        data = f.read(MAX_METAINFO_BYTES + 1)
    return parseMetainfo(data)


def _walk(root: str) -> list[tuple[str, ...]]:
    """
    The regular files below C{root}, as sorted path tuples (symlinks are
    not followed: a torrent of a directory holds what is in it).
    """
    out = []
    for here, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        rel = os.path.relpath(here, root)
        prefix = () if rel == "." else tuple(rel.split(os.sep))
        for name in sorted(names):
            full = os.path.join(here, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(prefix + (name,))
    return sorted(out)


def _chunks(paths: Iterable[str], pieceLength: int) -> Iterable[bytes]:
    """
    The pieces of the concatenation of C{paths}, read a piece at a time.
    """
    buf = bytearray()
    for p in paths:
        with open(p, "rb") as f:
            while True:
                block = f.read(pieceLength - len(buf))
                if not block:
                    break
                buf += block
                if len(buf) == pieceLength:
                    yield bytes(buf)
                    buf.clear()
    if buf:
        yield bytes(buf)


def makeMetainfo(path: str, announce: str | None, pieceLength: int = DEFAULT_PIECE_LENGTH) -> bytes:
    """
    The bencoded C{.torrent} of the file or directory at C{path}, hashed a
    piece at a time (memory stays at one piece whatever the size).
    """
    if not MIN_PIECE_LENGTH <= pieceLength <= MAX_PIECE_LENGTH or pieceLength & (pieceLength - 1):
        raise MetainfoError(f"piece length {pieceLength}: a power of two in {MIN_PIECE_LENGTH}..{MAX_PIECE_LENGTH}")
    path = os.path.abspath(path)
    name = os.path.basename(path.rstrip(os.sep))
    info: dict[bytes, Any] = {b"name": name.encode("utf-8"), b"piece length": pieceLength}
    if os.path.isdir(path):
        rels = _walk(path)
        if not rels:
            raise MetainfoError(f"{path}: no files in this directory")
        info[b"files"] = [
            {b"length": os.path.getsize(os.path.join(path, *r)), b"path": [c.encode("utf-8") for c in r]}
            for r in rels
        ]
        paths = [os.path.join(path, *r) for r in rels]
    else:
        info[b"length"] = os.path.getsize(path)
        paths = [path]
    hashes = b"".join(hashlib.sha1(c).digest() for c in _chunks(paths, pieceLength))
    info[b"pieces"] = hashes or hashlib.sha1(b"").digest()
    top: dict[bytes, Any] = {b"info": info, b"created by": b"coursenet swarm"}
    if announce:
        top[b"announce"] = announce.encode("utf-8")
    data = bencode(top)
    parseMetainfo(data)  # what we write, we can read
    return data
