"""
Rooms shared across chat server processes (nodes) through Redis pub/sub.

Every node keeps its own L{ChatServer}; what one node's members do in a room
(JOIN, PART, QUIT, NICK, MESSAGE, TOPIC, MODE, KICK, AWAY) is published on
one Redis channel, and every other node applies it to its copy of the room
and delivers it to its own members.  A member of another node is a
L{RemoteMember} in the room's C{members} and the server's C{users}: it
counts for NAMES, WHO and nickname clashes, and receives nothing itself
(its own node delivers), except a private message or invitation, which goes
back on the bus to the node that has the connection.

Presence: every node publishes its whole state (its members, their rooms)
when it (re)subscribes, when another node says hello, and every
C{heartbeat} seconds.  A node not heard from for three heartbeats (killed,
say) has its members quit the rooms of every other node.

While Redis is unreachable a node refuses what it would publish (room
messages, joins, topics...) with a reply saying so (L{Code.LIMIT}); it
resubscribes and republishes its state as soon as Redis is back.

History: every room message kept in history is appended to the room's
Redis stream (C{CHANNEL.history.ROOM}, trimmed to the last C{--history}
entries) and published, carrying its stream ID, in one script, so stream
order is publish order.  A node opening a room replays the stream's tail;
it remembers per room the last stream ID it delivered, and after it
resubscribes reads the stream from there, so what it missed reaches its
members once (an ID it has passed is dropped, from pub/sub or the stream).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import txredisapi
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from chat.interfaces import IParticipant
from chat.moderation import RoomSettings
from chat.wire import ChatError, Code, foldNick

if TYPE_CHECKING:
    from chat.rooms import ChatServer, Event

#: Events that go to one participant, not to a room.
DIRECT = ("PRIVATE", "INVITE")

#: Claim a nickname for a node, or keep it if the node has it already.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
#: Release a nickname, if the node holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: Append a room message to its stream, bounded, and publish it with its ID.
#: ARGV: the bound, the event (JSON), the node, the bus message (a JSON
#: object, into which the ID goes first).
_ADD = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'node', ARGV[3], 'event', ARGV[2])
redis.call('PUBLISH', KEYS[2], '{"id":"' .. id .. '",' .. string.sub(ARGV[4], 2))
return id
"""


def streamID(value) -> tuple[int, int]:
    """
    A Redis stream entry ID (C{"1700000000000-3"}) as a comparable pair.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii")
    ms, _, seq = str(value).partition("-")
    return int(ms), int(seq or 0)


def kept(event: "Event") -> bool:
    """
    Whether C{event} goes into room history (and so into the stream).
    """
    return event.kind == "MESSAGE" and not event.notice and not event.tagOnly


@dataclass(frozen=True)
class BusAddress:
    host: str
    port: int
    db: int


def parseBusURL(url: str) -> BusAddress:
    """
    C{redis://HOST[:PORT][/DB]} as a L{BusAddress}.

    @raise ValueError: saying what is wrong with C{url}.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"{url}: the bus is a redis://HOST:PORT/DB URL")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"{url}: the database is a number, as in redis://127.0.0.1:6379/0")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{url}: the port is a number from 1 to 65535")
    return BusAddress(parts.hostname or "127.0.0.1", port, int(db))


@implementer(IParticipant)
class RemoteMember:
    """
    A member connected to another node, as this node's rooms see it.
    """

    __slots__ = ("nick", "user", "host", "realname", "account", "away", "node", "bus", "online", "peer")
    remote = True

    def __init__(self, bus: "RedisBus", node: str, info: dict) -> None:
        self.bus = bus
        self.node = node
        self.nick: str = info["nick"]
        self.user = info.get("user")
        self.host = info.get("host")
        self.realname = info.get("realname")
        self.account = info.get("account") or None
        self.away = info.get("away")
        self.online = True
        self.peer = None

    def deliver(self, event: "Event") -> None:
        # Room events reach this member through its own node; only what is
        # addressed to it alone travels back.
        if event.kind in DIRECT:
            self.bus.publish({"op": "direct", "to": self.node, "target": self.nick, "event": eventToDict(event)})


def eventToDict(event: "Event") -> dict:
    return {
        "kind": event.kind, "nick": event.nick, "room": event.room, "text": event.text, "when": event.when,
        "target": event.target, "source": event.source, "notice": event.notice, "account": event.account,
        "tags": event.tags, "msgid": event.msgid, "tagOnly": event.tagOnly,
    }


def eventFromDict(data: dict) -> "Event":
    from chat.rooms import Event

    return Event(**data)


class _Subscriber(txredisapi.SubscriberProtocol):
    def connectionMade(self):
        d = super().connectionMade()
        self.whenConnected().addCallback(lambda _: self.factory.bus._connected(self))
        return d

    def messageReceived(self, pattern, channel, message):
        self.factory.bus._received(message)

    # txredisapi's parser, after each bulk reply, pauses and hands the rest
    # of the read to the next reactor turn (callLater(0)): one pub/sub
    # message a turn, so each remote room event was a turn of its own and
    # cost every local member a write.  The rest is parsed here at once, in
    # a loop (not recursively): a read's messages share a turn, and a
    # room's events in it one write per member.
    _rest = b""

    def setLineMode(self, extra=b""):
        self.line_mode = 1
        self._rest += extra

    def dataReceived(self, data, unpause=False):
        super().dataReceived(data, unpause)
        while self._rest and not self.paused and self.transport is not None and not self.transport.disconnecting:
            rest, self._rest = self._rest, b""
            super().dataReceived(rest)

    def connectionLost(self, reason):
        self.factory.bus._lost(self)
        return super().connectionLost(reason)


class RedisBus:
    """
    This node's link to the others: one Redis connection subscribed to the
    channel, one to publish on.

    @param heartbeat: seconds between this node's state announcements; a
        node silent for three of them is gone.
    """

    _log = Logger()

    def __init__(self, url: str, reactor=None, heartbeat: float = 5.0) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.address = parseBusURL(url)
        self.channel = f"coursenet.chat.{self.address.db}"
        self.node = secrets.token_hex(6)
        self.heartbeat = heartbeat
        self.server: ChatServer | None = None
        self.up = False
        #: Other nodes: when each was last heard from.
        self.heard: dict[str, float] = {}
        self._sub: _Subscriber | None = None
        self._pub = None
        self._subFactory = None
        self._beat = None
        #: Per open room: the stream ID of the last message delivered here.
        self.seen: dict[str, tuple[int, int]] = {}
        #: Rooms being caught up from their stream: the messages that came
        #: over pub/sub meanwhile, held until the catch-up is delivered.
        self._catching: dict[str, list[tuple[str, dict]]] = {}

    # -- life ------------------------------------------------------------------

    def start(self, server: "ChatServer") -> None:
        self.server = server
        a = self.address
        self._pub = txredisapi.lazyConnection(a.host, a.port, a.db, reconnect=True, connectTimeout=5)
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = _Subscriber
        factory.bus = self
        factory.startConnecting(TCP4ClientEndpoint(self.reactor, a.host, a.port, timeout=5))
        self._subFactory = factory
        self._beat = self.reactor.callLater(self.heartbeat, self._tick)

    def stop(self):
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        if self.up:
            self.publish({"op": "bye"})
        if self._subFactory is not None:
            self._subFactory.stopTrying()
            self._subFactory.disconnect()
        if self._pub is not None:
            return self._pub.disconnect()
        return None

    def _connected(self, protocol: _Subscriber) -> None:
        self._sub = protocol
        d = protocol.subscribe(self.channel)

        def subscribed(_):
            self.up = True
            # Nobody was heard while this node was cut off: count from now.
            now = self.reactor.seconds()
            for node in self.heard:
                self.heard[node] = now
            self._log.info("chat bus: node {node} subscribed to {channel}", node=self.node, channel=self.channel)
            self.publish({"op": "hello"})
            self._announce()
            self._catchUp()

        d.addCallback(subscribed)
        d.addErrback(lambda f: self._log.failure("chat bus: subscribing", f))

    def _lost(self, protocol: _Subscriber) -> None:
        if protocol is self._sub:
            self._sub = None
            self.up = False
            self._catching.clear()
            self._log.warn("chat bus: lost Redis; refusing room traffic until it is back")

    def _tick(self) -> None:
        self._beat = self.reactor.callLater(self.heartbeat, self._tick)
        if not self.up:
            return
        self._announce()
        now = self.reactor.seconds()
        for node, when in list(self.heard.items()):
            if now - when > 3 * self.heartbeat:
                self._log.info("chat bus: node {node} silent; its members quit", node=node)
                self._dropNode(node, "node went away")

    # -- nicknames ---------------------------------------------------------------

    def _nickKey(self, fold: str) -> str:
        return f"{self.channel}.nick.{fold}"

    @property
    def claimMillis(self) -> int:
        """
        How long a claim lasts unrenewed: three heartbeats.
        """
        return max(1, int(3 * self.heartbeat * 1000))

    def claim(self, fold: str):
        """
        Claim folded nickname C{fold} for this node, in Redis, for
        L{claimMillis}; renewed with every heartbeat while it is used.

        @return: a L{Deferred} firing with whether this node has it.
        """
        self.check()
        assert self._pub is not None
        d = self._pub.eval(_CLAIM, [self._nickKey(fold)], [self.node, str(self.claimMillis)])
        return d.addCallback(lambda held: bool(held))

    def release(self, fold: str) -> None:
        if self._pub is None or not self.up:
            return  # the claim expires by itself
        d = self._pub.eval(_RELEASE, [self._nickKey(fold)], [self.node])
        d.addErrback(lambda f: self._log.failure("chat bus: releasing a nickname", f))

    def _renewClaims(self, folds: list[str]) -> None:
        assert self._pub is not None
        for fold in folds:
            d = self._pub.eval(_CLAIM, [self._nickKey(fold)], [self.node, str(self.claimMillis)])
            d.addErrback(lambda f: self._log.failure("chat bus: renewing a nickname", f))

    # -- out -------------------------------------------------------------------

    def check(self) -> None:
        """
        @raise ChatError: if Redis is unreachable, so nothing can be shared.
        """
        if not self.up:
            raise ChatError(Code.LIMIT, "the chat bus (Redis) is unreachable; not sent, try again shortly")

    def publish(self, message: dict) -> None:
        message["node"] = self.node
        if self._pub is None:
            return
        d = self._pub.publish(self.channel, json.dumps(message, separators=(",", ":")))
        d.addErrback(lambda f: self._log.failure("chat bus: publishing", f))

    def event(self, event: "Event", **extra) -> None:
        """
        Publish C{event}, which one of this node's members caused; a message
        kept in history is first appended to its room's stream.
        """
        message = {"op": "event", "event": eventToDict(event), **extra}
        if self._pub is None or self.server is None or not kept(event):
            self.publish(message)
            return
        message["node"] = self.node
        room = event.room
        d = self._pub.eval(_ADD, [self.streamKey(room), self.channel], [
            str(self.bound), json.dumps(message["event"], separators=(",", ":")), self.node,
            json.dumps(message, separators=(",", ":")),
        ])
        d.addCallback(lambda entry: self._fresh(room, streamID(entry)))
        d.addErrback(lambda f: self._log.failure("chat bus: adding to the history of {room}", f, room=room))

    # -- history -----------------------------------------------------------------

    def streamKey(self, room: str) -> str:
        return f"{self.channel}.history.{room}"

    @property
    def bound(self) -> int:
        """
        How many entries a room's stream keeps: the history replayed (C{--history}), at least 1.
        """
        assert self.server is not None
        return max(1, self.server.historySize)

    def history(self, loaded: tuple, room: str):
        """
        Replace the messages of C{loaded} (what the store loaded for
        C{room}) with the last of the room's stream, and remember the
        newest ID as delivered.

        @return: a L{Deferred} firing with the new C{loaded}.
        """
        if self._pub is None or self.server is None:
            return loaded  # not started (tests linking two servers directly)
        count = self.server.historySize
        d = self._pub.execute_command("XREVRANGE", self.streamKey(room), "+", "-", "COUNT", str(self.bound))

        def got(entries):
            entries = list(reversed(entries or []))
            if entries:
                self._fresh(room, streamID(entries[-1][0]))
            else:
                self.seen.setdefault(room, (0, 0))
            messages = [eventFromDict(json.loads(_fields(e)["event"])) for e in entries]
            topic, _, *rest = loaded
            return (topic, messages[len(messages) - count:] if count else [], *rest)

        return d.addCallback(got)

    def _fresh(self, room: str, entry: tuple[int, int]) -> bool:
        """
        Whether C{entry} of C{room}'s stream is past the last delivered
        here; if so it is the last delivered now.
        """
        if entry <= self.seen.get(room, (0, 0)):
            return False
        server = self.server
        if server is not None and room in server.rooms:
            if room not in self.seen and len(self.seen) >= 2 * server.maxRooms:
                for gone in [r for r in self.seen if r not in server.rooms]:
                    del self.seen[gone]  # rooms closed since: bounded memory
            self.seen[room] = entry
        return True

    def _catchUp(self) -> None:
        """
        Read each open room's stream from the last ID delivered here, and
        deliver what this node missed while it was not subscribed.
        """
        assert self._pub is not None and self.server is not None
        for room in [r for r in self.seen if r not in self.server.rooms]:
            del self.seen[room]
        for room, last in self.seen.items():
            self._catching[room] = []
            d = self._pub.execute_command("XRANGE", self.streamKey(room), f"({last[0]}-{last[1]}", "+")
            d.addCallback(self._caughtUp, room)
            d.addErrback(lambda f, room=room: self._caughtUp([], room, f))

    def _caughtUp(self, entries, room: str, failure=None) -> None:
        if failure is not None:
            self._log.failure("chat bus: catching up room {room}", failure, room=room)
        held = self._catching.pop(room, None)
        if held is None:
            return  # lost Redis meanwhile: caught up after the next subscription
        missed = 0
        for entry, data in entries or []:
            fields = _fields([entry, data])
            if self._fresh(room, streamID(entry)) and fields.get("node") != self.node:
                missed += 1
                self._apply(fields.get("node", ""), {"event": json.loads(fields["event"])})
        if missed:
            self._log.info("chat bus: {count} missed messages of {room} delivered", count=missed, room=room)
        for node, message in held:
            self._message(node, message)

    def _message(self, node: str, message: dict) -> None:
        """
        A room message (with its stream ID) from another node: applied once.
        """
        room = message["event"]["room"]
        if room in self._catching:
            self._catching[room].append((node, message))
        elif self._fresh(room, streamID(message["id"])):
            self._apply(node, message)

    def _announce(self) -> None:
        assert self.server is not None
        users = []
        for who, rooms in self.server._joined.items():
            if getattr(who, "remote", False) or who.nick is None:
                continue
            users.append({**memberInfo(who), "rooms": sorted(rooms)})
        self.publish({"op": "state", "users": users})
        self._renewClaims([foldNick(u["nick"]) for u in users])

    # -- in --------------------------------------------------------------------

    def _received(self, raw) -> None:
        try:
            message = json.loads(raw)
            node = message["node"]
        except (ValueError, KeyError, TypeError):
            self._log.warn("chat bus: ignored a malformed message")
            return
        if node == self.node:
            return
        op = message.get("op")
        if op == "bye":
            self._dropNode(node, "node stopped")
            return
        self.heard[node] = self.reactor.seconds()
        try:
            if op == "hello":
                self._announce()
            elif op == "state":
                self._reconcile(node, message["users"])
            elif op == "event" and "id" in message:
                self._message(node, message)
            elif op == "event":
                self._apply(node, message)
            elif op == "direct" and message.get("to") == self.node:
                self._direct(message)
        except Exception:
            self._log.failure("chat bus: applying {op} from {node}", op=op, node=node)

    def _stub(self, node: str, info: dict) -> RemoteMember | None:
        """
        The remote member called C{info["nick"]}, made if new; L{None} if a
        member of this node holds the nickname.
        """
        assert self.server is not None
        fold = foldNick(info["nick"])
        holder = self.server.users.get(fold)
        if holder is None:
            holder = RemoteMember(self, node, info)
            self.server.users[fold] = holder
            self.server._joined[holder] = {}
        elif not isinstance(holder, RemoteMember):
            self._log.warn("chat bus: {nick} is on this node and node {node}", nick=info["nick"], node=node)
            return None
        else:
            # The nickname's claim is the node's now (a restarted node, say).
            holder.node = node
        return holder

    def _reconcile(self, node: str, users: list[dict]) -> None:
        assert self.server is not None
        server = self.server
        listed = set()
        for info in users:
            stub = self._stub(node, info)
            if stub is None:
                continue
            listed.add(stub)
            stub.away = info.get("away")
            joined = server._joined[stub]
            for name in info.get("rooms", ()):
                if name not in joined:
                    server._remoteJoin(stub, name, None)
            for name in [n for n in joined if n not in info.get("rooms", ())]:
                server._remotePart(stub, name, "")
        for who in [w for w in list(server._joined) if isinstance(w, RemoteMember) and w.node == node]:
            if who not in listed:
                server._remoteQuit(who, "")

    def _dropNode(self, node: str, reason: str) -> None:
        assert self.server is not None
        self.heard.pop(node, None)
        for who in [w for w in list(self.server._joined) if isinstance(w, RemoteMember) and w.node == node]:
            self.server._remoteQuit(who, reason)

    def _apply(self, node: str, message: dict) -> None:
        assert self.server is not None
        server = self.server
        event = eventFromDict(message["event"])
        kind = event.kind
        if kind == "JOIN":
            stub = self._stub(node, message["member"])
            if stub is not None:
                server._remoteJoin(stub, event.room, event)
            return
        if kind in ("MESSAGE", "TOPIC", "MODE", "KICK"):
            server._remoteRoomEvent(event, message.get("settings"))
            return
        who = server.users.get(foldNick(event.nick))
        if not isinstance(who, RemoteMember):
            return  # a member's own events come from its node; anything else is stale
        if kind == "PART":
            server._remotePart(who, event.room, event.text, event)
        elif kind == "QUIT":
            server._remoteQuit(who, event.text, event)
        elif kind == "NICK":
            server._remoteNick(who, event)
        elif kind == "AWAY":
            who.away = event.text or None
            server._toNeighbours(who, event)

    def _direct(self, message: dict) -> None:
        assert self.server is not None
        who = self.server.users.get(foldNick(message["target"]))
        if who is None or isinstance(who, RemoteMember):
            return
        event = eventFromDict(message["event"])
        room = self.server.rooms.get(event.room) if event.kind == "INVITE" else None
        if room is not None and len(room.invited) < self.server.maxInvited:
            room.invited.add(foldNick(who.nick))
        who.deliver(event)


def _fields(entry) -> dict:
    """
    A stream entry's fields (C{[id, [field, value, ...]]}) as a dict of str.
    """
    flat = [v.decode() if isinstance(v, bytes) else v for v in entry[1]]
    return dict(zip(flat[::2], flat[1::2]))


def memberInfo(who) -> dict:
    return {
        "nick": who.nick, "user": getattr(who, "user", None), "host": getattr(who, "host", None),
        "realname": getattr(who, "realname", None), "account": getattr(who, "account", None),
        "away": getattr(who, "away", None),
    }


def roomState(room) -> dict:
    """
    What another node needs to copy a room's moderation: settings and roles.
    """
    return {"settings": room.settings.toDict(), "ops": sorted(room.ops), "voices": sorted(room.voices)}


def applyRoomState(room, state: dict) -> None:
    room.settings = RoomSettings.fromDict(state["settings"])
    room.ops = set(state["ops"])
    room.voices = set(state["voices"])
