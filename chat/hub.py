"""
The chat server for the forking twin: rooms in the parent, connections in
forked children.

Forked processes share no memory, yet every connection must see the same
rooms.  So the parent keeps the one L{ChatServer} (L{ChatHub}) and each
child's L{ChatProtocol} talks to it through L{RemoteChatServer}, which has
the methods of L{ChatServer} that the protocol calls and forwards them
over a socket pair (L{HubForkingServer}); the events for a child's
participant come back the same way.  Every rule stays in L{ChatServer}
and L{ChatProtocol}; this module only carries calls.
"""

from __future__ import annotations

import pickle
import select
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.interfaces import IChatServer, IParticipant
from chat.moderation import Change, RoomSettings
from chat.rooms import ChatServer, Event, Room, Topic
from chat.wire import MAX_TEXT, ChatError, Code, foldNick
from coursenet.blocking import BlockingReactor, ForkingServer, serveConnection


@dataclass
class Member:
    nick: str
    user: str | None = None
    host: str | None = None
    realname: str | None = None
    account: str | None = None
    away: str | None = None


@dataclass
class RoomView:
    """
    What a child needs of a L{Room}: a copy, taken in the parent.
    """

    name: str
    members: dict[str, Member] = field(default_factory=dict)
    topic: Topic | None = None
    history: list[Event] = field(default_factory=list)
    settings: RoomSettings = field(default_factory=RoomSettings)
    #: Each member's prefixes (C{@}, C{+}), by folded nickname.
    prefixes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, room: Room, server: ChatServer, history: bool = False) -> "RoomView":
        return cls(
            room.name,
            {fold: Member(m.nick) for fold, m in room.members.items()},
            room.topic,
            [_copy(e) for e in room.history] if history else [],
            RoomSettings.fromDict(room.settings.toDict()),
            {fold: server.prefixes(room, m) for fold, m in room.members.items()},
        )


def _copy(event: Event) -> Event:
    """
    C{event} without its cache of encodings: what goes to a child.
    """
    return Event(event.kind, event.nick, event.room, event.text, event.when, event.target,
                 event.source, event.notice, event.account, dict(event.tags), event.msgid, event.tagOnly)


@implementer(IParticipant)
class RemoteParticipant:
    """
    A child's connection, as the parent's L{ChatServer} sees it.
    """

    #: The client's address is known in the child only.
    peer = None
    user = None
    host = None
    realname = None
    account: str | None = None
    away: str | None = None

    def __init__(self, link: Link) -> None:
        self.link = link
        self.nick: str | None = None
        self.connected = True

    @property
    def online(self) -> bool:
        return self.connected

    def deliver(self, event: Event) -> None:
        self.link.push(("event", _copy(event)))


class ChatHub:
    """
    The parent's side: runs each child's calls on the one L{ChatServer}.
    """

    _log = Logger()

    def __init__(self, server: ChatServer, reactor: BlockingReactor) -> None:
        self.server = server
        self.reactor = reactor

    def handle(self, link: Link, message: tuple):
        who = link.state.setdefault("who", RemoteParticipant(link))
        method, *args = message
        try:
            return ("ok", getattr(self, "_" + method)(who, *args))
        except ChatError as e:
            return ("error", int(e.code), e.message, e.params)
        except Exception:
            self._log.failure("{method} failed", method=method)
            return ("error", int(Code.LIMIT), "internal server error; the command was not completed")

    def linkLost(self, link: Link) -> None:
        who = link.state.get("who")
        if who is not None and who.connected:
            self._quit(who, "connection lost")

    def _register(self, who, nick, password):
        account = self.reactor.wait(self.server.register(who, nick, password))
        return account, who.nick

    def _join(self, who, name, key):
        return RoomView.of(self.reactor.wait(self.server.join(who, name, key)), self.server, history=True)

    def _part(self, who, name, reason):
        return RoomView.of(self.server.part(who, name, reason), self.server)

    def _say(self, who, name, text, notice, limit, tags, tagOnly):
        return _copy(self.server.say(who, name, text, notice, limit, tags, tagOnly))

    def _tell(self, who, nick, text, notice, limit, tags, tagOnly):
        return _copy(self.server.tell(who, nick, text, notice, limit, tags, tagOnly))

    def _setTopic(self, who, name, text):
        return _copy(self.server.setTopic(who, name, text))

    def _mode(self, who, name, changes):
        event, errors = self.server.mode(who, name, changes)
        return (_copy(event) if event is not None else None), [(int(e.code), e.message, e.params) for e in errors]

    def _kick(self, who, name, nick, reason):
        return _copy(self.server.kick(who, name, nick, reason))

    def _invite(self, who, nick, name):
        return _copy(self.server.invite(who, nick, name))

    def _setAway(self, who, text):
        return _copy(self.server.setAway(who, text))

    def _room(self, who, name):
        return RoomView.of(self.server.room(name), self.server)

    def _listRooms(self, who):
        return [RoomView.of(r, self.server) for r in self.server.listRooms()]

    def _roomsOf(self, who, nick):
        try:
            member = self.server.find(nick)
        except ChatError:
            return []
        return [RoomView.of(r, self.server) for r in self.server.roomsOf(member)]

    def _find(self, who, nick):
        return Member(self.server.find(nick).nick)

    def _quit(self, who, reason):
        who.connected = False
        self.server.quit(who, reason)


@implementer(IChatServer)
class RemoteChatServer:
    """
    The child's side: a stand-in for L{ChatServer} with the methods
    L{chat.protocol.ChatProtocol} and L{chat.session.Session} call.
    """

    #: The parent's forking server caps the children; a child serves one.
    admission = None

    def __init__(self, sock, reactor: BlockingReactor) -> None:
        self._sock = sock
        self.reactor = reactor
        self._who = None

    def readEvents(self) -> None:
        """
        The link is readable: an event for this child's participant.
        """
        self._received(self.reactor.outside(recvMessage, self._sock))

    def _received(self, message):
        if message[0] == "event":
            if self._who is not None:
                self._who.deliver(message[1])
            return None
        return message

    def _call(self, *message):
        self.reactor.outside(sendMessage, self._sock, message)
        reply = None
        while reply is None:
            reply = self._received(self.reactor.outside(recvMessage, self._sock))
        if reply[0] == "error":
            raise ChatError(Code(reply[1]), reply[2], tuple(reply[3]) if len(reply) > 3 else ())
        return reply[1]

    def _deferred(self, method, *args) -> Deferred:
        try:
            return succeed(self._call(method, *args))
        except Exception:
            return fail(Failure())

    def register(self, who, nick: str, password: str | None = None) -> Deferred:
        self._who = who
        d = self._deferred("register", nick, password)

        def registered(result):
            account, who.nick = result
            return account

        return d.addCallback(registered)

    def join(self, who, name: str, key: str | None = None) -> Deferred:
        return self._deferred("join", name, key)

    def part(self, who, name: str, reason: str = "") -> RoomView:
        return self._call("part", name, reason)

    def say(self, who, name: str, text: str, notice: bool = False, limit: int | None = MAX_TEXT,
            tags: dict | None = None, tagOnly: bool = False) -> Event:
        return self._call("say", name, text, notice, limit, tags, tagOnly)

    def tell(self, who, nick: str, text: str, notice: bool = False, limit: int | None = MAX_TEXT,
             tags: dict | None = None, tagOnly: bool = False) -> Event:
        return self._call("tell", nick, text, notice, limit, tags, tagOnly)

    def mode(self, who, name: str, changes: list[Change]) -> tuple[Event | None, list[ChatError]]:
        event, errors = self._call("mode", name, changes)
        return event, [ChatError(Code(code), message, tuple(params)) for code, message, params in errors]

    def kick(self, who, name: str, nick: str, reason: str = "") -> Event:
        return self._call("kick", name, nick, reason)

    def invite(self, who, nick: str, name: str) -> Event:
        return self._call("invite", nick, name)

    def setAway(self, who, text: str | None) -> Event:
        who.away = text
        return self._call("setAway", text)

    def prefixes(self, room: RoomView, who) -> str:
        return room.prefixes.get(foldNick(who.nick), "")

    def setTopic(self, who, name: str, text: str) -> Event:
        return self._call("setTopic", name, text)

    def room(self, name: str) -> RoomView:
        return self._call("room", name)

    def listRooms(self) -> list[RoomView]:
        return self._call("listRooms")

    def roomsOf(self, who) -> list[RoomView]:
        if who.nick is None:
            return []
        return self._call("roomsOf", who.nick)

    def find(self, nick: str) -> Member:
        return self._call("find", nick)

    def quit(self, who, reason: str = "") -> None:
        try:
            self._call("quit", reason)
        except (EOFError, OSError):
            pass


# -- the links between the parent and its children ---------------------------------


def sendMessage(sock: socket.socket, message) -> None:
    """
    Send a picklable C{message} to the other end of a hub link.
    """
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recvExactly(sock: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        try:
            part = sock.recv(left)
        except BlockingIOError:
            select.poll().poll(10)
            continue
        if not part:
            raise EOFError("hub link closed")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def recvMessage(sock: socket.socket):
    """
    The next message from the other end of a hub link.

    @raise EOFError: if the link is closed.
    """
    (n,) = struct.unpack("!I", _recvExactly(sock, 4))
    return pickle.loads(_recvExactly(sock, n))


class Link:
    """
    The parent's end of the link to one forked child.

    Messages pushed while the reactor lock is held (an event for that
    child, say) wait in the pushing thread's outbox and go once the lock
    is released (L{HubForkingServer}).
    """

    _outbox = threading.local()

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._sending = threading.Lock()
        self.state: dict = {}

    def push(self, message) -> None:
        box = getattr(self._outbox, "messages", None)
        if box is None:
            self.send(message)
        else:
            box.append((self, message))

    def send(self, message) -> None:
        with self._sending:
            try:
                sendMessage(self.sock, message)
            except OSError:
                pass  # the child is gone; its thread will notice

    @classmethod
    def collecting(cls):
        """
        Start collecting the calling thread's pushes.
        """
        cls._outbox.messages = []

    @classmethod
    def flush(cls) -> None:
        """
        Send the calling thread's collected pushes; call without the lock.
        """
        box, cls._outbox.messages = cls._outbox.messages, []
        for link, message in box:
            link.send(message)


class HubForkingServer(ForkingServer):
    """
    A forking server whose children share state through the parent.

    Each child gets one end of a socket pair; in the parent one thread
    waits on all the other ends (an event loop: a thread per child would
    make every later fork copy every thread's state) and answers each
    request with C{hub.handle(link, message)}, run with the reactor lock.
    Forked processes share no memory: this link is how the state of the
    whole server (who is in which room) stays in one place.

    @param hub: has C{handle(link, message)}, returning the reply, and
        C{linkLost(link)}.
    @param childFactory: called in the child with its end of the link;
        returns C{(factory, prepare)} for L{serveConnection}.
    """

    def __init__(
        self, address, hub, childFactory, reactor: BlockingReactor, maxChildren: int | None = None
    ) -> None:
        self.hub = hub
        self._childFactory = childFactory
        self._links: set[Link] = set()
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._prepare = None
        #: The parent's; a child drops it (L{afterForkInChild}).
        self._selector: selectors.BaseSelector | None = selectors.DefaultSelector()
        super().__init__(address, None, reactor, maxChildren)
        threading.Thread(target=self._serveLinks, daemon=True).start()

    def beforeFork(self, request) -> None:
        self._pair = socket.socketpair()

    def afterForkInParent(self, request) -> None:
        assert self._pair is not None and self._selector is not None
        parentEnd, childEnd = self._pair
        childEnd.close()
        link = Link(parentEnd)
        self._links.add(link)
        self._selector.register(parentEnd, selectors.EVENT_READ, link)

    def afterForkInChild(self, request) -> None:
        assert self._pair is not None
        parentEnd, childEnd = self._pair
        parentEnd.close()
        for link in list(self._links):
            link.sock.close()
        self._links.clear()
        self._selector = None
        self.factory, self._prepare = self._childFactory(childEnd)

    def serveRequest(self, sock: socket.socket) -> None:
        serveConnection(sock, self.factory, self.reactor, self._prepare)

    def _serveLinks(self) -> None:
        Link.collecting()
        while True:
            # This thread runs in the parent only, where the selector stays.
            selector = self._selector
            assert selector is not None
            for key, _ in selector.select(timeout=0.5):
                link = key.data
                try:
                    message = recvMessage(link.sock)
                except (EOFError, OSError):
                    selector.unregister(link.sock)
                    self.reactor.inside(self.hub.linkLost, link)
                    Link.flush()
                    self._links.discard(link)
                    link.sock.close()
                    continue
                reply = self.reactor.inside(self.hub.handle, link, message)
                Link.flush()
                link.send(reply)
