"""
The chat server over real loopback sockets: the scripting client in plain
TCP and TLS, history in SQLite across a restart, the twistd plugin with a
real IRC client (ii), IRC over TLS with weechat verifying the certificate,
the terminal client, and 1000 clients in one room.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from chat.client import ChatClient, ChatReplyError, connect
from chat.irc import IRCFactory
from chat.protocol import ChatFactory
from chat.rooms import ChatServer, Event
from chat.session import Limits
from chat.store import MemoryHistory, SQLiteHistory
from coursenet.accounts import PasswordChecker
from coursenet.admission import defaultMaxConnections
from coursenet.procs import stopProcess
from coursenet.tls import ensureDevCertificate, serverContextFactory
from tests.conftest import skipOrFail

BIN = os.path.dirname(sys.executable)


async def listen(reactor, store=None, tls=None, limits=Limits(floodRate=0)):
    """
    A chat server on 127.0.0.1, port 0: C{(port, server)}.  Every test
    client comes from 127.0.0.1: the cap per address is the total's.
    """
    server = ChatServer(store or MemoryHistory(), reactor=reactor, maxPerAddress=defaultMaxConnections())
    factory = ChatFactory(server, limits, reactor=reactor)
    if tls:
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, serverContextFactory(*tls), interface="127.0.0.1")
    else:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(factory)
    return port, server


async def closeAll(port, *clients):
    for client in clients:
        if client.transport.connected:
            client.transport.abortConnection()
            await client.closed
    await port.stopListening()


async def wait(predicate, reactor, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await deferLater(reactor, 0.05)


@pytest_twisted.ensureDeferred
async def test_two_clients_chat_over_tcp(reactor):
    """Over loopback, one client's SAY reaches the other as a MESSAGE event."""
    port, _ = await listen(reactor)
    n = port.getHost().port
    ada = await connect(reactor, "127.0.0.1", n)
    bob = await connect(reactor, "127.0.0.1", n)
    try:
        await ada.nick("ada")
        await bob.nick("bob")
        await ada.join("lab")
        joined = ada.nextEvent("JOIN", room="lab")
        await bob.join("lab")
        assert (await joined).nick == "bob"
        got = bob.nextEvent("MESSAGE", room="lab")
        await ada.say("lab", "hello, lab")
        event = await got
        assert (event.nick, event.text) == ("ada", "hello, lab")
        assert await bob.who("lab") == ["ada", "bob"]
        with pytest.raises(ChatReplyError) as e:
            await bob.nick("ADA")
        assert e.value.code == 433
        await ada.quit("done")
    finally:
        await closeAll(port, ada, bob)


@pytest_twisted.ensureDeferred
async def test_tls_with_verification(reactor, devCert, tmp_path):
    """TLS works when the client trusts the certificate, and fails against another CA."""
    port, _ = await listen(reactor, tls=devCert)
    n = port.getHost().port
    try:
        client = await connect(reactor, "127.0.0.1", n, tls=True, cafile=devCert[0])
        await client.nick("secure")
        assert client.transport.getPeerCertificate() is not None
        await client.quit()
        otherCA, _ = ensureDevCertificate(str(tmp_path / "other"))
        with pytest.raises(Exception):
            await connect(reactor, "127.0.0.1", n, tls=True, cafile=otherCA, timeout=5)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_history_survives_restart(reactor, tmp_path):
    """Messages stored in SQLite by one server are replayed on join by the next."""
    db = str(tmp_path / "history.sqlite")
    store = SQLiteHistory(db, reactor=reactor)
    port, _ = await listen(reactor, store)
    ada = await connect(reactor, "127.0.0.1", port.getHost().port)
    await ada.nick("ada")
    await ada.join("lab")
    await ada.topic("lab", "persistence")
    for n in range(3):
        await ada.say("lab", f"note {n}")
    await closeAll(port, ada)
    await store.close()

    store = SQLiteHistory(db, reactor=reactor)
    port, _ = await listen(reactor, store)
    bob = await connect(reactor, "127.0.0.1", port.getHost().port)
    try:
        await bob.nick("bob")
        history = await bob.join("lab")
        assert [(e.nick, e.text) for e in history] == [("ada", f"note {n}") for n in range(3)]
        assert await bob.topic("lab") == "persistence"
    finally:
        await closeAll(port, bob)
        await store.close()


class _Collect(ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_terminal_client(reactor):
    """The chat console script joins a room, says typed lines there and quits on /quit."""
    port, _ = await listen(reactor)
    n = port.getHost().port
    watcher = await connect(reactor, "127.0.0.1", n)
    proto = _Collect()
    try:
        await watcher.nick("watcher")
        await watcher.join("lab")
        joined = watcher.nextEvent("JOIN", room="lab")
        said = watcher.nextEvent("MESSAGE", room="lab")
        reactor.spawnProcess(
            proto, os.path.join(BIN, "chat"),
            ["chat", "127.0.0.1", "terminal", "--port", str(n), "--room", "lab"],
            env=dict(os.environ),
        )
        await joined
        proto.transport.write(b"hello from the terminal\n")
        event = await said
        assert (event.nick, event.text) == ("terminal", "hello from the terminal")
        await watcher.msg("terminal", "psst")
        await wait(lambda: b"*watcher* psst" in proto.out, reactor)
        proto.transport.write(b"/quit\n")
        assert await proto.ended == 0
    finally:
        if proto.transport is not None and proto.transport.pid is not None:
            proto.transport.signalProcess("KILL")
        await closeAll(port, watcher)


class _Twistd:
    """
    C{twistd -n chat} in a subprocess, with the ports it bound.
    """

    def __init__(self, tmp_path, *args):
        self.log = tmp_path / "twistd.log"
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile", str(self.log), "chat",
             "--history-db", str(tmp_path / "h.sqlite"), *args],
            cwd=str(tmp_path),
        )

    async def ports(self, reactor):
        found = {}

        def ready():
            text = self.log.read_text() if self.log.exists() else ""
            found.update(re.findall(r"(ChatFactory|IRCFactory) starting on (\d+)", text))
            assert self.proc.poll() is None, text
            return len(found) == 2

        await wait(ready, reactor)
        return int(found["ChatFactory"]), int(found["IRCFactory"])

    def stop(self):
        stopProcess(self.proc)


@pytest_twisted.ensureDeferred
async def test_twistd_plugin_serves_course_and_irc_clients(reactor, tmp_path):
    """twistd -n chat --listen --irc: the ii IRC client and a course client share a room both ways."""
    ii = shutil.which("ii")
    if ii is None:
        skipOrFail("the ii IRC client is not installed (make sysdeps)")
    server = _Twistd(tmp_path, "--listen", "tcp:0:interface=127.0.0.1", "--irc", "tcp:0:interface=127.0.0.1")
    irc = None
    course = None
    try:
        chatPort, ircPort = await server.ports(reactor)
        course = await connect(reactor, "127.0.0.1", chatPort)
        await course.nick("course")
        await course.join("lab")
        ircdir = tmp_path / "irc"
        irc = subprocess.Popen([ii, "-s", "127.0.0.1", "-p", str(ircPort), "-n", "iiuser", "-i", str(ircdir)])
        base = ircdir / "127.0.0.1"
        await wait(lambda: (base / "in").exists() and b"Welcome" in _read(base / "out"), reactor)
        joined = course.nextEvent("JOIN", room="lab")
        _fifo(base / "in", b"/j #lab\n")
        assert (await joined).nick == "iiuser"
        await course.say("lab", "hello IRC")
        await wait(lambda: b"<course> hello IRC" in _read(base / "#lab" / "out"), reactor)
        heard = course.nextEvent("MESSAGE", room="lab")
        _fifo(base / "#lab" / "in", b"hello course\n")
        event = await heard
        assert (event.nick, event.text) == ("iiuser", "hello course")
        assert await course.who("lab") == ["course", "iiuser"]
        private = course.nextEvent("PRIVATE")
        _fifo(base / "in", b"/j course psst\n")
        assert (await private).text == "psst"
        quit = course.nextEvent("QUIT", nick="iiuser")
        _fifo(base / "in", b"/q bye\n")
        assert (await quit).text == "bye"
    finally:
        if irc is not None:
            stopProcess(irc)
        if course is not None:
            course.transport.abortConnection()
            await course.closed
        server.stop()


def _weechat(home, port: int, nick: str, *commands: str, cafile: str | None = None) -> subprocess.Popen:
    """
    weechat-headless connecting to 127.0.0.1 (as localhost) on C{port} over
    TLS, verifying the certificate against C{cafile} only (or the system's
    CAs), logging every buffer to C{home}/logs at once.
    """
    setup = ["/set logger.file.flush_delay 0"]
    if cafile is not None:
        setup += ["/set weechat.network.gnutls_ca_system off", f"/set weechat.network.gnutls_ca_user {cafile}"]
    setup += [
        f"/server add lab localhost/{port} -ssl",
        "/set irc.server.lab.ssl_verify on",
        f"/set irc.server.lab.nicks {nick}",
        "/set irc.server.lab.autojoin #lab",
        *commands,
        "/connect lab",
    ]
    return subprocess.Popen(
        [shutil.which("weechat-headless") or "weechat-headless", "--dir", str(home), "-r", ";".join(setup)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


@pytest_twisted.ensureDeferred
async def test_irc_over_tls_with_weechat_verifying_the_certificate(reactor, devCert, tmp_path):
    """weechat over TLS, trusting only the server's certificate, joins a room and talks both ways with a course client; a weechat that cannot verify the certificate never gets in."""
    if shutil.which("weechat-headless") is None:
        skipOrFail("weechat-headless is not installed (make sysdeps)")
    server = ChatServer(MemoryHistory(), reactor=reactor, maxPerAddress=defaultMaxConnections())
    tls = endpoints.SSL4ServerEndpoint(reactor, 0, serverContextFactory(*devCert), interface="127.0.0.1")
    ircPort = await tls.listen(IRCFactory(server, Limits(), reactor=reactor))
    chatPort = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        ChatFactory(server, Limits(), reactor=reactor)
    )
    course = await connect(reactor, "127.0.0.1", chatPort.getHost().port)
    procs = []
    try:
        await course.nick("course")
        await course.join("lab")
        joined = course.nextEvent("JOIN", room="lab")
        procs.append(_weechat(tmp_path / "wee", ircPort.getHost().port, "wee", cafile=devCert[0]))
        assert (await joined).nick == "wee"
        await course.say("lab", "hello weechat")
        log = tmp_path / "wee" / "logs" / "irc.lab.#lab.weechatlog"
        await wait(lambda: b"hello weechat" in _read(log), reactor, timeout=20)
        heard = course.nextEvent("MESSAGE", room="lab")
        fifo = tmp_path / "wee" / f"weechat_fifo_{procs[0].pid}"
        await wait(fifo.exists, reactor)
        _fifo(fifo, b"irc.lab.#lab *hello course\n")
        event = await heard
        assert (event.nick, event.text) == ("wee", "hello course")

        procs.append(_weechat(tmp_path / "untrusted", ircPort.getHost().port, "untrusted"))
        refused = tmp_path / "untrusted" / "logs" / "irc.server.lab.weechatlog"
        await wait(lambda: b"TLS handshake failed" in _read(refused), reactor, timeout=20)
        assert b"certificate is NOT trusted" in _read(refused)
        assert "untrusted" not in server.users
    finally:
        for proc in procs:
            stopProcess(proc)
        course.transport.abortConnection()
        await course.closed
        await ircPort.stopListening()
        await chatPort.stopListening()


def _read(path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _fifo(path, data: bytes) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class _Counter(ChatClient):
    """
    A light client that counts MESSAGE events per sender and checks order.
    """

    def __init__(self):
        super().__init__()
        self.seen: dict[str, list[int]] = {}

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"MESSAGE "):
            _, _, nick, text = line.split(b" ", 3)
            self.seen.setdefault(nick.decode(), []).append(int(text))
        else:
            super().lineReceived(line)


@pytest_twisted.ensureDeferred
async def test_thousand_clients_in_one_room(reactor):
    """1000 clients in one room: every message reaches every other member once, in order per sender."""
    from twisted.internet.protocol import Factory

    port, server = await listen(reactor)
    n = port.getHost().port
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", n)
    clients: list[_Counter] = []
    try:
        for batch in range(10):
            made = await defer.gatherResults(
                [endpoint.connect(Factory.forProtocol(_Counter)) for _ in range(100)]
            )
            await defer.gatherResults([c.greeting.deferred for c in made])
            await defer.gatherResults(
                [c.nick(f"u{batch * 100 + i}") for i, c in enumerate(made)]
            )
            await defer.gatherResults([c.join("crowd") for c in made])
            clients.extend(made)
        assert len(server.rooms["crowd"].members) == 1000
        senders, count = clients[:5], 20
        await defer.gatherResults(
            [s.say("crowd", str(i)) for i in range(count) for s in senders]
        )
        expected = count * len(senders)

        def done():
            return all(
                sum(len(v) for v in c.seen.values()) >= expected - (count if c in senders else 0)
                for c in clients
            )

        await wait(done, reactor, timeout=60)
        for c in clients:
            for s in senders:
                if s is c:
                    assert s.nickname not in c.seen
                else:
                    assert c.seen[s.nickname] == list(range(count))
    finally:
        for c in clients:
            c.transport.abortConnection()
        await defer.gatherResults([c.closed for c in clients])
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_history_kept_for_at_most_max_rooms(reactor, tmp_path):
    """The SQLite and memory stores keep history for the most recently written rooms only, no more than --max-rooms."""
    from chat.tap import Options, makeServer

    options = Options()
    options.parseOptions(["--max-rooms", "2", "--history-db", str(tmp_path / "h.sqlite")])
    server, _ = makeServer(options, reactor)
    assert server.store.rooms == 2
    await server.store.close()
    for store in (SQLiteHistory(str(tmp_path / "cap.sqlite"), reactor=reactor, rooms=2), MemoryHistory(rooms=2)):
        try:
            for n, room in enumerate(["a", "b", "a", "c"]):
                store.append(Event("MESSAGE", "ada", room, f"m{n}", float(n)))
                await store.load(room, 10)  # one write batch per message
            for room, texts in [("a", ["m0", "m2"]), ("b", []), ("c", ["m3"])]:
                _, messages, _ = await store.load(room, 10)
                assert [e.text for e in messages] == texts, (store, room)
        finally:
            await store.close()


def _saslSession(port: int, password: bytes) -> bytes:
    """
    An IRC client logging in to account prof with SASL PLAIN; once in, it
    makes #lab moderated and quits.  What the server said.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        plain = base64.b64encode(b"\x00prof\x00" + password)
        sock.sendall(b"CAP REQ :sasl\r\nAUTHENTICATE PLAIN\r\nAUTHENTICATE " + plain + b"\r\n")
        data = b""
        while b" 903 " not in data and b" 904 " not in data:
            data += sock.recv(65536)
        if b" 903 " in data:
            sock.sendall(b"NICK prof\r\nUSER prof 0 * :Prof\r\nCAP END\r\nMODE #lab +m\r\nQUIT\r\n")
            while b"ERROR" not in data:
                data += sock.recv(65536)
        return data
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_irc_sasl_plain_and_instructor_over_tcp(reactor):
    """Over a socket, SASL PLAIN checks the password file (904 for a wrong password) and logs in; an instructor so logged in moderates a room it did not create."""
    checker = PasswordChecker(None, [("prof", "sesame")], reactor=reactor)
    server = ChatServer(MemoryHistory(), checker=checker, reactor=reactor, instructors=["prof"],
                        maxPerAddress=defaultMaxConnections())
    tcp = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    ircPort = await tcp.listen(IRCFactory(server, Limits(floodRate=0), reactor=reactor))
    chatPort = await tcp.listen(ChatFactory(server, Limits(floodRate=0), reactor=reactor))
    course = await connect(reactor, "127.0.0.1", chatPort.getHost().port)
    try:
        await course.nick("ann")
        await course.join("lab")
        wrong = await deferToThread(_saslSession, ircPort.getHost().port, b"nope")
        assert b" 904 " in wrong and b" 001 " not in wrong
        moderated = course.nextEvent("MODE", room="lab")
        right = await deferToThread(_saslSession, ircPort.getHost().port, b"sesame")
        assert b" 900 " in right and b" 001 prof " in right
        assert ((await moderated).nick, (await moderated).text) == ("prof", "+m")
    finally:
        await closeAll(chatPort, course)
        await ircPort.stopListening()
