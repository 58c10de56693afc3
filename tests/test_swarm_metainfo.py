"""
Metainfo: .torrent files made from files and directories read back as
they were; hostile ones (path escapes, bad sizes, not bencode) refused with
a reason, never with another exception.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from fastbencode import bencode
from hypothesis import given
from hypothesis import strategies as st

from swarm.metainfo import MetainfoError, makeMetainfo, parseMetainfo
from swarm.storage import Storage, downloadPaths


def _info(**overrides):
    info = {b"name": b"f.bin", b"piece length": 1 << 14, b"length": 10, b"pieces": bytes(20)}
    info.update({k.replace("_", " ").encode(): v for k, v in overrides.items()})
    return bencode({b"announce": b"http://127.0.0.1:1/announce", b"info": info})


def test_singleFileRoundTrip(tmp_path):
    """A file's .torrent names it, gives its length, one SHA-1 a piece, and the info hash of its info dict."""
    data = os.urandom(100_000)
    (tmp_path / "f.bin").write_bytes(data)
    meta = parseMetainfo(makeMetainfo(str(tmp_path / "f.bin"), "http://127.0.0.1:1/announce", 1 << 15))
    assert (meta.name, meta.length, meta.single, meta.numPieces) == ("f.bin", 100_000, True, 4)
    assert meta.pieces[3] == hashlib.sha1(data[3 << 15:]).digest()
    assert meta.pieceSize(3) == 100_000 - 3 * (1 << 15)
    assert meta.announce == "http://127.0.0.1:1/announce"


def test_directoryRoundTripAndStorageSpansFiles(tmp_path):
    """A directory's .torrent lists its files in order; pieces span file boundaries and verify."""
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a" * 20_000)
    (root / "sub" / "b.txt").write_bytes(b"b" * 30_000)
    (root / "empty").write_bytes(b"")
    meta = parseMetainfo(makeMetainfo(str(root), None, 1 << 14))
    assert not meta.single
    assert [(f.path, f.length) for f in meta.files] == [(("a.txt",), 20_000), (("empty",), 0), (("sub", "b.txt"), 30_000)]
    storage = Storage(meta, str(root), writable=False)
    assert storage.existing() == [True] * meta.numPieces
    assert storage.read(1, 0, 16384) == b"a" * 3616 + b"b" * 12768


@pytest.mark.parametrize("name", [b"..", b".", b"", b"a/b", b"/etc", b"a\\b", b"a\0b", b"\xff"])
def test_unsafeNameRefused(name):
    """A torrent name that is empty, a dot name, holds a separator or NUL, or is not UTF-8 is refused."""
    with pytest.raises(MetainfoError, match="info.name"):
        parseMetainfo(_info(name=name))


@pytest.mark.parametrize("path", [[b".."], [b"a", b".."], [b"/abs"], [b"a/../../x"], [], [b"ok", b""]])
def test_unsafeFilePathRefused(path):
    """A file path component that could climb out of the download directory is refused."""
    files = [{b"length": 10, b"path": path}]
    data = bencode({b"info": {b"name": b"d", b"piece length": 1 << 14, b"files": files, b"pieces": bytes(20)}})
    with pytest.raises(MetainfoError, match="path"):
        parseMetainfo(data)


def test_fileAndDirectoryClashRefused():
    """Two entries where one is a file and the other puts a file below it are refused."""
    files = [{b"length": 1, b"path": [b"a"]}, {b"length": 1, b"path": [b"a", b"b"]}]
    data = bencode({b"info": {b"name": b"d", b"piece length": 1 << 14, b"files": files, b"pieces": bytes(20)}})
    with pytest.raises(MetainfoError, match="both a file and a directory"):
        parseMetainfo(data)


def test_pieceCountMismatchRefused():
    """A torrent whose piece hashes do not cover its length is refused."""
    with pytest.raises(MetainfoError, match="hashes for"):
        parseMetainfo(_info(length=40_000))


def test_downloadPathsStayInDirectory(tmp_path):
    """The download and .part paths of an accepted torrent are inside the directory given."""
    meta = parseMetainfo(_info())
    final, part = downloadPaths(meta, str(tmp_path))
    assert os.path.dirname(final) == str(tmp_path) and part == final + ".part"


_bvalue = st.recursive(
    st.integers() | st.binary(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.binary(max_size=12), kids, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300))
def test_fuzzRawBytes(data):
    """Any bytes either parse or raise MetainfoError: nothing else escapes the parser."""
    try:
        parseMetainfo(data)
    except MetainfoError:
        pass


@given(
    name=st.binary(max_size=20),
    files=st.lists(st.fixed_dictionaries({b"length": _bvalue, b"path": st.lists(st.binary(max_size=6), max_size=3)}), max_size=3),
    extra=_bvalue,
)
def test_fuzzStructuredInfo(name, files, extra):
    """Bencoded dictionaries shaped like a torrent parse or raise MetainfoError, and what parses has only safe names."""
    data = bencode({b"info": {b"name": name, b"piece length": 1 << 14, b"files": files, b"pieces": bytes(20), b"x": extra}})
    try:
        meta = parseMetainfo(data)
    except MetainfoError:
        return
    for part in (meta.name,) + tuple(c for f in meta.files for c in f.path):
        assert part not in ("", ".", "..") and "/" not in part and "\0" not in part


def test_nonCanonicalBencodeRefused():
    """A .torrent whose keys are out of order (so its info hash is ambiguous) is refused."""
    info = bencode({b"name": b"f.bin", b"piece length": 1 << 14, b"length": 10, b"pieces": bytes(20)})
    parseMetainfo(b"d8:announce3:abc4:info" + info + b"e")  # sorted: accepted
    with pytest.raises(MetainfoError, match="disordered|not canonical"):
        parseMetainfo(b"d4:info" + info + b"8:announce3:abce")
