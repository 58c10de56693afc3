"""
The root jail: a corpus of path escapes, tried with every command that
takes a path, must be refused with 553 and touch nothing outside the root.
"""

from __future__ import annotations

import os

import pytest

from bftp.fs import Jail
from bftp.wire import Code, ProtocolError
from tests.bftp_support import LOGIN, FakeReactor, Raw, connected, makeFactory

ESCAPES = [
    "..",
    "../outside.txt",
    "/../outside.txt",
    "docs/../../outside.txt",
    "./../outside.txt",
    "%2e%2e/outside.txt",
    "..%2Foutside.txt",
    "linkdir/outside.txt",
    "linkfile",
    "dangling",
    "docs/deeplink/outside.txt",
    "a%00b",
    "%ff%fe",
    "x" * 300,
    "new%0Aline",
    ".bftp-partial.x",
]

COMMANDS = ["GET {}", "PUT {}", "STAT {}", "LIST {}", "CD {}", "DELETE {}", "MKDIR {}", "RMDIR {}", "HASH {}", "RENAME a.txt {}", "RENAME {} z"]


@pytest.fixture
def tree(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a")
    os.symlink(tmp_path, root / "linkdir")
    os.symlink(outside, root / "linkfile")
    os.symlink(tmp_path / "nothing-here", root / "dangling")
    os.symlink(tmp_path, root / "docs" / "deeplink")
    os.symlink("../a.txt", root / "docs" / "inside")
    return tmp_path, root


def snapshot(path):
    return sorted(
        (os.path.relpath(os.path.join(d, f), path), os.lstat(os.path.join(d, f)).st_size)
        for d, dirs, files in os.walk(path)
        for f in files + dirs
    )


@pytest.mark.parametrize("escape", ESCAPES)
def test_escapesRefused(tree, escape):
    """Every command naming an escaping path gets 553 and nothing on disk changes, inside or out."""
    top, root = tree
    before = snapshot(top)
    fake = FakeReactor()
    factory = makeFactory(root, fake)
    client, server, pump = connected(factory, fake, Raw)
    client.transport.write(LOGIN)
    pump.flush()
    for template in COMMANDS:
        client.data = b""
        client.transport.write(template.format(escape).encode() + b"\r\n")
        pump.flush()
        reply = client.data.decode()
        assert reply.startswith("553 "), (template, escape, reply)
    assert snapshot(top) == before
    assert not server._openFiles


def test_absolutePathsStayInside(tree):
    """An absolute path names a file below the root, never the real file system's."""
    top, root = tree
    jail = Jail(str(root))
    assert jail.resolve("/docs", "/etc/passwd") == "/etc/passwd"
    assert jail.real("/etc/passwd") == os.path.join(jail.root, "etc/passwd")


def test_symlinkInsideAllowed(tree):
    """A symbolic link that stays inside the root can be followed."""
    top, root = tree
    jail = Jail(str(root))
    assert jail.stat("/docs/inside").st_size == 1


def test_resolveNormalises(tree):
    """. and .. inside the root and repeated slashes normalise to one canonical path."""
    top, root = tree
    jail = Jail(str(root))
    assert jail.resolve("/docs", "./x/..//y/.") == "/docs/y"
    with pytest.raises(ProtocolError) as e:
        jail.resolve("/", "docs/../..")
    assert e.value.code == Code.BAD_NAME
