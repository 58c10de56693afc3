"""
What is on disk before a success reply is sent: each test records every
fsync (of which file or directory), rename and reply of one operation, in
the order they happen, and compares the whole list with the order that
makes the reply true after a crash.  Removing any one fsync from the code
makes its test fail.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from bftp.fs import PARTIAL_PREFIX
from tests.bftp_support import LOGIN, FakeReactor, Raw, connected, makeFactory


class Recorder:
    """
    One list of what happened, in order: C{("fsync", path)},
    C{("rename", src, dst)}, C{("reply", line)}.
    """

    def __init__(self, monkeypatch, root: str) -> None:
        self.root = str(root)
        self.events: list[tuple] = []
        for name in ("rename", "replace"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._renamer(real))

    def _short(self, path) -> str:
        return os.path.relpath(os.fsdecode(path), self.root)

    def _renamer(self, real):
        def rename(src, dst, *args, **kwargs):
            self.events.append(("rename", self._short(src), self._short(dst)))
            return real(src, dst, *args, **kwargs)

        return rename

    def fsync(self, fd: int) -> None:
        """
        Stands in for C{os.fsync}: records the file C{fd} is open on.
        """
        self.events.append(("fsync", self._short(os.readlink(f"/proc/self/fd/{fd}"))))

    def fsyncDirectory(self, path: str) -> None:
        """
        Stands in for L{mail.maildir.fsyncDirectory}.
        """
        self.events.append(("fsync", self._short(path)))

    def replies(self, write):
        """
        Wrap a transport's C{write}: each reply line is recorded as sent.
        """

        def recording(data: bytes) -> None:
            for line in bytes(data).split(b"\r\n"):
                if line:
                    self.events.append(("reply", line[:3]))
            write(data)

        return recording

    def clear(self) -> None:
        del self.events[:]


# -- BFTP ---------------------------------------------------------------------


def test_bftp_upload_synced_renamed_then_226(tmp_path, monkeypatch):
    """A PUT's data is fsync'd, renamed over the target and the directory fsync'd, all before 226."""
    root = tmp_path / "root"
    root.mkdir()
    record = Recorder(monkeypatch, root)
    fake = FakeReactor()
    factory = makeFactory(root, fake, fsync=record.fsync)
    client, server, pump = connected(factory, fake, Raw)
    server.transport.write = record.replies(server.transport.write)
    client.transport.write(LOGIN + b"PUT a.txt\r\n")
    pump.flush()
    data = b"new contents\n"
    record.clear()
    client.transport.write(
        b"%08x" % len(data) + data + b"00000000" + hashlib.sha256(data).hexdigest().encode() + b"\r\n"
    )
    pump.flush()
    partial = PARTIAL_PREFIX + "a.txt"
    assert record.events == [
        ("fsync", partial),
        ("rename", partial, "a.txt"),
        ("fsync", "."),
        ("reply", b"226"),
    ]
    assert (root / "a.txt").read_bytes() == data
