"""
BFTP over real loopback sockets, plain and TLS: large round trips, resume
after a cut, many clients at once, disconnects mid-transfer, a full disk
on either side, the `bftp` command and the twistd plugin.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, utils
from twisted.internet.task import deferLater

from bftp.auth import makePortal
from bftp.client import connect
from bftp.fs import PARTIAL_PREFIX
from bftp.protocol import BFTPFactory
from coursenet.accounts import PasswordChecker
from coursenet.procs import freePort
from coursenet.tls import tlsListenString
from tests.bftp_support import negotiatedDigest

USER, PASSWORD = "bob", "s3cret pw"
BIN = os.path.dirname(sys.executable)


class Server:
    """
    A BFTP server in the test's reactor, listening on 127.0.0.1.
    """

    def __init__(self, reactor, root, cert=None, key=None, **kwargs):
        self.reactor = reactor
        self.root = root
        kwargs.setdefault("maxPerAddress", 100)
        checker = PasswordChecker(users=[(USER, PASSWORD)], reactor=reactor)
        self.factory = BFTPFactory(str(root), makePortal(checker), reactor=reactor, **kwargs)
        self.tls = cert is not None
        self.cafile = cert
        self._description = (
            tlsListenString(0, cert, key, "127.0.0.1") if self.tls else "tcp:0:interface=127.0.0.1"
        )
        self.protocols = []
        build = self.factory.buildProtocol

        def buildProtocol(addr):
            p = build(addr)
            self.protocols.append(p)
            return p

        self.factory.buildProtocol = buildProtocol

    async def start(self):
        endpoint = endpoints.serverFromString(self.reactor, self._description)
        self.port = await endpoint.listen(self.factory)
        self.portNumber = self.port.getHost().port
        return self

    async def client(self, login=True):
        c = await connect(self.reactor, "localhost" if self.tls else "127.0.0.1", self.portNumber, tls=self.tls, cafile=self.cafile)
        if login:
            await c.login(USER, PASSWORD)
        return c

    async def stop(self):
        for p in self.protocols:
            if p.transport is not None and not p._lost:
                p.transport.abortConnection()
        await self.port.stopListening()
        await settle(self.reactor)


async def settle(reactor, t=0.05):
    await deferLater(reactor, t, lambda: None)


def cutAfter(client, limit: int):
    """
    A progress callback that cuts C{client}'s connection once C{limit}
    bytes have moved: a network failure in the middle of a transfer.
    """
    moved = [0]

    def progress(n: int) -> None:
        moved[0] += n
        if moved[0] >= limit and client.transport.connected:
            client.transport.abortConnection()

    return progress


def openFds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture(params=["plain", "tls"])
def mode(request):
    return request.param


async def startServer(reactor, root, mode, devCert, **kwargs):
    cert, key = devCert if mode == "tls" else (None, None)
    return await Server(reactor, root, cert, key, **kwargs).start()


def writeRandom(path, size):
    """
    Fill C{path} with C{size} random bytes; their digest by the algorithm
    the client and server negotiate.
    """
    from bftp import digests

    h = digests.new(digests.AVAILABLE[0])
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            f.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


@pytest_twisted.ensureDeferred
async def test_roundTrip100MB(reactor, root, tmp_path, mode, devCert):
    """100 MB go up and come back byte for byte, with matching digests (the negotiated algorithm), over plain TCP and TLS."""
    server = await startServer(reactor, root, mode, devCert)
    try:
        src = tmp_path / "src.bin"
        digest = writeRandom(src, 100 * 1024 * 1024)
        client = await server.client()
        assert await client.put(str(src), "/big.bin") == digest
        back = tmp_path / "back.bin"
        assert await client.get("/big.bin", str(back)) == digest
        assert await client.hash("/big.bin", client.digest) == digest
        assert os.path.getsize(back) == 100 * 1024 * 1024
        await client.quit()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_getResumesAfterCut(reactor, root, tmp_path, mode, devCert):
    """A download cut mid-way continues from the bytes already on disk and ends with the right digest; the cut part file keeps no disk space reserved past what came."""
    digest = writeRandom(root / "f.bin", 8 * 1024 * 1024)
    server = await startServer(reactor, root, mode, devCert)
    try:
        client = await server.client()
        progress = cutAfter(client, 3 * 1024 * 1024)
        local = tmp_path / "f.bin"
        with pytest.raises(ConnectionError):
            await client.get("/f.bin", str(local), progress=progress)
        part = os.stat(str(local) + ".bftp-part")
        kept = part.st_size
        assert 0 < kept < 8 * 1024 * 1024
        # The space the client reserved for the whole file is given back:
        # the part file holds blocks for what came, not for 8 MiB.
        assert part.st_blocks * 512 < kept + 1024 * 1024
        client = await server.client()
        starts = []
        assert await client.get("/f.bin", str(local), onStart=lambda size, at: starts.append(at)) == digest
        assert starts == [kept]
        assert not os.path.exists(str(local) + ".bftp-part")
        await client.quit()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_putResumesAfterCut(reactor, root, tmp_path, mode, devCert):
    """An upload cut mid-way leaves the old file alone; a resumed PUT sends only the rest and replaces it; neither the kept partial file nor the stored one keeps disk space reserved past its end."""
    (root / "f.bin").write_bytes(b"old contents")
    src = tmp_path / "src.bin"
    digest = writeRandom(src, 8 * 1024 * 1024)
    server = await startServer(reactor, root, mode, devCert)
    try:
        client = await server.client()
        progress = cutAfter(client, 3 * 1024 * 1024)
        with pytest.raises(ConnectionError):
            await client.put(str(src), "/f.bin", progress=progress)
        await settle(reactor, 0.2)
        assert (root / "f.bin").read_bytes() == b"old contents"
        # The server reserves space ahead of an upload (64 MiB at a time)
        # and gives back what the cut one did not use.
        [partial] = [os.stat(root / n) for n in os.listdir(root) if n.startswith(PARTIAL_PREFIX)]
        assert partial.st_blocks * 512 < partial.st_size + 1024 * 1024
        client = await server.client()
        kept = (await client.stat("/f.bin")).partial
        assert kept > 0
        starts = []
        assert await client.put(str(src), "/f.bin", resume=True, onStart=lambda size, at: starts.append(at)) == digest
        assert starts == [kept]
        assert negotiatedDigest((root / "f.bin").read_bytes()) == digest
        assert os.stat(root / "f.bin").st_blocks * 512 < 9 * 1024 * 1024
        assert sorted(os.listdir(root)) == ["f.bin"]
        await client.quit()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_fiftyConcurrentClients(reactor, root, tmp_path):
    """50 clients at once each store and fetch their own file, and every byte comes back right."""
    server = await startServer(reactor, root, "plain", None)
    try:

        async def one(i):
            src = tmp_path / f"src{i}"
            data = os.urandom(256 * 1024 + i)
            src.write_bytes(data)
            client = await server.client()
            await client.put(str(src), f"/f{i}")
            back = tmp_path / f"back{i}"
            await client.get(f"/f{i}", str(back))
            await client.quit()
            return back.read_bytes() == data

        results = await defer.gatherResults([defer.Deferred.fromCoroutine(one(i)) for i in range(50)])
        assert results == [True] * 50
        assert len(os.listdir(root)) == 50
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_disconnectMidGetLeaksNothing(reactor, root, tmp_path, mode, devCert):
    """A client vanishing mid-GET leaves the file intact and the server with no open file descriptor."""
    digest = writeRandom(root / "f.bin", 16 * 1024 * 1024)
    server = await startServer(reactor, root, mode, devCert)
    try:
        await settle(reactor)
        before = openFds()
        for _ in range(3):
            client = await server.client()
            progress = cutAfter(client, 1024 * 1024)
            with pytest.raises(ConnectionError):
                await client.get("/f.bin", str(tmp_path / "f.bin"), resume=False, progress=progress)
        await settle(reactor, 0.5)
        assert not any(p._openFiles for p in server.protocols)
        assert openFds() <= before
        assert negotiatedDigest((root / "f.bin").read_bytes()) == digest
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_disconnectMidPutKeepsOldFile(reactor, root, mode, devCert):
    """A client vanishing mid-PUT leaves the old file intact, no descriptor open, and only the documented resumable partial, which LIST hides and DELETE removes."""
    (root / "f.bin").write_bytes(b"old")
    server = await startServer(reactor, root, mode, devCert)
    try:
        await settle(reactor)
        before = openFds()
        client = await server.client()
        await client._do(client._send("PUT f.bin", (350, 350)))
        client.transport.write(b"00100000" + b"x" * 500_000)
        await settle(reactor, 0.3)
        client.transport.abortConnection()
        await settle(reactor, 0.3)
        assert (root / "f.bin").read_bytes() == b"old"
        assert sorted(os.listdir(root)) == [PARTIAL_PREFIX + "f.bin", "f.bin"]
        assert not any(p._openFiles for p in server.protocols)
        assert not server.factory.uploads
        client = await server.client()
        assert [e.name for e in await client.list("/")] == ["f.bin"]
        assert (await client.stat("f.bin")).partial > 0
        await client.delete("f.bin")
        assert os.listdir(root) == []
        await client.quit()
        await settle(reactor, 0.2)
        assert openFds() <= before
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_wrongCertificateRefused(reactor, root, tmp_path, devCert):
    """A TLS client that does not trust the server's certificate refuses to talk to it."""
    from coursenet.tls import ensureDevCertificate

    otherCA, _ = ensureDevCertificate(str(tmp_path / "other"))
    server = await startServer(reactor, root, "tls", devCert)
    try:
        with pytest.raises(Exception) as e:
            await connect(reactor, "localhost", server.portNumber, tls=True, cafile=otherCA)
        assert "certificate verify failed" in str(e.value) or "verify" in str(e.value).lower()
    finally:
        await server.stop()


async def runBftp(*args, password=PASSWORD):
    env = dict(os.environ, BFTP_PASSWORD=password)
    out, err, code = await utils.getProcessOutputAndValue(os.path.join(BIN, "bftp"), ["--no-progress", *args], env=env)
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_cliBothWays(reactor, root, tmp_path, mode, devCert):
    """The bftp command puts and gets a file with matching digests, lists and deletes, plain and TLS, with options before or after the subcommand."""
    server = await startServer(reactor, root, mode, devCert)
    try:
        scheme = "bftps" if mode == "tls" else "bftp"
        host = "localhost" if mode == "tls" else "127.0.0.1"
        base = f"{scheme}://{USER}@{host}:{server.portNumber}"
        tls = ["--cafile", server.cafile] if mode == "tls" else []
        src = tmp_path / "notes.txt"
        digest = writeRandom(src, 3_000_000)
        out, err, code = await runBftp(*tls, "put", str(src), base + "/notes.txt")
        assert code == 0, err
        assert digest in out
        out, err, code = await runBftp(*tls, "ls", base + "/")
        assert code == 0 and "notes.txt" in out and "3000000" in out
        dst = tmp_path / "copy.txt"
        # Options also work after the subcommand, as the README writes them.
        out, err, code = await runBftp("get", base + "/notes.txt", str(dst), *tls)
        assert code == 0, err
        assert digest in out and dst.read_bytes() == src.read_bytes()
        out, err, code = await runBftp(*tls, "rm", base + "/notes.txt")
        assert code == 0 and not (root / "notes.txt").exists()
    finally:
        await server.stop()


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/%2e%2e/x", "/link/x"])
@pytest_twisted.ensureDeferred
async def test_cliRefusesEscapes(reactor, root, tmp_path, path):
    """The bftp command reports a path escape as one clear 553 line and exits non-zero."""
    os.symlink("/etc", root / "link")
    server = await startServer(reactor, root, "plain", None)
    try:
        out, err, code = await runBftp("get", f"bftp://{USER}@127.0.0.1:{server.portNumber}{path}", str(tmp_path / "x"))
        assert code != 0
        assert err.startswith("bftp: 553 ") and err.count("\n") == 1
        assert not (tmp_path / "x").exists()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_cliWrongPassword(reactor, root):
    """A wrong password is one clear line and a non-zero exit."""
    server = await startServer(reactor, root, "plain", None, loginDelay=0)
    try:
        out, err, code = await runBftp("ls", f"bftp://{USER}@127.0.0.1:{server.portNumber}/", password="nope")
        assert code == 1 and err.strip() == "bftp: 530 login incorrect"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_twistdPlugin(reactor, tmp_path, devCert):
    """`twistd -n bftp` with --listen and --tls-cert serves plain and TLS clients from --root."""
    cert, key = devCert
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "hello.txt").write_bytes(b"hi\n")
    plain, tls = freePort(), freePort()
    args = [
        "-n", "--pidfile=", "--logfile", str(tmp_path / "log"), "bftp",
        "--root", str(tmp_path / "share"), "--user", f"{USER}:{PASSWORD}",
        "--listen", f"tcp:{plain}:interface=127.0.0.1",
        "--tls-cert", cert, "--tls-key", key, "--tls-port", str(tls),
    ]
    from twisted.internet.protocol import ProcessProtocol

    ended = defer.Deferred()

    class P(ProcessProtocol):
        def processEnded(self, reason):
            ended.callback(None)

    proc = reactor.spawnProcess(P(), os.path.join(BIN, "twistd"), ["twistd", *args], env=os.environ.copy())
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", tls), 0.2).close()
                socket.create_connection(("127.0.0.1", plain), 0.2).close()
                break
            except OSError:
                await settle(reactor, 0.1)
        for port, useTLS in [(plain, False), (tls, True)]:
            client = await connect(reactor, "localhost", port, tls=useTLS, cafile=cert)
            await client.login(USER, PASSWORD)
            assert [e.name for e in await client.list("/")] == ["hello.txt"]
            await client.quit()
    finally:
        proc.signalProcess("TERM")
        await ended


@pytest_twisted.ensureDeferred
async def test_cliShell(reactor, root, tmp_path):
    """`bftp shell` runs commands typed on its standard input: mkdir, put, ls, cd, get, a refused escape, quit."""
    from twisted.internet.protocol import ProcessProtocol

    (tmp_path / "up.txt").write_bytes(b"typed\n")
    server = await startServer(reactor, root, "plain", None)
    done = defer.Deferred()
    out = []

    class P(ProcessProtocol):
        def connectionMade(self):
            self.transport.write(
                b"mkdir box\nput up.txt box/up.txt\nls box\ncd box\nget up.txt back.txt\nget ../../x\nquit\n"
            )
            self.transport.closeStdin()

        def outReceived(self, data):
            out.append(data)

        def errReceived(self, data):
            out.append(data)

        def processEnded(self, reason):
            done.callback(reason.value.exitCode)

    try:
        env = dict(os.environ, BFTP_PASSWORD=PASSWORD)
        url = f"bftp://{USER}@127.0.0.1:{server.portNumber}/"
        reactor.spawnProcess(P(), os.path.join(BIN, "bftp"), ["bftp", "--no-progress", "shell", url], env=env, path=str(tmp_path))
        code = await done
        text = b"".join(out).decode()
        assert code == 0, text
        assert (root / "box" / "up.txt").read_bytes() == b"typed\n"
        assert (tmp_path / "back.txt").read_bytes() == b"typed\n"
        assert "up.txt" in text and "553" in text
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_commandAfterTheConnectionIsLostFailsAtOnce(reactor, root):
    """A command sent once the connection is gone (as the digest line of an upload whose data went out just before) fails with ConnectionError instead of waiting forever for a reply."""
    server = await startServer(reactor, root, "plain", None)
    try:
        client = await server.client()
        client.transport.abortConnection()
        await client.closed
        with pytest.raises(ConnectionError, match="lost"):
            # Bounded: a regression fails here with TimeoutError, not a hang.
            await client.stat("/anything").addTimeout(5, reactor)
    finally:
        await server.stop()


@pytest.fixture
def smallDisk(tmp_path):
    """
    A 16 MiB tmpfs mounted for the test (root only), unmounted after.
    """
    import subprocess

    from tests.conftest import skipOrFail

    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0:
        skipOrFail("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "bftp-test", str(where)], capture_output=True)
    if done.returncode:
        skipOrFail(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        # Lazily: a failed test may have left a file open there.
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest_twisted.ensureDeferred
async def test_fullDiskUploadAndDownload(reactor, smallDisk, tmp_path, mode, devCert):
    """On a 16 MiB disk: a 24 MiB PUT is answered 452 (no space), stores nothing, keeps the connection in step and gives all the space back, so a 6 MiB PUT after it succeeds; a 24 MiB GET into the full disk (the client's reservation is refused there) fails with 451 naming the write error, leaves a part file with no blocks past what was written, and keeps the connection in step."""
    from bftp.client import BFTPError

    root = smallDisk / "root"
    root.mkdir()
    big = tmp_path / "big.bin"
    writeRandom(big, 24 << 20)
    small = tmp_path / "small.bin"
    smallDigest = writeRandom(small, 6 << 20)
    server = await startServer(reactor, root, mode, devCert)
    try:
        client = await server.client()
        with pytest.raises(BFTPError) as e:
            await client.put(str(big), "/big.bin")
        assert e.value.code == 452 and "no space" in str(e.value)
        assert os.listdir(root) == []
        assert await client.put(str(small), "/small.bin") == smallDigest
        assert os.path.getsize(root / "small.bin") == 6 << 20
        await client.quit()
    finally:
        await server.stop()
    # The client's side: a server on the big disk, the download into the
    # small one, which has 10 MiB left.
    served = tmp_path / "served"
    served.mkdir()
    os.replace(big, served / "big.bin")
    server = await startServer(reactor, served, mode, devCert)
    try:
        client = await server.client()
        local = smallDisk / "down.bin"
        with pytest.raises(BFTPError) as e:
            await client.get("/big.bin", str(local))
        assert e.value.code == 451 and "could not write" in str(e.value)
        assert not local.exists()
        part = os.stat(str(local) + ".bftp-part")
        assert part.st_blocks * 512 <= part.st_size + (1 << 20)
        # The connection is still in step.
        assert [x.name for x in await client.list("/")] == ["big.bin"]
        await client.quit()
    finally:
        await server.stop()
