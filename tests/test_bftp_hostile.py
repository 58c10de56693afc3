"""
BFTP against hostile and careless clients (issue 10), in memory: iosim
joins the server and its clients, a fake clock drives time, and no socket
or global reactor is involved.

  - the one-upload-per-path lock holds whichever symbolic link inside the
    root leads to the path;
  - names of 242-255 bytes, too long to take the partial-upload prefix,
    go through every step of an upload and back;
  - twenty connections guessing one account at once get no more password
    checks than one (docs/bftp.md section 13.3).
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver

import coursenet.accounts
from bftp.auth import makePortal
from bftp.fs import PARTIAL_PREFIX
from bftp.protocol import BFTPFactory
from bftp.wire import encodePath
from coursenet.accounts import PasswordChecker, hashPassword, writePasswordFile
from coursenet.throttle import GuessRule
from tests.bftp_support import LOGIN, PASSWORD, USER, FakeReactor, Raw, connected, makeFactory, negotiatedDigest, result


@pytest.fixture
def fake():
    return FakeReactor()


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


def codes(lines):
    return [int(line[:3]) for line in lines]


def rawSession(factory, fake):
    """
    A raw client of C{factory}, logged in; its replies from now on are
    C{client.lines()[4:]}.
    """
    client, server, pump = connected(factory, fake, Raw)
    client.transport.write(LOGIN)
    pump.flush()
    assert codes(client.lines()) == [220, 200, 331, 230]
    return client, pump


def send(client, pump, line: bytes) -> list[str]:
    """
    Send one command; the reply lines it brought.
    """
    before = len(client.lines())
    client.transport.write(line + b"\r\n")
    pump.flush()
    return client.lines()[before:]


def chunk(data: bytes) -> bytes:
    return b"%08x" % len(data) + data


# -- the upload lock is on where the data lands ---------------------------


def test_lockFollowsLinkInsideRoot(root, fake):
    """While PUT releases/app.bin runs, PUT, DELETE and MKDIR of latest/app.bin (latest -> releases) get 450, and the first upload completes intact."""
    (root / "releases").mkdir()
    os.symlink("releases", root / "latest")
    factory = makeFactory(root, fake)
    uploader, p1 = rawSession(factory, fake)
    first, rest = b"first half;", b" second half"
    assert codes(send(uploader, p1, b"PUT releases/app.bin")) == [350]
    uploader.transport.write(chunk(first))
    p1.flush()
    fake.advance(0)  # small pieces reach the file at the end of the reactor turn
    assert (root / "releases" / (PARTIAL_PREFIX + "app.bin")).read_bytes() == first

    other, p2 = rawSession(factory, fake)
    for command in (b"PUT latest/app.bin", b"DELETE latest/app.bin", b"MKDIR latest/app.bin"):
        replies = send(other, p2, command)
        assert codes(replies) == [450], (command, replies)
        assert "in progress" in replies[0]
    # The second client's connection is still usable after the refusals.
    assert codes(send(other, p2, b"NOOP")) == [200]

    digest = hashlib.sha256(first + rest).hexdigest().encode()
    uploader.transport.write(chunk(rest) + b"00000000" + digest + b"\r\n")
    p1.flush()
    fake.advance(0)
    p1.flush()
    assert codes(uploader.lines()[4:]) == [350, 226]
    assert (root / "releases" / "app.bin").read_bytes() == first + rest
    assert sorted(os.listdir(root / "releases")) == ["app.bin"]
    assert not factory.uploads


# -- names too long for the partial prefix ---------------------------------


@pytest.mark.parametrize("name", [
    "a" * 238 + ".bin",  # 242 bytes: the shortest name the prefix pushed past 255
    "z" * 251 + ".bin",  # 255 bytes: NAME_MAX
    "é" * 123 + "-long.bin",  # 255 bytes in 132 characters
], ids=["242", "255", "utf8-255"])
def test_longNamesUploadResumeAndBack(root, fake, tmp_path, name):
    """A 242-255-byte name is uploaded, shows its partial in STAT, resumes after a cut, downloads, hashes and deletes; LIST never shows the partial."""
    assert 242 <= len(name.encode()) <= 255
    data = os.urandom(3000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    factory = makeFactory(root, fake)

    # An upload cut after 1000 bytes.
    cut, p1 = rawSession(factory, fake)
    assert codes(send(cut, p1, b"PUT " + encodePath(name).encode())) == [350]
    cut.transport.write(chunk(data[:1000]))
    p1.flush()
    cut.transport.abortConnection()
    p1.flush()
    assert not factory.uploads
    partials = [n for n in os.listdir(root) if n.startswith(PARTIAL_PREFIX)]
    assert len(partials) == 1 and len(partials[0].encode()) <= 255
    assert os.path.getsize(root / partials[0]) == 1000

    client, server, pump = connected(factory, fake)
    result(client.hello(), pump)
    result(client.login(USER, PASSWORD), pump)
    st = result(client.stat(name), pump)
    assert not st.exists and st.partial == 1000
    assert result(client.list("/"), pump) == []
    starts = []
    digest = result(client.put(str(src), name, resume=True, onStart=lambda size, at: starts.append(at)), pump)
    assert starts == [1000]
    assert digest == negotiatedDigest(data)
    assert os.listdir(root) == [name]
    assert [e.name for e in result(client.list("/"), pump)] == [name]
    st = result(client.stat(name), pump)
    assert st.exists and st.size == 3000 and st.partial == 0

    back = tmp_path / "back.bin"
    assert result(client.get(name, str(back)), pump) == digest
    assert back.read_bytes() == data
    assert result(client.hash(name, client.digest), pump) == digest

    # A second cut upload, then DELETE takes the file and the partial.
    again, p3 = rawSession(factory, fake)
    assert codes(send(again, p3, b"PUT " + encodePath(name).encode())) == [350]
    again.transport.write(chunk(b"x" * 10))
    p3.flush()
    again.transport.abortConnection()
    p3.flush()
    assert [e.name for e in result(client.list("/"), pump)] == [name]
    assert result(client.stat(name), pump).partial == 10
    reply = result(client.delete(name), pump)
    assert "file and unfinished upload" in reply.text
    assert os.listdir(root) == []


# -- twenty connections guess no faster than one ---------------------------


def test_twentyParallelGuessesGetNoMoreChecksThanOne(root, fake, monkeypatch):
    """Twenty connections sending one wrong PASS each for one account at once get 4 password checks in the first burst (the 3 free failures and the next slot, docs/bftp.md 13.3 and coursenet/throttle.py), 9 in the first minute, as one guesser would."""
    checked: list[float] = []
    verify = coursenet.accounts.verifyPassword

    def counting(password, encoded):
        checked.append(fake.seconds())
        return verify(password, encoded)

    monkeypatch.setattr(coursenet.accounts, "verifyPassword", counting)
    # The default rule: 3 free failures, then 1 s doubling up to 60 s.
    factory = makeFactory(root, fake)
    clients = []
    for n in range(20):
        client, server, pump = connected(factory, fake, Raw)
        # Each a different password: checks of the same one would be shared.
        client.transport.write(f"HELLO BFTP/1\r\nUSER {USER}\r\nPASS wrong {n}\r\n".encode())
        clients.append((client, pump))
    for _, pump in clients:
        pump.flush()

    def answered():
        for _, pump in clients:
            pump.flush()
        return sum(1 for c, _ in clients if any(line.startswith("530 ") for line in c.lines()))

    assert len(checked) == 4 and answered() == 4
    for t in (0.5, 0.999):
        fake.advance(t - fake.seconds())
        assert len(checked) == 4 and answered() == 4, t
    # Then 1, 2, 4, 8, 16 s apart: checks at 1, 3, 7, 15, 31 s, and the
    # next at 63 s.
    for t in range(1, 61):
        fake.advance(t - fake.seconds())
        answered()
    assert checked == pytest.approx([0, 0, 0, 0, 1, 3, 7, 15, 31])
    assert answered() == 9


class _Replies(LineOnlyReceiver):
    """
    A raw client that notes when each reply line arrives.
    """

    def connectionMade(self) -> None:
        self.replies: list[tuple[float, str]] = []

    def lineReceived(self, line: bytes) -> None:
        self.replies.append((time.monotonic(), line.decode("utf-8", "replace")))


@pytest_twisted.ensureDeferred
async def test_twentyParallelGuessesOverSocketsWithSharedCounts(reactor, root, tmp_path, monkeypatch):
    """Over real sockets, with a password file (counts shared in SQLite, as twistd keeps them), twenty connections each sending one wrong PASS at once get at most the 4 checks one guesser gets before the throttle's first delay (docs/bftp.md 13.3)."""
    checked: list[float] = []
    verify = coursenet.accounts.verifyPassword

    def counting(password, encoded):
        checked.append(time.monotonic())
        return verify(password, encoded)

    monkeypatch.setattr(coursenet.accounts, "verifyPassword", counting)
    passwd = str(tmp_path / "passwd")
    writePasswordFile(passwd, {USER: hashPassword(PASSWORD, n=2**10)})
    delay = 3.0
    rule = GuessRule(free=3, delay=delay, maxDelay=60, budget=10)
    checker = PasswordChecker(passwd, reactor=reactor, rule=rule)
    factory = BFTPFactory(str(root), makePortal(checker), reactor=reactor, loginDelay=0, maxPerAddress=100)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    clients = []
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        clients = [await endpoint.connect(Factory.forProtocol(_Replies)) for _ in range(20)]
        start = time.monotonic()
        for n, c in enumerate(clients):
            c.transport.write(f"HELLO BFTP/1\r\nUSER {USER}\r\nPASS wrong {n}\r\n".encode())

        def refusals(before: float) -> int:
            return sum(1 for c in clients for t, line in c.replies if line.startswith("530 ") and t < before)

        # The first burst is answered at once; wait for it, then a while more.
        for _ in range(100):
            if refusals(float("inf")) >= 4:
                break
            await deferLater(reactor, 0.05, lambda: None)
        await deferLater(reactor, 0.5, lambda: None)
        window = start + delay * 0.9
        assert refusals(float("inf")) >= 4
        assert len([t for t in checked if t < window]) <= 4
        assert refusals(window) <= 4
    finally:
        for c in clients:
            c.transport.abortConnection()
        await port.stopListening()
        checker.throttle.close()
        await deferLater(reactor, 0.05, lambda: None)
