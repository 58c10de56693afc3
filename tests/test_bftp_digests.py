"""
Digest negotiation (docs/bftp.md section 8.4, issue 14): BLAKE3 when both
ends have it, SHA-256 with any peer that negotiates nothing, HASH giving
SHA-256 unless asked, and a mismatch caught by either algorithm.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted

from bftp import digests
from bftp.transfer import digestXattr
from tests.bftp_support import LOGIN, PASSWORD, USER, FakeReactor, Raw, connected, makeFactory, result

pytestmark = pytest.mark.skipif(digests.BLAKE3 not in digests.AVAILABLE, reason="the blake3 package is a dependency")


@pytest.fixture
def fake():
    return FakeReactor()


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    (r / "a.bin").write_bytes(os.urandom(300_000))
    return r


def hexOf(algorithm: str, data: bytes) -> str:
    h = digests.new(algorithm)
    h.update(data)
    return h.hexdigest()


def raw(root, fake, *sends, **kwargs):
    factory = makeFactory(root, fake, **kwargs)
    client, server, pump = connected(factory, fake, Raw)
    for s in sends:
        client.transport.write(s)
        pump.flush()
    return client.lines(), client


def client(root, fake, **kwargs):
    factory = makeFactory(root, fake, **kwargs)
    c, server, pump = connected(factory, fake)
    result(c.hello(), pump)
    result(c.login(USER, PASSWORD), pump)
    return c, server, pump


def test_oldClientGetsSHA256AndAnUnchangedReply(root, fake):
    """A client that offers nothing sees the HELLO reply it always did, and GET and PUT use SHA-256."""
    data = (root / "a.bin").read_bytes()
    up = b"new file"
    factory = makeFactory(root, fake)
    rawClient, server, pump = connected(factory, fake, Raw)
    for s in (LOGIN, b"GET a.bin\r\n"):
        rawClient.transport.write(s)
        pump.flush()
    assert rawClient.data.split(b"\r\n")[1] == b"200 BFTP/1 max-line=4096 max-chunk=1048576 max-file-size=0"
    assert rawClient.data.endswith(f"226 {hexOf('sha256', data)} sent {len(data)} bytes\r\n".encode())
    lines, _ = raw(
        root, fake, LOGIN, b"PUT up.txt\r\n",
        b"%08x" % len(up) + up + b"00000000" + hexOf("sha256", up).encode() + b"\r\n",
    )
    assert lines[-1] == f"226 {hexOf('sha256', up)} stored {len(up)} bytes"


def test_newClientAndNewServerAgreeOnBLAKE3(root, fake, tmp_path):
    """Offered by the client and had by the server, BLAKE3 is chosen; get and put return and check BLAKE3 digests."""
    c, server, pump = client(root, fake)
    assert c.digest == "blake3" and c.serverInfo.endswith(" digest=blake3")
    data = (root / "a.bin").read_bytes()
    assert result(c.get("/a.bin", str(tmp_path / "copy")), pump) == hexOf("blake3", data)
    (tmp_path / "up").write_bytes(b"x" * 70_000)
    assert result(c.put(str(tmp_path / "up"), "/up"), pump) == hexOf("blake3", b"x" * 70_000)
    assert (root / "up").read_bytes() == b"x" * 70_000


def test_newClientAndOldStyleServer(root, fake, tmp_path):
    """A server that negotiates nothing ignores the offer, says no digest=, and the client falls back to SHA-256."""
    c, server, pump = client(root, fake, digestAlgorithms=())
    assert c.digest == "sha256" and "digest=" not in c.serverInfo
    data = (root / "a.bin").read_bytes()
    assert result(c.get("/a.bin", str(tmp_path / "copy")), pump) == hashlib.sha256(data).hexdigest()
    (tmp_path / "up").write_bytes(b"y" * 5000)
    assert result(c.put(str(tmp_path / "up"), "/up"), pump) == hashlib.sha256(b"y" * 5000).hexdigest()


def test_serverWithoutBLAKE3AnswersSHA256(root, fake):
    """A server that has only SHA-256 answers the offer with digest=sha256."""
    c, *_ = client(root, fake, digestAlgorithms=("sha256",))
    assert c.digest == "sha256" and c.serverInfo.endswith(" digest=sha256")


def test_serverPicksItsPreferenceAmongTheOffer(root, fake):
    """The server picks by its own order of preference, whatever order the client offers in; unknown names are skipped."""
    lines, _ = raw(root, fake, b"HELLO BFTP/1 digest=md5,sha256,blake3\r\n")
    assert lines[1].endswith(" digest=blake3")
    lines, _ = raw(root, fake, b"HELLO BFTP/1 digest=md5\r\n")
    assert lines[1].endswith(" digest=sha256")


def test_hashIsSHA256UnlessAsked(root, fake):
    """HASH alone gives SHA-256 (what sha256sum prints); HASH path blake3 gives BLAKE3; an unknown name is a 501 that lists what there is."""
    data = (root / "a.bin").read_bytes()
    lines, _ = raw(root, fake, LOGIN, b"HASH a.bin\r\n", b"HASH a.bin BLAKE3\r\n", b"HASH a.bin md5\r\n")
    assert lines[4] == f"213 {hashlib.sha256(data).hexdigest()} /a.bin"
    assert lines[5] == f"213 {hexOf('blake3', data)} /a.bin"
    assert lines[6] == "501 unknown digest algorithm md5; this server has blake3 sha256"


@pytest.mark.parametrize("algorithm, title", [("sha256", "SHA-256"), ("blake3", "BLAKE3")])
def test_putMismatchCaughtByEachAlgorithm(root, fake, algorithm, title):
    """A PUT whose digest line is not the data's digest by the negotiated algorithm gets 554 naming it, and nothing is stored."""
    data = b"payload" * 1000
    wrong = hexOf(algorithm, data + b"!")
    lines, _ = raw(
        root, fake, f"HELLO BFTP/1 digest={algorithm}\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n".encode(), b"PUT p\r\n",
        b"%08x" % len(data) + data + b"00000000" + wrong.encode() + b"\r\n",
    )
    assert lines[-1].startswith(f"554 /p: {title} mismatch, the server received data hashing to {hexOf(algorithm, data)}")
    assert not (root / "p").exists()


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_getMismatchCaughtByEachAlgorithm(root, fake, tmp_path, algorithm):
    """When the digest after a GET's data is not the data's, the client raises 554 and keeps nothing, with either algorithm."""
    factory = makeFactory(root, fake, digestAlgorithms=(algorithm,))
    st = os.stat(root / "a.bin")
    factory.digests.remember(st, "0" * 64, algorithm)  # what a corrupt cache would say
    c, server, pump = connected(factory, fake)
    result(c.hello(), pump)
    result(c.login(USER, PASSWORD), pump)
    assert c.digest == algorithm
    with pytest.raises(Exception) as e:
        result(c.get("/a.bin", str(tmp_path / "copy")), pump)
    assert getattr(e.value, "code", None) == 554 and digests.title(algorithm) in str(e.value)
    assert not (tmp_path / "copy").exists() and not (tmp_path / "copy.bftp-part").exists()


def test_storedDigestsAreKeptPerAlgorithm(root, fake, tmp_path):
    """A verified BLAKE3 upload stores its digest under user.bftp.blake3, and a later SHA-256 HASH does not take it for SHA-256."""
    probe = root / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.test", b"1")
    except OSError:
        pytest.skip("this file system keeps no user extended attributes")
    c, server, pump = client(root, fake)
    (tmp_path / "up").write_bytes(b"z" * 10_000)
    result(c.put(str(tmp_path / "up"), "/up"), pump)
    stored = os.getxattr(root / "up", digestXattr("blake3")).decode()
    assert stored.endswith(":" + hexOf("blake3", b"z" * 10_000))
    assert result(c.hash("/up"), pump) == hashlib.sha256(b"z" * 10_000).hexdigest()


@pytest_twisted.ensureDeferred
async def test_connectOffersWhatItIsTold(reactor, tmp_path):
    """connect(digests=...) offers those algorithms: () behaves as a client from before negotiation, ("sha256",) gets SHA-256."""
    from bftp.client import connect
    from tests.test_bftp_integration import startServer

    root = tmp_path / "root"
    root.mkdir()
    server = await startServer(reactor, root, "plain", None)
    try:
        for offer, expected, fact in [((), "sha256", False), (("sha256",), "sha256", True), (None, "blake3", True)]:
            client = await connect(reactor, "127.0.0.1", server.portNumber, digests=offer)
            assert client.digest == expected and (" digest=" in client.serverInfo) == fact
            await client.quit()
    finally:
        await server.stop()


def xattrsOrSkip(root):
    probe = root / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.test", b"1")
    except OSError:
        pytest.skip("this file system keeps no user extended attributes")
    probe.unlink()


def test_getStoresTheDigestItComputed(root, fake, tmp_path):
    """A GET that had to hash a file keeps the digest in its attribute; a later server serves it from there without reading the file, and the client still catches a stale one."""
    xattrsOrSkip(root)
    path = root / "a.bin"
    data = path.read_bytes()
    c, server, pump = client(root, fake)
    result(c.get("/a.bin", str(tmp_path / "copy")), pump)
    stored = os.getxattr(path, digestXattr("blake3")).decode()
    assert stored.endswith(":" + hexOf("blake3", data))
    # Rewrite in place, size and modification time restored: a fresh
    # server trusts the attribute, and the client refuses the download.
    st = os.stat(path)
    path.write_bytes(bytes(len(data)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    c, server, pump = client(root, fake)
    with pytest.raises(Exception) as e:
        result(c.get("/a.bin", str(tmp_path / "copy2")), pump)
    assert getattr(e.value, "code", None) == 554
    assert not (tmp_path / "copy2").exists()


def test_digestNotStoredWhenTheFileChangedWhileRead(root):
    """A digest computed while the file's modification time moved is returned but not kept in the attribute."""
    from bftp.transfer import _digestOf

    xattrsOrSkip(root)
    path = root / "a.bin"
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _digestOf(fd, before, "blake3") == hexOf("blake3", path.read_bytes())
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        os.getxattr(path, digestXattr("blake3"))
