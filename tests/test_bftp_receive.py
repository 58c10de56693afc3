"""
The fast receive paths of issue 14.

Plain TCP: payload spliced from the socket into the file
(L{bftp.transfer.SplicePipe}, L{bftp.transfer.ChunkSink.splice}); uploads
and downloads move their data with C{splice} and hash it back from the page
cache, exactly; chunk headers are still read and checked; a write error or
a refused quota drops the rest of the data and keeps the stream in step;
where splice is not used, the same transfers go through pooled buffers.

TLS: records decrypted straight into pooled buffers
(L{bftp.transfer.TLSPooledReader}); records that split chunk headers, a
close_notify in the middle of a chunk and bytes after the data all come
out as they do through Twisted's own TLS path.

Downloads reserve their disk space ahead (L{bftp.transfer.reserveSpace})
and give back what a cut transfer did not use.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import socket
import tempfile

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from bftp import digests, transfer
from bftp.transfer import BufferPool, ChunkSink, PooledReader, SplicePipe, TLSPooledReader
from bftp.wire import CHUNK_SIZE, chunkHeader
from tests.bftp_support import FakeReactor
from tests.test_bftp_integration import PASSWORD, USER, Server, settle, writeRandom
from tests.test_bftp_pooled import QueuedPool, rawPut, root  # noqa: F401  (root: a fixture)

SIZE = 6 << 20


def countBytes(monkeypatch, cls, name: str) -> list[int]:
    """
    Wrap method C{name} of C{cls}, whose last argument is a byte count,
    to add up those counts; the one-item list that holds the sum.
    """
    moved = [0]
    original = getattr(cls, name)

    def counted(self, *args):
        moved[0] += args[-1]
        return original(self, *args)

    monkeypatch.setattr(cls, name, counted)
    return moved


@pytest.fixture
def spliced(monkeypatch):
    """
    Count the bytes that went from a socket into a file by splice.
    """
    return countBytes(monkeypatch, SplicePipe, "drainTo")


def stream(data: bytes, chunk: int = CHUNK_SIZE) -> bytes:
    pieces = [chunkHeader(len(data[p : p + chunk])) + data[p : p + chunk] for p in range(0, len(data), chunk)]
    return b"".join(pieces) + b"00000000"


class Connection:
    """
    What L{PooledReader} needs of a TCP connection: its socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def receive(tmp_path, wire: bytes, charge=None, readOnly=False, first: int = 0, step: int = 256 << 10, **sinkArgs):
    """
    Send C{wire} over a socket pair, C{step} bytes per send, and read it
    with a L{PooledReader} splicing into a L{ChunkSink}; the first C{first}
    bytes are fed from memory, as the bytes that come with the 150 or PUT
    line are.  Returns the sink, its file's path, the hasher's digest and
    the sizes of the reads delivered as bytes.
    """
    fake = FakeReactor()
    fake._pool = QueuedPool()
    path = tmp_path / "received"
    path.write_bytes(b"")
    f = open(path, "rb" if readOnly else "r+b", buffering=0)
    sink = ChunkSink(fake, f, digests.new("sha256"), charge=charge, **sinkArgs)
    a, b = socket.socketpair()
    b.setblocking(False)
    pipe = SplicePipe()
    try:
        sink.feed(wire[:first])
        delivered = []

        def deliver(data, release=None):
            delivered.append(len(data))
            sink.feed(data, release)
            if sink.done:
                reader.stop()

        reader = PooledReader(Connection(b), BufferPool(fake), deliver, lambda: None, lambda: None, sink, pipe)
        reader.active = True
        a.setblocking(True)
        sent = first
        while not sink.done:
            if sent < len(wire):
                a.settimeout(0)
                try:
                    sent += a.send(wire[sent : sent + step])
                except BlockingIOError:
                    pass
            why = reader.doRead()
            assert why is None, why
        digest = sink.digest()
        fake._pool.runAll()
        out = []
        digest.addBoth(out.append)
        sink.close()
        fake._pool.runAll()
        # The pipe is left empty for the next transfer.
        with pytest.raises(BlockingIOError):
            os.read(pipe.r, 1)
        return sink, path, out[0], delivered
    finally:
        f.close()
        a.close()
        b.close()
        pipe.close()


@pytest.mark.parametrize("first", [0, 5, CHUNK_SIZE // 2 + 3])
def test_splicedPayloadIsWrittenAndHashedExactly(tmp_path, spliced, first):
    """Chunks spliced from a socket land in the file byte for byte, the digest is of every byte, and headers arrive as 8-byte reads (also when the stream starts in memory, mid-header or mid-payload)."""
    data = os.urandom(SIZE + 12345)
    sink, path, digest, delivered = receive(tmp_path, stream(data, 300_001), first=first)
    assert sink.error is None
    assert path.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert spliced[0] >= len(data) - first - 300_001
    assert delivered and max(delivered) <= 8


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(0, 700_000),
    chunk=st.integers(1, CHUNK_SIZE),
    first=st.integers(0, 720_000),
    step=st.integers(1_000, 300_000),
    seed=st.integers(0, 2**32),
)
def test_splicedStreamsOfAnyShapeAreExact(size, chunk, first, step, seed):
    """Fuzzed: whatever the file and chunk sizes, where the in-memory part of the stream ends and how the sender cuts it, the spliced file and its digest are exactly the data."""
    data = random.Random(seed).randbytes(size)
    wire = stream(data, chunk)
    with tempfile.TemporaryDirectory() as d:
        sink, path, digest, _ = receive(pathlib.Path(d), wire, first=min(first, len(wire)), step=step)
        assert sink.error is None and sink.done
        assert path.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_writeErrorWhileSplicingDropsTheRestInStep(tmp_path, spliced):
    """A file that cannot be written (opened read-only) sets the sink's error, the rest of the data is read and dropped up to the end chunk, and nothing is written."""
    data = os.urandom(3 << 20)
    sink, path, digest, _ = receive(tmp_path, stream(data), readOnly=True)
    assert isinstance(sink.error, OSError)
    assert path.read_bytes() == b""
    assert sink.done and sink.rest == b""


def test_quotaRefusedWhileSplicing(tmp_path, spliced):
    """A quota that refuses after 2 MiB stops the writes there, the refusal becomes the error, and the rest of the stream is still consumed."""
    data = os.urandom(5 << 20)
    charged = [0]

    def charge(n):
        if charged[0] + n > 2 << 20:
            return "quota of 2 MiB exceeded"
        charged[0] += n
        return None

    sink, path, _, _ = receive(tmp_path, stream(data), charge=charge)
    assert sink.error == "quota of 2 MiB exceeded"
    assert sink.done
    kept = path.read_bytes()
    assert len(kept) <= 2 << 20 and data.startswith(kept)


def test_reservedSpaceKeepsTheSizeAndIsGivenBack(tmp_path):
    """reserveSpace allocates blocks past the end without changing the file's size (a part file's size is what came); releaseReserved frees them again."""
    path = tmp_path / "part"
    with open(path, "wb") as f:
        f.write(b"x" * 5000)
        f.flush()
        assert transfer.reserveSpace(f.fileno(), 5000, 64 << 20)
        st = os.fstat(f.fileno())
        assert st.st_size == 5000
        assert st.st_blocks * 512 >= 64 << 20
        transfer.releaseReserved(f.fileno())
        st = os.fstat(f.fileno())
        assert st.st_size == 5000
        assert st.st_blocks * 512 < 1 << 20
    assert path.read_bytes() == b"x" * 5000


@pytest.mark.parametrize("path", ["spliced", "from memory"])
def test_uploadReservesSpaceStepByStepAndGivesBackTheRest(tmp_path, monkeypatch, path):
    """With reserveAhead (the server's uploads), the sink reserves the file's blocks a step ahead of what it writes, in steps that follow each other, before writing into them; at the end what lies past the data is given back, and the file is exact."""
    data = os.urandom(5 * CHUNK_SIZE + 12345)
    wire = stream(data)
    steps = []
    real = transfer.reserveSpace

    def reserve(fd, start, end):
        st = os.fstat(fd)
        steps.append((start, end, st.st_size))
        assert real(fd, start, end)
        assert os.fstat(fd).st_blocks * 512 >= end - st.st_size
        return True

    monkeypatch.setattr(transfer, "reserveSpace", reserve)
    first = 0 if path == "spliced" else len(wire)
    sink, out, digest, _ = receive(tmp_path, wire, first=first, reserveAhead=2 * CHUNK_SIZE)
    assert out.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert steps[0][0] == 0 and steps[-1][1] >= len(data)
    for (_, end, _), (start, _, size) in zip(steps, steps[1:]):
        # Each step starts where the last ended, when the data got there.
        assert start == end and size <= end
    assert len(steps) <= 4
    assert os.stat(out).st_blocks * 512 < len(data) + (256 << 10)


def test_nearlyFullDiskReservesNothing(tmp_path, monkeypatch):
    """While the disk has less room than _RESERVE_ROOM steps, an upload reserves no space ahead (it could make another upload fail that would have fitted) and is written exactly all the same."""
    calls = []
    monkeypatch.setattr(transfer, "reserveSpace", lambda *a: calls.append(a) or True)
    disk = os.statvfs(tmp_path)
    free = disk.f_bavail * disk.f_frsize
    monkeypatch.setattr(transfer, "_RESERVE_ROOM", free // CHUNK_SIZE + 1)
    data = os.urandom(3 * CHUNK_SIZE + 5)
    sink, out, digest, _ = receive(tmp_path, stream(data), reserveAhead=CHUNK_SIZE)
    assert calls == []
    assert out.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_downloadReservesItsSpaceAhead(reactor, root, tmp_path, monkeypatch):
    """The client reserves space for the part file up to the file's size before the data comes (from the offset on a resume), and the finished file is exact."""
    calls = []
    real = transfer.reserveSpace

    def reserve(fd, start, end):
        calls.append((start, end, os.fstat(fd).st_size))
        return real(fd, start, end)

    import bftp.client

    monkeypatch.setattr(bftp.client, "reserveSpace", reserve)
    digest = writeRandom(root / "f.bin", SIZE)
    server = await Server(reactor, root).start()
    try:
        client = await server.client()
        assert await client.get("/f.bin", str(tmp_path / "f.bin"), resume=False) == digest
        (tmp_path / "g.bin.bftp-part").write_bytes((root / "f.bin").read_bytes()[:12345])
        assert await client.get("/f.bin", str(tmp_path / "g.bin")) == digest
        await client.quit()
    finally:
        await server.stop()
    assert calls == [(0, SIZE, 0), (12345, SIZE, 12345)]
    assert (tmp_path / "f.bin").read_bytes() == (tmp_path / "g.bin").read_bytes() == (root / "f.bin").read_bytes()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest_twisted.ensureDeferred
async def test_putAndGetTakeTheFastReceivePath(reactor, root, tmp_path, devCert, monkeypatch, tls):
    """The server's PUT and the client's GET splice their payload into the file over plain TCP and decrypt it into pooled buffers over TLS, all of it but what came with the reply before the data; both copies are exact and commands work after."""
    if tls:
        moved = countBytes(monkeypatch, TLSPooledReader, "_deliverFilled")
    else:
        moved = countBytes(monkeypatch, SplicePipe, "drainTo")
    local = tmp_path / "up.bin"
    digest = writeRandom(local, SIZE)
    server = await Server(reactor, root, *(devCert if tls else ())).start()
    try:
        client = await server.client()
        assert await client.put(str(local), "/up.bin") == digest
        afterPut = moved[0]
        assert afterPut >= SIZE - CHUNK_SIZE
        assert await client.get("/up.bin", str(tmp_path / "down.bin"), resume=False) == digest
        assert moved[0] - afterPut >= SIZE - CHUNK_SIZE
        # The connection is back on Twisted's reading for commands.
        assert [e.name for e in await client.list("/")] == ["up.bin"]
        await client.quit()
    finally:
        await server.stop()
    assert (root / "up.bin").read_bytes() == local.read_bytes() == (tmp_path / "down.bin").read_bytes()


@pytest_twisted.ensureDeferred
async def test_withoutSpliceThePooledPathCarriesOn(reactor, root, tmp_path, spliced, monkeypatch):
    """Where splice is not used, uploads and downloads read into pooled buffers instead, exactly, and a wrong digest is still refused."""
    monkeypatch.setattr(transfer, "_spliceWorks", False)
    local = tmp_path / "up.bin"
    digest = writeRandom(local, SIZE)
    server = await Server(reactor, root).start()
    try:
        client = await server.client()
        assert await client.put(str(local), "/up.bin") == digest
        assert await client.get("/up.bin", str(tmp_path / "down.bin"), resume=False) == digest
        await client.quit()
        data = os.urandom(2 << 20)
        reply = await rawPut(reactor, server.portNumber, "bad.bin", data, hashlib.sha256(b"other").hexdigest())
        assert reply.startswith("554"), reply
    finally:
        await server.stop()
    assert spliced[0] == 0
    assert (tmp_path / "down.bin").read_bytes() == local.read_bytes()


@pytest.fixture
def tlsDelivered(monkeypatch):
    """
    Count the bytes a L{TLSPooledReader} decrypted into pooled buffers.
    """
    return countBytes(monkeypatch, TLSPooledReader, "_deliverFilled")


async def tlsPut(reactor, port, cafile, name, pieces, digest=None, unwrapAfter=None):
    """
    Upload over stdlib TLS from a thread, writing C{pieces} one TLS write
    each (so records split chunk headers where the test wants), then the
    digest line; or, with C{unwrapAfter}, close TLS (close_notify) after
    that many pieces.  The server's last reply line, or "" if it closed.
    """
    import ssl

    from twisted.internet.threads import deferToThread

    def run():
        context = ssl.create_default_context(cafile=cafile)
        with socket.create_connection(("127.0.0.1", port)) as raw:
            s = context.wrap_socket(raw, server_hostname="localhost")
            f = s.makefile("rb")
            s.sendall(f"HELLO BFTP/1 digest=sha256\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nPUT {name}\r\n".encode())
            lines = [f.readline() for _ in range(5)]
            assert lines[-1].startswith(b"350"), lines
            for i, piece in enumerate(pieces):
                if unwrapAfter is not None and i == unwrapAfter:
                    f.close()
                    s.unwrap()
                    return ""
                s.sendall(piece)
            s.sendall(digest.encode() + b"\r\n")
            return f.readline().decode().strip()

    return await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_tlsRecordsSplittingHeadersAndTheDigestLine(reactor, root, devCert, tlsDelivered):
    """Chunk headers cut across TLS records and the end chunk sharing a record with the digest line are read right: the upload is stored exactly."""
    data = os.urandom(3 << 20)
    wire = stream(data, 500_000)
    # Records cut at odd places: inside headers, inside payloads.
    cuts = [0, 3, 500_005, 500_010, 1 << 20, (2 << 20) + 1, len(wire) - 5]
    pieces = [wire[a:b] for a, b in zip(cuts, cuts[1:])] + [wire[cuts[-1] :]]
    server = await Server(reactor, root, *devCert).start()
    try:
        reply = await tlsPut(reactor, server.portNumber, devCert[0], "t.bin", pieces, hashlib.sha256(data).hexdigest())
    finally:
        await server.stop()
    assert reply.startswith(f"226 {hashlib.sha256(data).hexdigest()} stored {len(data)} bytes"), reply
    assert (root / "t.bin").read_bytes() == data
    assert tlsDelivered[0] > 0


@pytest_twisted.ensureDeferred
async def test_tlsCloseNotifyMidChunkKeepsTheExactPrefix(reactor, root, devCert, tlsDelivered):
    """A client that ends TLS (close_notify) in the middle of a chunk: nothing is stored and the partial upload holds exactly the bytes received, for a resume."""
    data = os.urandom(3 << 20)
    wire = stream(data)
    cut = (1 << 20) + 8 + 70_000
    server = await Server(reactor, root, *devCert).start()
    try:
        await tlsPut(reactor, server.portNumber, devCert[0], "c.bin", [wire[:cut], wire[cut:]], unwrapAfter=1)
        await settle(reactor, 0.3)
    finally:
        await server.stop()
    assert not (root / "c.bin").exists()
    partials = [p for p in root.iterdir() if p.name.startswith(".bftp-partial")]
    assert len(partials) == 1
    kept = partials[0].read_bytes()
    assert kept == data[: len(kept)] and len(kept) == cut - 16


@pytest_twisted.ensureDeferred
async def test_twistdTLSListenerPrefersAES128(reactor, tmp_path, devCert):
    """A TLS listener of `twistd bftp` picks TLS_AES_128_GCM_SHA256 even for a client (stdlib ssl) that offers AES-256-GCM first."""
    import ssl

    from twisted.internet.threads import deferToThread

    from bftp.tap import Options, makeService
    from coursenet.procs import freePort
    from coursenet.tls import tlsListenString

    port = freePort()
    options = Options()
    options.parseOptions([
        "--root", str(tmp_path), "--user", f"{USER}:{PASSWORD}",
        "--listen", tlsListenString(port, devCert[0], devCert[1], "127.0.0.1"),
    ])
    service = makeService(options)
    service.startService()

    def cipher():
        context = ssl.create_default_context(cafile=devCert[0])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.recv(100).startswith(b"220")
                return s.cipher()[0]

    try:
        offered = ssl.create_default_context().get_ciphers()[0]["name"]
        assert offered == "TLS_AES_256_GCM_SHA384"
        assert await deferToThread(cipher) == "TLS_AES_128_GCM_SHA256"
    finally:
        await service.stopService()
        await settle(reactor)
