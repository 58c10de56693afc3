"""
The rooms and nicknames every front door shares.

L{ChatServer} knows participants only as L{IParticipant}s: a course-protocol
connection and an IRC connection are the same to it, so both see the same
rooms, nicknames and messages.  Refusals are L{ChatError}s, which each front
door turns into its own reply.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from chat.auth import IChatAccount, makePortal
from chat.interfaces import IChatServer, IHistoryStore, IParticipant
from chat.wire import ChatError, Code, checkNick, checkRoom, checkText, foldNick
from coursenet.accounts import PasswordFrom
from coursenet.admission import Admission
from coursenet.throttle import hostOf


@dataclass(eq=False)
class Event:
    """
    Something that happened, sent to participants.

    C{kind} is C{MESSAGE}, C{PRIVATE}, C{JOIN}, C{PART}, C{QUIT}, C{NICK} or
    C{TOPIC}; C{text} is the message, reason or topic, or for C{NICK} the
    new nickname.  Each front door encodes an event once, whatever the
    number of recipients (L{encoded}).
    """

    kind: str
    nick: str
    room: str = ""
    text: str = ""
    when: float = 0.0
    #: For C{PRIVATE}: the recipient's nickname.
    target: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    def encoded(self, key: str, encode) -> bytes:
        """
        C{encode(self)}, computed once per C{key}.
        """
        data = self._cache.get(key)
        if data is None:
            data = self._cache[key] = encode(self)
        return data


@dataclass(frozen=True)
class Topic:
    text: str
    nick: str
    when: float


class Room:
    """
    A room: its members in the order they joined, its topic and the last
    messages said in it.
    """

    def __init__(self, name: str, historySize: int) -> None:
        self.name = name
        self.members: dict[str, IParticipant] = {}
        self.topic: Topic | None = None
        self.history: collections.deque[Event] = collections.deque(maxlen=historySize)
        self.loaded = False
        self._waiting: list[Deferred] = []

    def broadcast(self, event: Event, skip: IParticipant | None = None) -> None:
        for member in list(self.members.values()):
            if member is not skip:
                member.deliver(event)

    def whenLoaded(self) -> Deferred:
        if self.loaded:
            return succeed(self)
        d: Deferred = Deferred()
        self._waiting.append(d)
        return d

    def _loaded(self, result) -> None:
        topic, messages = result
        self.topic = topic
        self.history.extend(messages)
        self.loaded = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)

    def _failed(self, failure) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)


@implementer(IChatServer)
class ChatServer:
    """
    Rooms, nicknames and who is where, for every front door.

    @ivar admission: the connection caps every front door shares.
    """

    _log = Logger()

    def __init__(
        self,
        store: IHistoryStore,
        checker=None,
        anonymous: bool = True,
        historySize: int = 50,
        maxRooms: int = 1000,
        maxRoomsPerUser: int = 20,
        maxConnections: int | None = None,
        maxPerAddress: int | None = None,
        reactor=None,
    ) -> None:
        """
        @param checker: a L{coursenet.accounts.PasswordChecker}: its
            accounts are registered nicknames, taken only with the password.
        @param anonymous: whether other nicknames may be used at all.
        @param maxConnections: connections at once, all front doors
            together; by default as many as the descriptor limit allows.
        @param maxPerAddress: connections at once from one address.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store
        self.checker = checker
        self.portal = makePortal(checker) if checker is not None else None
        self.anonymous = anonymous
        self.historySize = historySize
        self.maxRooms = maxRooms
        self.maxRoomsPerUser = maxRoomsPerUser
        self.admission = Admission(maxConnections, maxPerAddress)
        self.users: dict[str, IParticipant] = {}
        self.rooms: dict[str, Room] = {}
        self._joined: dict[IParticipant, dict[str, Room]] = {}

    # -- nicknames -------------------------------------------------------------

    def _account(self, nick: str) -> str | None:
        """
        The account that owns C{nick} (compared case-insensitively), if any.
        """
        if self.checker is None:
            return None
        fold = foldNick(nick)
        for name in self.checker.userNames():
            if foldNick(name) == fold:
                return name
        return None

    def register(self, who: IParticipant, nick: str, password: str | None = None) -> Deferred:
        """
        Give C{who} the nickname C{nick}, or change it.

        @return: a L{Deferred} firing with the account name when C{nick} is
            registered (and the password was right), else L{None}.  The
            password check is throttled by account and by C{who.peer}, the
            client's address, when C{who} has one (L{coursenet.throttle}).
        """
        return Deferred.fromCoroutine(self._register(who, nick, password))

    async def _register(self, who: IParticipant, nick: str, password: str | None) -> str | None:
        checkNick(nick)
        account = self._account(nick)
        if account is not None:
            if not password:
                raise ChatError(
                    Code.PASSWORD,
                    f"nickname {nick} is registered: send NICK {nick} PASSWORD",
                )
            # A remote participant of the forking twin has no peer here.
            address = hostOf(getattr(who, "peer", None))
            # An account comes from the checker, so there is a portal.
            assert self.portal is not None
            try:
                _, avatar, _ = await self.portal.login(
                    PasswordFrom(account, password, address), None, IChatAccount
                )
            except UnauthorizedLogin:
                raise ChatError(Code.PASSWORD, f"wrong password for registered nickname {nick}")
            account = IChatAccount(avatar).name
        elif not self.anonymous:
            raise ChatError(
                Code.ACCOUNTS_ONLY,
                f"this server takes registered nicknames only and {nick} is not one",
            )
        if not who.online:
            # Gone while the password was checked.
            raise ChatError(Code.CLOSING, "connection closed")
        fold = foldNick(nick)
        holder = self.users.get(fold)
        if holder is not None and holder is not who:
            raise ChatError(Code.NICK_IN_USE, f"nickname {nick} is in use; choose another")
        old = who.nick
        if old is not None:
            del self.users[foldNick(old)]
            for room in self._joined[who].values():
                del room.members[foldNick(old)]
                room.members[fold] = who
        self.users[fold] = who
        who.nick = nick
        if old is None:
            self._joined[who] = {}
            self._log.info("{nick} arrived", nick=nick)
        elif old != nick:
            self._toNeighbours(who, Event("NICK", old, text=nick, when=self.reactor.seconds()))
        return account

    def _registered(self, who: IParticipant) -> dict[str, Room]:
        joined = self._joined.get(who)
        if joined is None:
            raise ChatError(Code.BAD_SEQUENCE, "choose a nickname first: NICK name")
        return joined

    def _toNeighbours(self, who: IParticipant, event: Event) -> None:
        """
        Send C{event} once to everyone who shares a room with C{who}.
        """
        seen = {who}
        for room in self._joined.get(who, {}).values():
            for member in list(room.members.values()):
                if member not in seen:
                    seen.add(member)
                    member.deliver(event)

    def find(self, nick: str) -> IParticipant:
        """
        @raise ChatError: (540) if nobody is called C{nick}.
        """
        who = self.users.get(foldNick(nick))
        if who is None:
            raise ChatError(Code.NO_SUCH_NICK, f"nobody is called {nick[:32]}")
        return who

    def quit(self, who: IParticipant, reason: str = "") -> None:
        """
        C{who} left: out of every room, nickname released.
        """
        joined = self._joined.get(who)
        if joined is None:
            return
        self._toNeighbours(who, Event("QUIT", who.nick, text=reason, when=self.reactor.seconds()))
        for room in joined.values():
            del room.members[foldNick(who.nick)]
        del self._joined[who]
        del self.users[foldNick(who.nick)]
        self._log.info("{nick} left: {reason}", nick=who.nick, reason=reason)

    # -- rooms -----------------------------------------------------------------

    def room(self, name: str) -> Room:
        """
        @raise ChatError: (541) unless room C{name} exists.
        """
        room = self.rooms.get(checkRoom(name))
        if room is None or not room.loaded:
            raise ChatError(Code.NO_SUCH_ROOM, f"no room {name[:40]}; LIST shows the rooms")
        return room

    def _member(self, who: IParticipant, name: str) -> Room:
        joined = self._registered(who)
        room = joined.get(checkRoom(name))
        if room is None:
            bare = checkRoom(name)
            raise ChatError(Code.NOT_IN_ROOM, f"you are not in room {bare}; JOIN {bare} first")
        return room

    def _open(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is not None:
            return room
        if len(self.rooms) >= self.maxRooms:
            for idle in [r for r in self.rooms.values() if r.loaded and not r.members]:
                del self.rooms[idle.name]
            if len(self.rooms) >= self.maxRooms:
                raise ChatError(
                    Code.LIMIT,
                    f"too many rooms on this server (limit {self.maxRooms}); join one that LIST shows",
                )
        room = self.rooms[name] = Room(name, self.historySize)
        d = self.store.load(name, self.historySize)
        d.addCallbacks(room._loaded, room._failed)
        d.addErrback(lambda f: self._log.failure("loading room {room}", f, room=name))
        return room

    def join(self, who: IParticipant, name: str) -> Deferred:
        """
        Put C{who} in room C{name}, made if needed.

        @return: a L{Deferred} firing with the L{Room}; its C{history} is
            what to replay.
        """
        return Deferred.fromCoroutine(self._join(who, name))

    async def _join(self, who: IParticipant, name: str) -> Room:
        joined = self._registered(who)
        bare = checkRoom(name)
        if bare in joined:
            raise ChatError(Code.BAD_SEQUENCE, f"you are already in room {bare}")
        if len(joined) >= self.maxRoomsPerUser:
            raise ChatError(
                Code.LIMIT, f"you are in {len(joined)} rooms, the limit; PART one first"
            )
        room = self._open(bare)
        if not room.loaded:
            try:
                await room.whenLoaded()
            except Exception:
                self.rooms.pop(bare, None)
                raise ChatError(Code.LIMIT, f"room {bare} could not be loaded; try again later")
            if self._joined.get(who) is not joined or bare in joined:
                raise ChatError(Code.BAD_SEQUENCE, f"you are already in room {bare}")
        room.members[foldNick(who.nick)] = who
        joined[bare] = room
        room.broadcast(Event("JOIN", who.nick, bare, when=self.reactor.seconds()), skip=who)
        return room

    def part(self, who: IParticipant, name: str, reason: str = "") -> Room:
        room = self._member(who, name)
        if reason:
            checkText(reason, "reason")
        del room.members[foldNick(who.nick)]
        del self._joined[who][room.name]
        room.broadcast(Event("PART", who.nick, room.name, reason, self.reactor.seconds()))
        return room

    def say(self, who: IParticipant, name: str, text: str) -> Event:
        """
        Say C{text} in a room C{who} is in: to every other member, and into
        the room's history.
        """
        room = self._member(who, name)
        checkText(text)
        event = Event("MESSAGE", who.nick, room.name, text, self.reactor.seconds())
        room.history.append(event)
        self.store.append(event)
        room.broadcast(event, skip=who)
        return event

    def tell(self, who: IParticipant, nick: str, text: str) -> Event:
        """
        A private message from C{who} to C{nick}.
        """
        self._registered(who)
        target = self.find(nick)
        checkText(text)
        event = Event("PRIVATE", who.nick, "", text, self.reactor.seconds(), target.nick)
        target.deliver(event)
        return event

    def setTopic(self, who: IParticipant, name: str, text: str) -> Event:
        room = self._member(who, name)
        if text:
            checkText(text, "topic")
        when = self.reactor.seconds()
        room.topic = Topic(text, who.nick, when) if text else None
        self.store.setTopic(room.name, room.topic)
        event = Event("TOPIC", who.nick, room.name, text, when)
        room.broadcast(event, skip=who)
        return event

    def listRooms(self) -> Iterable[Room]:
        """
        The rooms someone is in or that have a topic, by name.
        """
        return sorted(
            (r for r in self.rooms.values() if r.loaded and (r.members or r.topic)),
            key=lambda r: r.name,
        )

    def roomsOf(self, who: IParticipant) -> list[Room]:
        return list(self._joined.get(who, {}).values())
