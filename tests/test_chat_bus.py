"""
Rooms shared across chat nodes through Redis (chat.bus): a real
redis-server on a free loopback port and two C{twistd chat --bus} nodes,
with a course client on one and the ii IRC client on the other.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer

from chat.bus import parseBusURL
from chat.client import ChatReplyError, connect
from coursenet.procs import stopProcess
from tests.conftest import skipOrFail
from tests.test_chat_integration import _fifo, _read, _Twistd, wait


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Redis:
    """
    redis-server on 127.0.0.1, keeping nothing on disk.
    """

    def __init__(self, tmp_path, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            skipOrFail("redis-server is not installed (make sysdeps)")
        self.port = port or _freePort()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )

    async def ready(self, reactor) -> None:
        def up():
            assert self.proc.poll() is None, "redis-server exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        await wait(up, reactor)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stopProcess(self.proc)


def _node(tmp_path, name: str, redis: _Redis) -> _Twistd:
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    return _Twistd(home, "--listen", "tcp:0:interface=127.0.0.1", "--irc", "tcp:0:interface=127.0.0.1",
                   "--bus", redis.url, "--bus-heartbeat", "0.5")


def test_bus_url_parsed_and_refused_with_reason():
    """--bus takes redis://HOST:PORT/DB; anything else is refused saying what is wrong."""
    a = parseBusURL("redis://127.0.0.1:6390/3")
    assert (a.host, a.port, a.db) == ("127.0.0.1", 6390, 3)
    assert parseBusURL("redis://h").port == 6379
    with pytest.raises(ValueError, match="redis://"):
        parseBusURL("http://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="database is a number"):
        parseBusURL("redis://127.0.0.1:6379/x")


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_a_room_across_restarts(reactor, tmp_path):
    """A course client on node A and ii on node B talk both ways in one room; nicks are unique across
    nodes; node B killed (-9) quits its members on A; restarted B sees A's room; Redis down refuses
    messages with a reason, and once Redis is back the nodes talk again."""
    ii = shutil.which("ii")
    if ii is None:
        skipOrFail("the ii IRC client is not installed (make sysdeps)")
    redis = _Redis(tmp_path)
    await redis.ready(reactor)
    nodeA = _node(tmp_path, "a", redis)
    nodeB = _node(tmp_path, "b", redis)
    irc = course = other = late = None
    clients: list = []
    try:
        chatA, _ = await nodeA.ports(reactor)
        chatB, ircB = await nodeB.ports(reactor)
        course = await connect(reactor, "127.0.0.1", chatA)
        await _nick(reactor, course, "course")
        await course.join("lab")

        # Node B has reached Redis once it gives a nickname.
        other = await connect(reactor, "127.0.0.1", chatB)
        await _nick(reactor, other, "bee")

        # ii on node B joins the room node A's client is in.
        ircdir = tmp_path / "irc"
        irc = subprocess.Popen([ii, "-s", "127.0.0.1", "-p", str(ircB), "-n", "iiuser", "-i", str(ircdir)])
        base = ircdir / "127.0.0.1"
        await wait(lambda: (base / "in").exists() and b"Welcome" in _read(base / "out"), reactor)
        joined = course.nextEvent("JOIN", room="lab")
        _fifo(base / "in", b"/j #lab\n")
        assert (await joined).nick == "iiuser"
        assert await course.who("lab") == ["course", "iiuser"]

        # Both ways, in order per sender.
        for i in range(5):
            await course.say("lab", f"from A {i}")
        await wait(lambda: b"<course> from A 4" in _read(base / "#lab" / "out"), reactor)
        heardA = _read(base / "#lab" / "out").decode()
        assert [heardA.index(f"from A {i}") for i in range(5)] == sorted(heardA.index(f"from A {i}") for i in range(5))
        heard = course.nextEvent("MESSAGE", room="lab")
        _fifo(base / "#lab" / "in", b"hello from B\n")
        event = await heard
        assert (event.nick, event.text) == ("iiuser", "hello from B")
        private = course.nextEvent("PRIVATE")
        _fifo(base / "in", b"/j course psst across\n")
        assert (await private).text == "psst across"

        # A nickname held on node A is refused on node B.
        with pytest.raises(ChatReplyError, match="in use"):
            await other.nick("course")

        # Node B killed: its members quit the room on node A (three heartbeats).
        quit = course.nextEvent("QUIT", nick="iiuser")
        nodeB.proc.kill()
        nodeB.proc.wait()
        assert (await quit).text == "node went away"
        assert await course.who("lab") == ["course"]
        stopProcess(irc)
        irc = None
        # Its nicknames' claims in Redis expire too (three heartbeats unrenewed).
        again = await connect(reactor, "127.0.0.1", chatA)
        clients.append(again)
        for _ in range(100):
            try:
                await again.nick("iiuser")
                break
            except ChatReplyError as e:
                assert "in use" in str(e)
                await _sleep(reactor, 0.1)
        assert again.nickname == "iiuser"

        # Node B restarted: it learns node A's room and members.
        nodeB = _node(tmp_path, "b2", redis)
        chatB, _ = await nodeB.ports(reactor)
        late = await connect(reactor, "127.0.0.1", chatB)
        await _nick(reactor, late, "late")

        joined = course.nextEvent("JOIN", nick="late")
        await late.join("lab")
        await joined
        assert sorted(await late.who("lab")) == ["course", "late"]
        heard = late.nextEvent("MESSAGE", room="lab")
        await course.say("lab", "welcome back")
        assert (await heard).text == "welcome back"

        # Redis down: messages refused with a reason; back up: the nodes talk again.
        port = redis.port
        redis.stop()
        refused = None
        for _ in range(100):
            try:
                await course.say("lab", "while down")
            except ChatReplyError as e:
                refused = e
                break
            await _sleep(reactor, 0.05)
        assert refused is not None and "Redis" in str(refused)
        redis = _Redis(tmp_path, port)
        await redis.ready(reactor)
        delivered = None
        for i in range(100):
            heard = late.nextEvent("MESSAGE", room="lab")
            heard.addTimeout(1, reactor)
            try:
                await course.say("lab", f"after redis restart {i}")
                delivered = await heard
                break
            except (ChatReplyError, defer.TimeoutError):
                heard.addErrback(lambda f: None)
                heard.cancel()
                await _sleep(reactor, 0.1)
        assert delivered is not None and delivered.text.startswith("after redis restart")
    finally:
        if irc is not None:
            stopProcess(irc)
        for client in (course, other, late, *clients):
            if client is not None and client.transport.connected:
                client.transport.abortConnection()
                await client.closed
        nodeA.stop()
        nodeB.stop()
        redis.stop()


async def _nick(reactor, client, name: str) -> None:
    """
    NICK C{name}, again while the node has not reached Redis yet (450).
    """
    for _ in range(100):
        try:
            await client.nick(name)
            return
        except ChatReplyError as e:
            if "unreachable" not in str(e):
                raise
            await _sleep(reactor, 0.1)
    raise AssertionError(f"the node never reached Redis to claim {name}")


async def _sleep(reactor, seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)


def test_remote_member_is_a_participant_that_forwards_only_direct_events():
    """A member of another node provides IParticipant; room events stay here, a private message goes to its node."""
    from zope.interface.verify import verifyObject

    from chat.bus import RedisBus, RemoteMember
    from chat.interfaces import IParticipant
    from chat.rooms import Event

    bus = RedisBus("redis://127.0.0.1:1/0", reactor=object())
    sent: list[dict] = []
    bus.publish = sent.append  # type: ignore[method-assign]
    member = RemoteMember(bus, "elsewhere", {"nick": "ada", "user": "ada", "host": "h"})
    assert verifyObject(IParticipant, member)
    member.deliver(Event("MESSAGE", "bob", "lab", "hi"))
    assert sent == []
    member.deliver(Event("PRIVATE", "bob", "", "psst", target="ada"))
    assert [(m["op"], m["to"], m["target"], m["event"]["text"]) for m in sent] == [
        ("direct", "elsewhere", "ada", "psst")]


def _linkedWorlds():
    """
    Two chat servers on clocks whose buses hand each other their messages
    (as JSON, as Redis would), with no socket: C{(worldA, worldB)}.
    """
    import json

    from twisted.internet.defer import succeed

    from chat.bus import RedisBus
    from tests.chat_support import World

    worlds, buses = [], []
    for _ in range(2):
        world = World()
        bus = RedisBus("redis://127.0.0.1:1/0", reactor=world.clock, heartbeat=1.0)
        bus.server, bus.up = world.server, True
        bus.claim = lambda fold: succeed(True)  # type: ignore[method-assign]
        bus.release = bus._renewClaims = lambda *a: None  # type: ignore[method-assign]
        world.server.bus = bus
        worlds.append(world)
        buses.append(bus)

    def publisher(bus, other):
        def publish(message):
            message["node"] = bus.node
            other._received(json.dumps(message))
        return publish

    buses[0].publish = publisher(buses[0], buses[1])  # type: ignore[method-assign]
    buses[1].publish = publisher(buses[1], buses[0])  # type: ignore[method-assign]
    return worlds


def test_linked_nodes_share_room_events_and_expire_a_silent_node():
    """Events of one node's members reach the other's (JOIN, MESSAGE, TOPIC, PART); a node silent for three
    heartbeats has its members quit the other's rooms."""
    a, b = _linkedWorlds()
    ada = a.user("ada", "lab")
    bob = b.user("bob", "lab")
    assert any("JOIN lab bob" in line for line in ada.lines())
    bob.send("WHO lab")
    assert bob.lines() == ["211-@ada", "211-bob", "211 2 in lab"]
    ada.send("SAY lab hello across")
    assert bob.lines() == ["MESSAGE lab ada hello across"]
    bob.send("TOPIC lab shared topic")
    assert any("shared topic" in line for line in ada.lines())
    assert a.server.room("lab").topic.text == "shared topic"
    bob.send("NICK ada")
    assert any(line.startswith("433") for line in bob.lines())
    # Node A goes silent: after three heartbeats node B drops its members.
    b.server.bus._tick()
    b.clock.advance(3.5)
    b.server.bus._tick()
    assert any("QUIT ada" in line for line in bob.lines())
    assert [m.nick for m in b.server.room("lab").members.values()] == ["bob"]


def test_bus_option_checked_and_refused_by_the_twins():
    """twistd chat refuses a --bus that is not redis://...; the single-process twins refuse --bus at all."""
    from twisted.python import usage

    from chat import tap, threaded

    options = tap.Options()
    options.parseOptions(["--redis", "redis://127.0.0.1:6390/2", "--history-db", ":memory:"])
    assert options["bus"] == "redis://127.0.0.1:6390/2"
    with pytest.raises(usage.UsageError, match="--bus"):
        tap.Options().parseOptions(["--bus", "http://127.0.0.1/", "--history-db", ":memory:"])
    with pytest.raises(usage.UsageError, match="no --bus"):
        threaded.Options().parseOptions(["--listen", "127.0.0.1:0", "--bus", "redis://127.0.0.1:1/0"])
