"""
Where a torrent's bytes live: a file or a directory tree, read and written
a block at a time, so memory stays flat whatever the torrent's size.

A download writes into C{NAME.part} (a file, or a directory for a
multi-file torrent) beside the final name, and renames it to C{NAME} once
every piece has been verified: a half-downloaded file never sits under its
real name.  A C{.part} left by an earlier run is re-verified piece by piece
and its good pieces kept (resume).
"""

from __future__ import annotations

import collections
import hashlib
import os
from typing import BinaryIO

from zope.interface import implementer

from swarm.interfaces import IPieceStorage
from swarm.metainfo import Metainfo

#: Files kept open at once (a torrent may have thousands).
OPEN_FILES = 16


@implementer(IPieceStorage)
class Storage:
    """
    The bytes of one torrent below C{root}, the path of the file (single
    file torrent) or directory (multi-file) that holds them.
    """

    def __init__(self, meta: Metainfo, root: str, writable: bool) -> None:
        self.meta = meta
        self.root = root
        self.writable = writable
        self._open: collections.OrderedDict[int, BinaryIO] = collections.OrderedDict()

    def _path(self, i: int) -> str:
        f = self.meta.files[i]
        return self.root if self.meta.single else os.path.join(self.root, *f.path)

    def _file(self, i: int) -> BinaryIO:
        f = self._open.get(i)
        if f is not None:
            self._open.move_to_end(i)
            return f
        path = self._path(i)
        if self.writable:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            f = os.fdopen(fd, "r+b")
        else:
            f = open(path, "rb")
        self._open[i] = f
        if len(self._open) > OPEN_FILES:
            self._open.popitem(last=False)[1].close()
        return f

    def _spans(self, offset: int, length: int):
        """
        C{(file index, offset in it, length)} for the bytes
        C{offset..offset+length} of the torrent's stream.
        """
        for i, f in enumerate(self.meta.files):
            if length <= 0:
                break
            if offset >= f.offset + f.length or f.length == 0:
                continue
            start = offset - f.offset
            n = min(length, f.length - start)
            yield i, start, n
            offset += n
            length -= n

    def read(self, index: int, begin: int, length: int) -> bytes:
        """
        C{length} bytes from C{begin} in piece C{index} (the caller has
        checked they are inside it).
        """
        out = []
        for i, start, n in self._spans(index * self.meta.pieceLength + begin, length):
            f = self._file(i)
            f.seek(start)
            data = f.read(n)
            if len(data) != n:
                data += bytes(n - len(data))  # not yet written: a hole
            out.append(data)
        return b"".join(out)

    def write(self, index: int, begin: int, data: bytes) -> None:
        pos = 0
        for i, start, n in self._spans(index * self.meta.pieceLength + begin, len(data)):
            f = self._file(i)
            f.seek(start)
            f.write(data[pos:pos + n])
            pos += n

    def verify(self, index: int) -> bool:
        """
        Whether piece C{index} as stored has the SHA-1 the metainfo gives.
        """
        size = self.meta.pieceSize(index)
        h = hashlib.sha1()
        for begin in range(0, size, 1 << 18):
            h.update(self.read(index, begin, min(1 << 18, size - begin)))
        return h.digest() == self.meta.pieces[index]

    def existing(self) -> list[bool]:
        """
        Which pieces are already here and good (each one read and hashed).
        """
        if not os.path.exists(self.root):
            return [False] * self.meta.numPieces
        return [self.verify(i) for i in range(self.meta.numPieces)]

    def create(self) -> None:
        """
        Make every file of the torrent at its full length (sparse), so a
        finished download has them all, empty ones included.
        """
        for i, f in enumerate(self.meta.files):
            fh = self._file(i)
            fh.truncate(f.length)
            fh.flush()

    def flush(self) -> None:
        for f in self._open.values():
            f.flush()

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def renameTo(self, final: str) -> None:
        """
        Flush, close and move the data to C{final} (the download is done).
        """
        self.flush()
        for f in self._open.values():
            os.fsync(f.fileno())
        self.close()
        os.replace(self.root, final)
        self.root = final
        self.writable = False


def downloadPaths(meta: Metainfo, directory: str) -> tuple[str, str]:
    """
    The final path of a torrent downloaded into C{directory}, and its
    C{.part} path.  The name was checked when the metainfo was read, so
    both stay inside C{directory}.
    """
    final = os.path.join(directory, meta.name)
    return final, final + ".part"
