"""
Conformance of every implementation: the Twisted servers (twistd, epoll
reactor), their thread-per-connection twins and their process-per-
connection twins, each run as a process on 127.0.0.1 and driven by the
real clients (L{bftp.client}, L{chat.client}) and raw sockets.  Then the
same servers under twistd's select and poll reactors.
"""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
import pytest_twisted

from bftp import threaded
from bftp.client import BFTPError
from bftp.client import connect as bftpConnect
from bftp.wire import chunkHeader
from chat.client import connect as chatConnect
from coursenet.admission import defaultMaxConnections
from coursenet.blocking import BlockingReactor, ForkingServer
from coursenet.demo import RunningServer
from tests.bftp_support import negotiatedDigest

IMPLS = ["twisted-epoll", "threaded", "forking"]
USER, PASSWORD = "alice", "correct horse"


@pytest.fixture(scope="module", params=IMPLS)
def bftpServer(request, tmp_path_factory):
    """
    A BFTP server of each implementation: C{(server, root)}.
    """
    root = tmp_path_factory.mktemp("bftp-root")
    log = open(tmp_path_factory.mktemp("log") / "server.log", "wb")
    server = RunningServer(
        "bftp", request.param,
        ["--root", str(root), "--user", f"{USER}:{PASSWORD}", "--anonymous", "--max-per-address", "200"],
        log,
    )
    yield server, root
    server.stop()
    log.close()


@pytest.fixture(scope="module", params=IMPLS)
def chatServer(request, tmp_path_factory):
    """
    A chat server of each implementation, history in memory, with the
    registered nickname C{demo}.
    """
    log = open(tmp_path_factory.mktemp("log") / "server.log", "wb")
    server = RunningServer(
        "chat", request.param,
        ["--history-db", ":memory:", "--user", "demo:pw", "--flood-rate", "0"],
        log,
    )
    yield server
    server.stop()
    log.close()


class Raw:
    """
    A raw, blocking client: send bytes, read reply lines.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"closed; had {self.buffer!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("utf-8")

    def reply(self) -> str:
        """
        The next reply, multi-line replies joined: its last line.
        """
        while True:
            line = self.line()
            if line[:3].isdigit() and line[3:4] != "-":
                return line

    def close(self) -> None:
        self.sock.close()


def login(port: int, user: str = USER, password: str = PASSWORD) -> Raw:
    raw = Raw(port)
    assert raw.reply().startswith("220 ")
    raw.send(f"HELLO BFTP/1\r\nUSER {user}\r\nPASS {password}\r\n".encode())
    assert raw.reply().startswith("200 ")
    assert raw.reply().startswith("331 ")
    assert raw.reply().startswith("230 ")
    return raw


# -- BFTP ---------------------------------------------------------------------


def test_bftpSessionRules(bftpServer):
    """Greeting, HELLO first, CRLF and line-length errors, pipelining in order, a wrong password."""
    server, _ = bftpServer
    raw = Raw(server.port)
    assert raw.reply().startswith("220 BFTP/1")
    raw.send(b"PWD\r\n")
    assert raw.reply().startswith("503 ")
    raw.send(b"HELLO BFTP/1\r\nNOOP\n")
    assert raw.reply().startswith("200 BFTP/1 max-line=4096")
    assert raw.reply().startswith("500 lines must end with CRLF")
    raw.send(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n")
    assert raw.reply().startswith("500 line too long")
    assert raw.reply() == "200 ok"
    raw.send(b"NOOP\r\nHELP\r\nUSER alice\r\nPASS wrong\r\nUSER alice\r\nPASS " + PASSWORD.encode() + b"\r\nPWD\r\n")
    replies = [raw.reply()[:3] for _ in range(7)]
    assert replies == ["200", "214", "331", "530", "331", "230", "257"]
    raw.send(b"QUIT\r\n")
    assert raw.reply().startswith("221 ")
    raw.close()


@pytest_twisted.ensureDeferred
async def test_bftpTransfersWithTheClient(reactor, bftpServer, tmp_path):
    """PUT and GET of 3 MB (sendfile on plain TCP) keep the SHA-256; STAT, HASH, LIST, RENAME, DELETE."""
    server, root = bftpServer
    data = os.urandom(3_000_000)
    (tmp_path / "up").write_bytes(data)
    client = await bftpConnect(reactor, "127.0.0.1", server.port)
    try:
        await client.login(USER, PASSWORD)
        digest = negotiatedDigest(data)
        assert await client.put(str(tmp_path / "up"), "/big.bin") == digest
        assert await client.get("/big.bin", str(tmp_path / "down")) == digest
        assert (tmp_path / "down").read_bytes() == data
        assert (root / "big.bin").read_bytes() == data
        stat = await client.stat("/big.bin")
        assert stat.exists and stat.size == len(data) and stat.kind == "file"
        assert await client.hash("/big.bin", client.digest) == digest
        assert await client.hash("/big.bin") == hashlib.sha256(data).hexdigest()
        await client.mkdir("/d")
        await client.rename("/big.bin", "/d/moved.bin")
        names = [e.name for e in await client.list("/d")]
        assert names == ["moved.bin"]
        with pytest.raises(BFTPError) as e:
            await client.get("/nope", str(tmp_path / "nope"))
        assert e.value.code == 550
        with pytest.raises(BFTPError) as e:
            await client.rmdir("/d")
        assert e.value.code == 555
        await client.delete("/d/moved.bin")
        await client.rmdir("/d")
    finally:
        await client.quit()


def test_bftpResumedGet(bftpServer):
    """GET from an offset sends only the rest, in chunks, then the digest of the whole file."""
    server, root = bftpServer
    data = os.urandom(100_000)
    (root / "resume.bin").write_bytes(data)
    raw = login(server.port)
    raw.send(b"GET /resume.bin 60000\r\n")
    assert raw.reply() == "150 100000 60000 sending 40000 bytes"
    body = b""
    while True:
        while len(raw.buffer) < 8:
            raw.buffer += raw.sock.recv(65536)
        n = int(raw.buffer[:8], 16)
        raw.buffer = raw.buffer[8:]
        if n == 0:
            break
        while len(raw.buffer) < n:
            raw.buffer += raw.sock.recv(65536)
        body, raw.buffer = body + raw.buffer[:n], raw.buffer[n:]
    assert body == data[60000:]
    assert raw.reply() == f"226 {hashlib.sha256(data).hexdigest()} sent 40000 bytes"
    raw.close()


def test_bftpAnonymousIsReadOnly(bftpServer):
    """The anonymous user may read but every write is refused with 534."""
    server, _ = bftpServer
    raw = login(server.port, "anonymous", "guest")
    raw.send(b"LIST /\r\nPUT /x\r\nMKDIR /y\r\n")
    assert raw.reply().startswith("212 ")
    assert raw.reply().startswith("534 PUT refused")
    assert raw.reply().startswith("534 MKDIR refused")
    raw.close()


def test_bftpUploadLockAcrossConnections(bftpServer):
    """While one connection uploads a path, another's PUT or DELETE of it gets 450; then it is stored."""
    server, root = bftpServer
    first, second = login(server.port), login(server.port)
    first.send(b"PUT /locked.txt\r\n")
    assert first.reply().startswith("350 0 ")
    second.send(b"PUT /locked.txt\r\nDELETE /locked.txt\r\n")
    assert second.reply().startswith("450 ")
    assert second.reply().startswith("450 ")
    body = b"hello"
    first.send(chunkHeader(len(body)) + body + b"00000000" + hashlib.sha256(body).hexdigest().encode() + b"\r\n")
    assert first.reply().startswith("226 ")
    assert (root / "locked.txt").read_bytes() == body
    second.send(b"DELETE /locked.txt\r\n")
    assert second.reply().startswith("250 ")
    first.close()
    second.close()


def test_sharedUploadNamesAcrossForks(tmp_path):
    """A name a forked child adds to the shared upload set is in the parent's view while the child lives, and gone once it exits."""
    names = threaded.SharedNameSet(str(tmp_path))
    added, done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            names.add("/up.bin")
            os.write(added[1], b"x")
            os.read(done[0], 1)
        finally:
            os._exit(0)
    try:
        os.read(added[0], 1)
        assert "/up.bin" in names and list(names) == ["/up.bin"]
        with pytest.raises(BlockingIOError):
            names.add("/up.bin")
    finally:
        os.write(done[1], b"x")
        os.waitpid(pid, 0)
        for fd in (*added, *done):
            os.close(fd)
    assert "/up.bin" not in names and list(names) == []


@pytest.mark.parametrize("forking", [False, True])
def test_bftpTwinUploadSet(forking, tmp_path):
    """The forking BFTP twin builds its factory with the upload set its children share; the threaded twin with a set in memory."""
    options = threaded.Options()
    options.parseOptions(["--listen", "127.0.0.1:0", "--root", str(tmp_path), "--anonymous"] + ["--forking"] * forking)
    server = threaded.makeServer(options, BlockingReactor())
    try:
        assert type(server.factory.uploads) is (threaded.SharedNameSet if forking else set)
    finally:
        server.server_close()


@pytest.mark.parametrize("maxChildren", [None, 7])
def test_forkingServerChildCap(maxChildren):
    """The forking server serves as many connections at once as asked, and by default as many as fit under the descriptor limit."""
    server = ForkingServer(("127.0.0.1", 0), None, BlockingReactor(), maxChildren)
    try:
        assert server.max_children == (defaultMaxConnections() if maxChildren is None else maxChildren)
    finally:
        server.server_close()


# -- chat -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_chatConversation(reactor, chatServer):
    """Messages, history replay, private messages, WHO, LIST, TOPIC, PART and QUIT reach the others."""
    port = chatServer.port
    ada = await chatConnect(reactor, "127.0.0.1", port)
    bob = await chatConnect(reactor, "127.0.0.1", port)
    await ada.nick("ada")
    await bob.nick("bob")
    await ada.join("conv")
    await ada.say("conv", "first")
    history = await bob.join("conv")
    assert [(e.nick, e.text) for e in history] == [("ada", "first")]
    heard = bob.nextEvent("MESSAGE", room="conv")
    await ada.say("conv", "hello bob")
    assert (await heard).text == "hello bob"
    private = ada.nextEvent("PRIVATE")
    await bob.msg("ada", "psst")
    assert (await private).text == "psst"
    assert sorted(await ada.who("conv")) == ["ada", "bob"]
    assert ("conv", 2, "") in await bob.list()
    topic = bob.nextEvent("TOPIC")
    await ada.topic("conv", "tea at four")
    assert (await topic).text == "tea at four"
    assert await bob.topic("conv") == "tea at four"
    parted = ada.nextEvent("PART")
    await bob.part("conv", "later")
    assert (await parted).nick == "bob"
    await bob.join("conv")
    gone = bob.nextEvent("QUIT")
    await ada.quit("bye")
    assert (await gone).text == "bye"
    await bob.quit()


def test_chatRules(chatServer):
    """Refusals: before NICK, nick in use, registered nick, long line, unknown verb; PING; bare LF."""
    one, two = Raw(chatServer.port), Raw(chatServer.port)
    assert one.reply().startswith("220 ") and two.reply().startswith("220 ")
    one.send(b"JOIN x\r\nNICK rules1\r\nFROB\r\nPING tok\nJOIN #bad room\r\n")
    assert one.reply().startswith("503 ")
    assert one.reply().startswith("230 rules1")
    assert one.reply().startswith("500 unknown command")
    assert one.reply() == "200 PONG tok"
    assert one.reply()[:1] == "5"
    two.send(b"NICK RULES1\r\nNICK demo\r\nNICK demo wrong\r\nNICK demo pw\r\n")
    assert two.reply().startswith("433 ")
    assert two.reply().startswith("530 ")
    assert two.reply().startswith("530 ")
    assert two.reply() == "230 demo is your nickname (account demo)"
    one.send(b"SAY x " + b"y" * 600 + b"\r\nPING again\r\n")
    assert one.reply().startswith("500 line too long")
    assert one.reply() == "200 PONG again"
    one.close()
    two.close()


@pytest_twisted.ensureDeferred
async def test_chatBroadcastToMany(reactor, chatServer):
    """One SAY in a room of 30 reaches the other 29, whichever connection or process serves them."""
    port = chatServer.port
    clients = []
    for i in range(30):
        c = await chatConnect(reactor, "127.0.0.1", port)
        await c.nick(f"m{i}")
        await c.join("many")
        clients.append(c)
    waits = [c.nextEvent("MESSAGE", room="many") for c in clients[1:]]
    await clients[0].say("many", "to all")
    for d in waits:
        assert (await d).text == "to all"
    for c in clients:
        await c.quit()


# -- reactors --------------------------------------------------------------------


@pytest.mark.parametrize("reactorName", ["select", "poll"])
def test_twistdReactors(reactorName, tmp_path):
    """twistd runs both servers under --reactor select and poll, and says so in its log."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "f").write_bytes(b"data")
    logPath = tmp_path / "log"
    with open(logPath, "wb") as log:
        bftp = RunningServer("bftp", f"twisted-{reactorName}", ["--root", str(tmp_path / "root"), "--anonymous"], log)
        chat = RunningServer("chat", f"twisted-{reactorName}", ["--history-db", ":memory:"], log)
        try:
            raw = login(bftp.port, "anonymous", "x")
            raw.send(b"STAT /f\r\n")
            assert "size=4" in raw.reply()
            raw.close()
            raw = Raw(chat.port)
            assert raw.reply().startswith("220 ")
            raw.send(b"NICK r\r\nJOIN lab\r\n")
            assert raw.reply().startswith("230 ") and raw.reply().startswith("250 ")
            raw.close()
        finally:
            bftp.stop()
            chat.stop()
    name = {"select": "SelectReactor", "poll": "PollReactor"}[reactorName]
    assert logPath.read_text().count(f"reactor class: twisted.internet.{reactorName}reactor.{name}") == 2
