"""
The chat server for the forking twin: rooms in the parent, connections in
forked children.

Forked processes share no memory, yet every connection must see the same
rooms.  So the parent keeps the one L{ChatServer} (L{ChatHub}) and each
child's L{ChatProtocol} talks to it through L{RemoteChatServer}, which has
the methods of L{ChatServer} that the protocol calls and forwards them
over a socket pair (L{coursenet.blocking.HubForkingServer}); the events
for a child's participant come back the same way.  Every rule stays in
L{ChatServer} and L{ChatProtocol}; this module only carries calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.interfaces import IParticipant
from chat.rooms import ChatServer, Event, Room, Topic
from chat.wire import ChatError, Code
from coursenet.blocking import BlockingReactor, Link, recvMessage, sendMessage


@dataclass
class Member:
    nick: str


@dataclass
class RoomView:
    """
    What a child needs of a L{Room}: a copy, taken in the parent.
    """

    name: str
    members: dict[str, Member] = field(default_factory=dict)
    topic: Topic | None = None
    history: list[Event] = field(default_factory=list)

    @classmethod
    def of(cls, room: Room, history: bool = False) -> "RoomView":
        return cls(
            room.name,
            {fold: Member(m.nick) for fold, m in room.members.items()},
            room.topic,
            list(room.history) if history else [],
        )


@implementer(IParticipant)
class RemoteParticipant:
    """
    A child's connection, as the parent's L{ChatServer} sees it.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self.nick: str | None = None
        self.connected = True

    def deliver(self, event: Event) -> None:
        self.link.push(("event", Event(event.kind, event.nick, event.room, event.text, event.when, event.target)))


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
            return ("error", int(e.code), e.message)
        except Exception:
            self._log.failure("{method} failed", method=method)
            return ("error", int(Code.LIMIT), "internal server error; the command was not completed")

    def linkLost(self, link: Link) -> None:
        who = link.state.get("who")
        if who is not None and who.connected:
            self._quit(who, "connection lost")
        if link.state.pop("admitted", False):
            self.server.release()

    def _admit(self, who):
        refusal = self.server.admit()
        who.link.state["admitted"] = refusal is None
        return refusal

    def _release(self, who):
        if who.link.state.pop("admitted", False):
            self.server.release()

    def _register(self, who, nick, password):
        account = self.reactor.wait(self.server.register(who, nick, password))
        return account, who.nick

    def _join(self, who, name):
        return RoomView.of(self.reactor.wait(self.server.join(who, name)), history=True)

    def _part(self, who, name, reason):
        return RoomView.of(self.server.part(who, name, reason))

    def _say(self, who, name, text):
        return self.server.say(who, name, text)

    def _tell(self, who, nick, text):
        return self.server.tell(who, nick, text)

    def _setTopic(self, who, name, text):
        return self.server.setTopic(who, name, text)

    def _room(self, who, name):
        return RoomView.of(self.server.room(name))

    def _listRooms(self, who):
        return [RoomView.of(r) for r in self.server.listRooms()]

    def _quit(self, who, reason):
        who.connected = False
        self.server.quit(who, reason)


class RemoteChatServer:
    """
    The child's side: a stand-in for L{ChatServer} with the methods
    L{chat.protocol.ChatProtocol} and L{chat.session.Session} call.
    """

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
            raise ChatError(Code(reply[1]), reply[2])
        return reply[1]

    def _deferred(self, method, *args) -> Deferred:
        try:
            return succeed(self._call(method, *args))
        except Exception:
            return fail(Failure())

    def admit(self) -> str | None:
        return self._call("admit")

    def release(self) -> None:
        self._call("release")

    def register(self, who, nick: str, password: str | None = None) -> Deferred:
        self._who = who
        d = self._deferred("register", nick, password)

        def registered(result):
            account, who.nick = result
            return account

        return d.addCallback(registered)

    def join(self, who, name: str) -> Deferred:
        return self._deferred("join", name)

    def part(self, who, name: str, reason: str = "") -> RoomView:
        return self._call("part", name, reason)

    def say(self, who, name: str, text: str) -> Event:
        return self._call("say", name, text)

    def tell(self, who, nick: str, text: str) -> Event:
        return self._call("tell", nick, text)

    def setTopic(self, who, name: str, text: str) -> Event:
        return self._call("setTopic", name, text)

    def room(self, name: str) -> RoomView:
        return self._call("room", name)

    def listRooms(self) -> list[RoomView]:
        return self._call("listRooms")

    def quit(self, who, reason: str = "") -> None:
        try:
            self._call("quit", reason)
        except (EOFError, OSError):
            pass
