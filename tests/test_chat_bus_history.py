"""
Room history in Redis Streams (chat.bus): a real redis-server on a free
loopback port and C{twistd chat --bus} nodes with course clients.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest_twisted
from twisted.internet import defer
from twisted.protocols import portforward

from chat.bus import streamID
from chat.client import ChatReplyError, connect
from tests.test_chat_bus import _nick, _Redis, _sleep
from tests.test_chat_integration import _Twistd, wait


def _node(tmp_path, name: str, url: str, *extra: str) -> _Twistd:
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    return _Twistd(home, "--listen", "tcp:0:interface=127.0.0.1", "--irc", "tcp:0:interface=127.0.0.1",
                   "--bus", url, "--bus-heartbeat", "0.5", *extra)


def _redisCLI(redis: _Redis, *args: str) -> str:
    exe = shutil.which("redis-cli")
    assert exe is not None, "redis-cli comes with redis-server (make sysdeps)"
    return subprocess.run([exe, "-p", str(redis.port), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


async def _close(clients: list, *nodes: _Twistd) -> None:
    for client in clients:
        if client.transport.connected:
            client.transport.abortConnection()
            await client.closed
    for node in nodes:
        node.stop()


class _Link:
    """
    A TCP proxy from a node to Redis that the test cuts and restores: that
    node alone loses Redis (pub/sub and commands) while the others keep it.
    """

    def __init__(self, reactor, redisPort: int) -> None:
        self.reactor = reactor
        self.open: set = set()
        opened = self.open

        class Tracked(portforward.ProxyServer):
            def connectionMade(self):
                opened.add(self)
                super().connectionMade()

            def connectionLost(self, reason):
                opened.discard(self)
                super().connectionLost(reason)

        self.factory = portforward.ProxyFactory("127.0.0.1", redisPort)
        self.factory.protocol = Tracked
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def cut(self) -> None:
        await defer.maybeDeferred(self.listening.stopListening)
        for proxy in list(self.open):
            proxy.transport.abortConnection()

    def restore(self) -> None:
        self.listening = self.reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")

    async def close(self) -> None:
        await self.cut()


def test_stream_ids_compare_as_numbers():
    """Stream IDs order by milliseconds then sequence, numerically (not as text)."""
    assert streamID("9-5") < streamID("10-0") < streamID(b"10-1")
    assert streamID("1700000000000-12") == (1700000000000, 12)


@pytest_twisted.ensureDeferred
async def test_late_node_replays_the_bounded_stream(reactor, tmp_path):
    """A node started after the messages were said replays them from the room's stream, the same last
    --history messages as the node they were said on; the stream keeps only --history entries."""
    redis = _Redis(tmp_path)
    await redis.ready(reactor)
    nodeA = _node(tmp_path, "a", redis.url, "--history", "5")
    nodeB = None
    clients: list = []
    try:
        chatA, _ = await nodeA.ports(reactor)
        ada = await connect(reactor, "127.0.0.1", chatA)
        clients.append(ada)
        await _nick(reactor, ada, "ada")
        await ada.join("lab")
        for i in range(8):
            await ada.say("lab", f"said {i}")
        assert _redisCLI(redis, "XLEN", "coursenet.chat.0.history.lab") == "5"

        nodeB = _node(tmp_path, "b", redis.url, "--history", "5")
        chatB, _ = await nodeB.ports(reactor)
        bob = await connect(reactor, "127.0.0.1", chatB)
        clients.append(bob)
        await _nick(reactor, bob, "bob")
        replayed = await bob.join("lab")
        assert [(e.nick, e.text) for e in replayed] == [("ada", f"said {i}") for i in range(3, 8)]

        eve = await connect(reactor, "127.0.0.1", chatA)
        clients.append(eve)
        await _nick(reactor, eve, "eve")
        assert [e.text for e in await eve.join("lab")] == [e.text for e in replayed]
        heard = ada.nextEvent("MESSAGE", room="lab")
        await bob.say("lab", "from B")
        assert (await heard).text == "from B"
        assert _redisCLI(redis, "XLEN", "coursenet.chat.0.history.lab") == "5"
    finally:
        await _close(clients, nodeA)
        if nodeB is not None:
            nodeB.stop()
        redis.stop()


@pytest_twisted.ensureDeferred
async def test_cut_off_node_catches_up_once_in_order(reactor, tmp_path):
    """Messages added to the stream while node B had lost Redis reach B's member once B is back: each
    exactly once, in the order said, with what came before and after."""
    redis = _Redis(tmp_path)
    await redis.ready(reactor)
    link = _Link(reactor, redis.port)
    nodeA = _node(tmp_path, "a", redis.url)
    nodeB = _node(tmp_path, "b", link.url)
    clients: list = []
    try:
        chatA, _ = await nodeA.ports(reactor)
        chatB, _ = await nodeB.ports(reactor)
        ada = await connect(reactor, "127.0.0.1", chatA)
        bee = await connect(reactor, "127.0.0.1", chatB)
        clients += [ada, bee]
        await _nick(reactor, ada, "ada")
        await _nick(reactor, bee, "bee")
        await ada.join("lab")
        joined = ada.nextEvent("JOIN", nick="bee")
        await bee.join("lab")
        await joined
        heard: list[str] = []
        bee.addListener(lambda e: heard.append(e.text) if e.kind == "MESSAGE" and e.room == "lab" else None)
        await ada.say("lab", "before")
        await wait(lambda: "before" in heard, reactor)

        await link.cut()
        for _ in range(100):
            try:
                await bee.say("lab", "from the cut-off node")
            except ChatReplyError as e:
                assert "Redis" in str(e)
                break
            await _sleep(reactor, 0.05)
        else:
            raise AssertionError("node B never noticed it lost Redis")
        missed = [f"missed {i}" for i in range(10)]
        for text in missed:
            await ada.say("lab", text)
        assert missed[0] not in heard
        link.restore()

        await wait(lambda: missed[-1] in heard, reactor, timeout=30)
        after = ada.nextEvent("MESSAGE", room="lab", nick="bee")
        for _ in range(100):
            try:
                await bee.say("lab", "back")
                break
            except ChatReplyError:
                await _sleep(reactor, 0.1)
        await after
        await ada.say("lab", "after")
        await wait(lambda: "after" in heard, reactor)
        assert heard == ["before", *missed, "after"]
    finally:
        await _close(clients, nodeA)
        nodeB.stop()
        await link.close()
        redis.stop()


def test_catch_up_and_pub_sub_overlap_delivered_once_in_stream_order():
    """What pub/sub brings during a catch-up waits for it; an ID already delivered (from the stream or
    pub/sub) is dropped, so each message reaches the members once, in stream order."""
    from chat.bus import RedisBus, eventToDict
    from chat.rooms import Event
    from twisted.internet.defer import succeed
    from tests.chat_support import World

    world = World()
    bus = RedisBus("redis://127.0.0.1:1/0", reactor=world.clock)
    bus.server, bus.up = world.server, True
    bus.publish = lambda message: None  # type: ignore[method-assign]
    bus.claim = lambda fold: succeed(True)  # type: ignore[method-assign]
    bus.release = bus._renewClaims = lambda *a: None  # type: ignore[method-assign]
    world.server.bus = bus
    bob = world.user("bob", "lab")
    bob.lines()

    def entry(n: int) -> dict:
        return {"id": f"{n}-0", "event": eventToDict(Event("MESSAGE", "ada", "lab", f"m{n}", 1.0))}

    def stream(*ns: int) -> list:
        return [[f"{n}-0", ["node", "other", "event", json.dumps(entry(n)["event"])]] for n in ns]

    bus._catching["lab"] = []
    bus._message("other", entry(3))  # said after the subscription, before the stream was read
    bus._caughtUp(stream(1, 2, 3), "lab")
    bus._message("other", entry(2))
    bus._message("other", entry(3))
    bus._message("other", entry(4))
    assert bob.lines() == [f"MESSAGE lab ada m{n}" for n in (1, 2, 3, 4)]
    assert bus.seen["lab"] == (4, 0)
