"""
The receive path of issue 14 over real loopback sockets: downloads and
uploads read into pooled buffers (L{bftp.transfer.PooledReader}), hashed
from memory (L{bftp.transfer.HashFeed}), and PUT's file sent with sendfile
while it is hashed.  Every corruption, truncation or change under way is
still caught; the pieces are also checked on their own, with no sockets.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import endpoints
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from bftp import digests, transfer
from bftp.client import BFTPError, connect
from bftp.transfer import BufferPool, HashFeed
from bftp.wire import CHUNK_SIZE, ProtocolError, chunkHeader
from tests.bftp_support import FakeReactor, negotiatedDigest
from tests.test_bftp_integration import PASSWORD, USER, Server, settle, writeRandom

SIZE = 24 << 20


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def readsCounted(monkeypatch):
    """
    Count the reads that went through a L{transfer.PooledReader}.
    """
    calls = [0]
    original = transfer.PooledReader.doRead

    def doRead(self):
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(transfer.PooledReader, "doRead", doRead)
    return calls


class FakeServer(LineReceiver):
    """
    Enough of a BFTP server to answer one GET with what a test wants on
    the wire: C{factory.stream} is written after the 150 line, then the
    connection is closed if C{factory.close}.
    """

    delimiter = b"\r\n"

    def connectionMade(self):
        self.sendLine(b"220 BFTP/1 fake ready")

    def lineReceived(self, line):
        verb = line.split(b" ")[0]
        if verb == b"HELLO":
            self.sendLine(b"200 BFTP/1 max-line=4096 max-chunk=1048576 max-file-size=0 digest=" + self.factory.algorithm.encode())
        elif verb == b"USER":
            self.sendLine(b"331 password please")
        elif verb == b"PASS":
            self.sendLine(b"230 in")
        elif verb == b"GET":
            self.sendLine(b"150 %d 0 sending" % self.factory.size)
            for piece in self.factory.stream:
                self.transport.write(piece)
            if self.factory.close:
                self.transport.loseConnection()
        else:
            self.sendLine(b"221 bye")
            self.transport.loseConnection()


def chunked(data: bytes) -> list[bytes]:
    out = []
    for pos in range(0, len(data), CHUNK_SIZE):
        piece = data[pos : pos + CHUNK_SIZE]
        out.append(chunkHeader(len(piece)) + piece)
    return out


async def fakeGet(reactor, tmp_path, stream, size, close=False):
    """
    GET from a L{FakeServer} sending C{stream}; the client's result or
    exception, and the paths it writes.
    """
    factory = Factory.forProtocol(FakeServer)
    factory.stream, factory.size, factory.close = stream, size, close
    factory.algorithm = digests.AVAILABLE[0]
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    local = str(tmp_path / "copy")
    try:
        client = await connect(reactor, "127.0.0.1", port.getHost().port)
        await client.login(USER, PASSWORD)
        try:
            return await client.get("/f", local, resume=False), local
        finally:
            if client.transport.connected:
                client.transport.abortConnection()
    finally:
        await port.stopListening()
        await settle(reactor)


@pytest_twisted.ensureDeferred
async def test_getThroughPooledBuffers(reactor, root, tmp_path, readsCounted):
    """A plain-TCP GET reads its data into pooled buffers and the copy and its digest are exact."""
    digest = writeRandom(root / "f.bin", SIZE)
    server = await Server(reactor, root).start()
    try:
        client = await server.client()
        assert await client.get("/f.bin", str(tmp_path / "copy"), resume=False) == digest
        await client.quit()
    finally:
        await server.stop()
    assert readsCounted[0] > 0
    assert (tmp_path / "copy").read_bytes() == (root / "f.bin").read_bytes()


@pytest_twisted.ensureDeferred
async def test_getCorruptedInFlightIsDiscarded(reactor, tmp_path, readsCounted):
    """One byte changed on the wire (the server's digest is of the true data): the pooled-buffer GET raises 554 and keeps nothing."""
    data = bytearray(os.urandom(6 << 20))
    digest = negotiatedDigest(bytes(data))
    data[5 << 20] ^= 1
    stream = chunked(bytes(data)) + [b"00000000", f"226 {digest} sent {len(data)} bytes\r\n".encode()]
    with pytest.raises(BFTPError) as e:
        await fakeGet(reactor, tmp_path, stream, len(data))
    assert e.value.code == 554
    assert readsCounted[0] > 0
    assert not os.path.exists(tmp_path / "copy") and not os.path.exists(str(tmp_path / "copy") + ".bftp-part")


@pytest_twisted.ensureDeferred
async def test_getTruncatedStreamKeepsTheExactPrefix(reactor, tmp_path, readsCounted):
    """A stream cut in the middle of a chunk fails the GET and leaves a part file holding exactly the bytes received, for a resume."""
    data = os.urandom(6 << 20)
    stream = chunked(data)
    cut = b"".join(stream)[: (3 << 20) + 12345]
    with pytest.raises(ConnectionError):
        await fakeGet(reactor, tmp_path, [cut], len(data), close=True)
    part = tmp_path / "copy.bftp-part"
    kept = part.read_bytes()
    assert len(kept) > 2 << 20 and data.startswith(kept)
    assert not os.path.exists(tmp_path / "copy")


@pytest_twisted.ensureDeferred
async def test_getBadHeaderMidStream(reactor, tmp_path, readsCounted):
    """A chunk header that is not hex after megabytes of data fails the GET with the framing error and keeps no finished file."""
    data = os.urandom(3 << 20)
    stream = chunked(data) + [b"zzzzzzzz" + b"x" * 100]
    with pytest.raises(ProtocolError) as e:
        await fakeGet(reactor, tmp_path, stream, len(data) + 100, close=False)
    assert "bad chunk header" in str(e.value)
    assert not os.path.exists(tmp_path / "copy")


async def rawPut(reactor, port, name, data, digest, maxChunk=CHUNK_SIZE):
    """
    Upload over a plain socket, from a thread; the final reply line.
    """
    import socket

    from twisted.internet.threads import deferToThread

    def run():
        with socket.create_connection(("127.0.0.1", port)) as s:
            f = s.makefile("rb")
            s.sendall(f"HELLO BFTP/1 digest={digests.AVAILABLE[0]}\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nPUT {name}\r\n".encode())
            lines = [f.readline() for _ in range(5)]
            assert lines[-1].startswith(b"350"), lines
            for pos in range(0, len(data), maxChunk):
                piece = data[pos : pos + maxChunk]
                s.sendall(chunkHeader(len(piece)) + piece)
            s.sendall(b"00000000" + digest.encode() + b"\r\n")
            return f.readline().decode().strip()

    return await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_putWithWrongDigestOverSockets(reactor, root, readsCounted):
    """An upload read into pooled buffers whose digest line is not its data's gets 554 and nothing is stored."""
    server = await Server(reactor, root).start()
    try:
        data = os.urandom(8 << 20)
        reply = await rawPut(reactor, server.portNumber, "p.bin", data, negotiatedDigest(data + b"!"))
        assert reply.startswith("554 /p.bin:"), reply
        assert readsCounted[0] > 0
        assert not (root / "p.bin").exists()
        reply = await rawPut(reactor, server.portNumber, "p.bin", data, negotiatedDigest(data))
        assert reply.startswith(f"226 {negotiatedDigest(data)} stored {len(data)} bytes"), reply
        assert (root / "p.bin").read_bytes() == data
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_putOverTheSizeLimitOverSockets(reactor, root):
    """The file size limit holds on the pooled-buffer path: 552 and nothing stored."""
    server = await Server(reactor, root, maxFileSize=1 << 20).start()
    try:
        data = os.urandom(4 << 20)
        reply = await rawPut(reactor, server.portNumber, "big.bin", data, negotiatedDigest(data))
        assert reply.startswith("552 /big.bin: file exceeds the limit of 1048576 bytes"), reply
        assert not (root / "big.bin").exists()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_putOfAFileTruncatedWhileSent(reactor, root, tmp_path):
    """A local file cut short while sendfile sends it fails the PUT and the server keeps the old file."""
    (root / "f.bin").write_bytes(b"old")
    local = tmp_path / "f.bin"
    writeRandom(local, SIZE)
    server = await Server(reactor, root).start()
    try:
        client = await server.client()

        def progress(n):
            if os.path.getsize(local) == SIZE:
                os.truncate(local, 1 << 20)

        with pytest.raises((EOFError, ConnectionError)):
            await client.put(str(local), "/f.bin", progress=progress)
        await settle(reactor, 0.2)
        assert (root / "f.bin").read_bytes() == b"old"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_putOfAFileRewrittenWhileSent(reactor, root, tmp_path):
    """A local file rewritten while sendfile sends it is either refused with 554 (old file kept) or stored exactly as hashed: never a file that fails its digest."""
    (root / "f.bin").write_bytes(b"old")
    local = tmp_path / "f.bin"
    writeRandom(local, SIZE)
    server = await Server(reactor, root).start()
    rewritten = []
    try:
        client = await server.client()

        def progress(n):
            if not rewritten:
                rewritten.append(True)
                with open(local, "r+b") as f:
                    f.write(os.urandom(SIZE))

        try:
            digest = await client.put(str(local), "/f.bin", progress=progress)
        except BFTPError as e:
            assert e.code == 554
            assert (root / "f.bin").read_bytes() == b"old"
        else:
            assert negotiatedDigest((root / "f.bin").read_bytes()) == digest
        assert rewritten
    finally:
        await server.stop()


class QueuedPool:
    """
    A thread pool whose jobs wait until the test runs them.
    """

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.jobs.append((onResult, f, args, kwargs))

    def runAll(self):
        while self.jobs:
            onResult, f, args, kwargs = self.jobs.pop(0)
            try:
                onResult(True, f(*args, **kwargs))
            except BaseException as e:  # pragma: no cover - the jobs here do not fail
                onResult(False, e)


def test_hashFeedHoldsReadingWhileBehind():
    """Past its backlog the feed asks the reader to stop, asks it to go on once hashed, and the digest covers every piece in order."""
    fake = FakeReactor()
    pool = fake._pool = QueuedPool()
    told = []
    feed = HashFeed(fake, digests.new("sha256"), onBacklog=told.append, backlog=100)
    pieces = [bytes([i]) * 60 for i in range(4)]
    for piece in pieces:
        feed.update(piece)
    assert told == [True]
    released = []
    feed.after(lambda: released.append(1))
    assert not released
    pool.runAll()
    assert told == [True, False] and released == [1]
    d = feed.finish()
    out = []
    d.addCallback(out.append)
    assert out == [hashlib.sha256(b"".join(pieces)).hexdigest()]


def test_hashFeedCloseGivesBuffersBack():
    """A transfer given up gives back every buffer still queued for hashing, and its digest is never reported."""
    fake = FakeReactor()
    fake._pool = QueuedPool()
    feed = HashFeed(fake, digests.new("sha256"))
    released = []
    feed.update(b"x" * 10)
    feed.after(lambda: released.append("a"))
    d = feed.finish()
    failed = []
    d.addErrback(failed.append)
    feed.close()
    fake._pool.runAll()
    assert released == ["a"] and len(failed) == 1


def test_bufferPoolBoundsAndWakes():
    """The pool hands out at most its limit; a waiter is called once a buffer comes back."""
    fake = FakeReactor()
    pool = BufferPool(fake, size=16, limit=2)
    a, b = pool.take(), pool.take()
    assert a is not None and b is not None and pool.take() is None
    woken = []
    pool.whenFree(lambda: woken.append(True))
    assert not woken
    pool.give(a)
    assert woken == [True] and pool.take() is a


@pytest_twisted.ensureDeferred
async def test_getFromZeroMakesANewPartFile(reactor, root, tmp_path):
    """A download from byte 0 writes a new part file instead of truncating the old one to 0 (ext4 would flush that one on close)."""
    digest = writeRandom(root / "f.bin", 2 << 20)
    part = tmp_path / "copy.bftp-part"
    part.write_bytes(b"stale")
    os.link(part, tmp_path / "other-name")
    server = await Server(reactor, root).start()
    try:
        client = await server.client()
        assert await client.get("/f.bin", str(tmp_path / "copy"), resume=False) == digest
        await client.quit()
    finally:
        await server.stop()
    assert (tmp_path / "other-name").read_bytes() == b"stale"
    assert negotiatedDigest((tmp_path / "copy").read_bytes()) == digest


def test_bufferPoolWakesOneWaiterPerFreeBuffer():
    """A buffer given back wakes the longest waiter only; the others keep waiting for the next ones."""
    fake = FakeReactor()
    pool = BufferPool(fake, size=16, limit=1)
    buf = pool.take()
    woken = []
    for name in "abc":
        pool.whenFree(lambda name=name: woken.append(name))
    pool.give(buf)
    assert woken == ["a"]
    assert pool.take() is buf
    pool.give(buf)
    assert woken == ["a", "b"]
