"""
The rooms and nicknames every front door shares.

L{ChatServer} knows participants only as L{IParticipant}s: a course-protocol
connection and an IRC connection are the same to it, so both see the same
rooms, nicknames and messages.  Refusals are L{ChatError}s, which each front
door turns into its own reply.
"""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass, field
from typing import Iterable

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from chat.auth import IChatAccount, makePortal
from chat.interfaces import IChatServer, IHistoryStore, IParticipant
from chat.moderation import MAX_BANS, MAX_MASK, Ban, Change, RoomSettings, checkKey, joinChanges, normalizeMask
from chat.wire import (
    MAX_TEXT,
    MAX_TOPIC,
    ChatError,
    Code,
    checkNick,
    checkRoom,
    checkText,
    cutText,
    foldNick,
)
from coursenet.accounts import PasswordFrom
from coursenet.admission import Admission
from coursenet.logs import peerName
from coursenet.receiver import atEndOfTurn
from coursenet.throttle import hostOf


@dataclass(eq=False)
class Event:
    """
    Something that happened, sent to participants.

    C{kind} is C{MESSAGE}, C{PRIVATE}, C{JOIN}, C{PART}, C{QUIT}, C{NICK},
    C{TOPIC}, C{MODE}, C{KICK}, C{INVITE} or C{AWAY}; C{text} is the
    message, reason, topic or mode change, for C{NICK} the new nickname.
    Each front door encodes an event once per way of writing it, whatever
    the number of recipients (L{encoded}).
    """

    kind: str
    nick: str
    room: str = ""
    text: str = ""
    when: float = 0.0
    #: For C{PRIVATE}, C{KICK} and C{INVITE}: the other nickname.
    target: str = ""
    #: The sender as C{nick!user@host}.
    source: str = ""
    #: A C{MESSAGE} or C{PRIVATE} sent as a notice: no automatic reply.
    notice: bool = False
    #: The sender's account, if it logged in to one.
    account: str = ""
    #: For C{MESSAGE} and C{PRIVATE}: the client-only tags (C{+name}) the
    #: sender attached (IRCv3 message-tags), and the message's own id.
    tags: dict = field(default_factory=dict)
    msgid: str = ""
    #: A C{MESSAGE} or C{PRIVATE} with tags and no text (IRC TAGMSG).
    tagOnly: bool = False
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


@dataclass(frozen=True)
class Whowas:
    nick: str
    user: str
    host: str
    realname: str
    when: float


def hostmask(who) -> str:
    """
    C{nick!user@host} of a participant, as bans match it.
    """
    return f"{who.nick}!{getattr(who, 'user', None) or who.nick}@{getattr(who, 'host', None) or 'chat'}"


class _RoomTurn:
    """
    A room's events in one reactor turn, held for the members whose output
    coalesces (their outbox's queue, L{coursenet.receiver}) and written to
    each as one write at the end of the turn: the per-member work of a
    fan-out is done once a turn, not once a message.

    Each member's order is kept: whatever else is written to a held member
    in the turn (a reply, a private message, another room's event) is held
    too, after the room's events so far, and the turn ends early, before
    the room's members change.  Members whose output does not coalesce (a
    member of another node) get each event at once.  The bytes are counted
    against the member's output limits when they are written, at the end
    of the turn.
    """

    __slots__ = ("room", "events", "claimed", "others", "held")

    def __init__(self, room: "Room", members: Iterable[IParticipant]) -> None:
        self.room = room
        self.events: list[tuple[Event, IParticipant | None]] = []
        #: The members held, by their queue.
        self.claimed: dict = {}
        self.others: list[IParticipant] = []
        #: What else was written to a held member: (events before it, bytes).
        self.held: dict = {}
        for member in members:
            queue = getattr(member, "turnQueue", None)
            if queue is not None and queue.claim(self):
                self.claimed[queue] = member
            else:
                # Not coalescing, held by another room's turn (which holds
                # what this room sends it, in order), or its output counted
                # as it is written (its transport is full).
                self.others.append(member)

    def add(self, event: Event, skip: IParticipant | None) -> None:
        self.events.append((event, skip))
        for member in self.others:
            if member is not skip:
                member.deliver(event)

    def hold(self, queue, data: bytes) -> None:
        held = self.held.get(queue)
        if held is None:
            held = self.held[queue] = []
        held.append((len(self.events), data))

    def release(self, queue, keep: bool) -> None:
        """
        The member's connection needs its output now (it is closing), or
        never (it was cut off): written or dropped, and the rest of the
        turn's events reach it one by one.
        """
        member = self.claimed.pop(queue)
        queue.holder = None
        if keep:
            data = self._stream(member, queue)
            if data:
                queue.put(data)
        self.held.pop(queue, None)
        self.others.append(member)

    def close(self) -> None:
        if self.room._turn is self:
            self.room._turn = None
        claimed, self.claimed = self.claimed, {}
        for queue in claimed:
            queue.holder = None
        # Writing may cut a member off; its QUIT then opens another turn,
        # which holds what is written here after it, in order.
        events = self.events
        skipped = {skip for _, skip in events if skip is not None}
        blobs: dict[str, bytes] = {}
        for queue, member in claimed.items():
            if not member.online:
                continue
            if member in skipped or queue in self.held:
                data = self._stream(member, queue)
            else:
                door = member.door
                wire = door.wire
                blob = blobs.get(wire)
                if blob is None:
                    encode = door.encodeEvent
                    blob = blobs[wire] = b"".join([e.encoded(wire, encode) for e, _ in events])
                data = blob
            if data:
                queue.write(data)

    def _stream(self, member, queue) -> bytes:
        """
        What C{member} gets of the turn: the events it was not the skipped
        sender of, and what else it was written, in order.
        """
        door = member.door
        wire, encode = door.wire, door.encodeEvent
        mine = self.held.get(queue, ())
        parts = []
        j = 0
        for i, (event, skip) in enumerate(self.events):
            while j < len(mine) and mine[j][0] <= i:
                parts.append(mine[j][1])
                j += 1
            if skip is not member:
                parts.append(event.encoded(wire, encode))
        parts.extend(data for _, data in mine[j:])
        return b"".join(parts)


class Room:
    """
    A room: its members in the order they joined, its topic, settings
    (L{RoomSettings}) and the last messages said in it; and who of its
    members are operators or voiced, by folded nickname.
    """

    def __init__(self, name: str, historySize: int, created: float = 0.0, clock=None) -> None:
        """
        @param clock: the reactor, whose turns a room's events to members
            whose output coalesces are batched by (L{_RoomTurn}); L{None},
            each event is delivered at once.
        """
        self.name = name
        self.clock = clock
        self._turn: _RoomTurn | None = None
        self.members: dict[str, IParticipant] = {}
        self.topic: Topic | None = None
        self.settings = RoomSettings()
        self.ops: set[str] = set()
        self.voices: set[str] = set()
        #: Folded nicknames invited since they last joined (bounded).
        self.invited: set[str] = set()
        self.created = created
        self.history: collections.deque[Event] = collections.deque(maxlen=historySize)
        self.loaded = False
        self._waiting: list[Deferred] = []

    def broadcast(self, event: Event, skip: IParticipant | None = None) -> None:
        if self.clock is None:
            for member in list(self.members.values()):
                if member is not skip:
                    member.deliver(event)
            return
        turn = self._turn
        if turn is None:
            turn = self._turn = _RoomTurn(self, self.members.values())
            atEndOfTurn(self.clock, turn.close)
        turn.add(event, skip)

    def endTurn(self) -> None:
        """
        Write out the events of this turn so far (before the members change).
        """
        if self._turn is not None:
            self._turn.close()

    def add(self, fold: str, who: IParticipant) -> None:
        self.endTurn()
        self.members[fold] = who

    def whenLoaded(self) -> Deferred:
        if self.loaded:
            return succeed(self)
        d: Deferred = Deferred()
        self._waiting.append(d)
        return d

    def _loaded(self, result) -> None:
        topic, messages, *rest = result
        self.topic = topic
        self.history.extend(messages)
        if rest and rest[0] is not None:
            self.settings = RoomSettings.fromDict(rest[0])
        self.loaded = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)

    def _failed(self, failure) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def _forget(self, fold: str) -> None:
        self.endTurn()
        self.members.pop(fold, None)
        self.ops.discard(fold)
        self.voices.discard(fold)

    def _rename(self, old: str, new: str, who: IParticipant) -> None:
        self.endTurn()
        del self.members[old]
        self.members[new] = who
        for roles in (self.ops, self.voices):
            if old in roles:
                roles.discard(old)
                roles.add(new)


@implementer(IChatServer)
class ChatServer:
    """
    Rooms, nicknames and who is where, for every front door, and the
    moderation rules of every room (L{chat.moderation}).

    @ivar admission: the connection caps every front door shares.
    @ivar instructors: folded account names that are operators in every
        room.
    """

    _log = Logger()
    #: Departed nicknames remembered for WHOWAS.
    whowasSize = 1000
    #: Invitations a room remembers at once.
    maxInvited = 100

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
        instructors: Iterable[str] = (),
        bus=None,
    ) -> None:
        """
        @param checker: a L{coursenet.accounts.PasswordChecker}: its
            accounts are registered nicknames, taken only with the password.
        @param anonymous: whether other nicknames may be used at all.
        @param maxConnections: connections at once, all front doors
            together; by default as many as the descriptor limit allows.
        @param maxPerAddress: connections at once from one address.
        @param instructors: account names that are operators in every room.
        @param bus: a L{chat.bus.RedisBus} sharing the rooms with other
            nodes, or L{None} for a server alone.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        #: The clock whose turns rooms batch their events by (L{_RoomTurn});
        #: L{None}, each event is delivered at once.
        self.turnClock = reactor
        self.store = store
        self.checker = checker
        self.portal = makePortal(checker) if checker is not None else None
        self.anonymous = anonymous
        self.historySize = historySize
        self.maxRooms = maxRooms
        self.maxRoomsPerUser = maxRoomsPerUser
        self.admission = Admission(maxConnections, maxPerAddress)
        self.instructors = {foldNick(name) for name in instructors}
        self.users: dict[str, IParticipant] = {}
        self.rooms: dict[str, Room] = {}
        self.whowasLog: collections.deque[Whowas] = collections.deque(maxlen=self.whowasSize)
        self.started = reactor.seconds()
        self._joined: dict[IParticipant, dict[str, Room]] = {}
        self.bus = bus

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

    def checkPassword(self, who: IParticipant, account: str, password: str) -> Deferred:
        """
        Check C{password} for C{account} (SASL PLAIN), throttled as NICK's.

        @return: a L{Deferred} firing with the account's name as the
            password file spells it, or failing with L{ChatError} (530).
        """
        return Deferred.fromCoroutine(self._login(who, account, password))

    async def _login(self, who: IParticipant, account: str, password: str) -> str:
        name = self._account(account)
        if name is None:
            raise ChatError(Code.PASSWORD, f"no account {account[:32]}")
        address = hostOf(getattr(who, "peer", None))
        assert self.portal is not None
        try:
            _, avatar, _ = await self.portal.login(PasswordFrom(name, password, address), None, IChatAccount)
        except UnauthorizedLogin:
            raise ChatError(Code.PASSWORD, f"wrong password for account {account[:32]}")
        return IChatAccount(avatar).name

    async def _register(self, who: IParticipant, nick: str, password: str | None) -> str | None:
        checkNick(nick)
        account = self._account(nick)
        if account is not None and getattr(who, "account", None) and foldNick(who.account) == foldNick(account):
            pass  # logged in already (SASL): the nickname is its own
        elif account is not None:
            if not password:
                raise ChatError(
                    Code.PASSWORD,
                    f"nickname {nick} is registered: send NICK {nick} PASSWORD",
                )
            account = await self._login(who, account, password)
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
            raise ChatError(Code.NICK_IN_USE, f"nickname {nick} is in use; choose another", (nick,))
        if self.bus is not None and (who.nick is None or foldNick(who.nick) != fold):
            # Unique across the nodes: claimed in Redis first (chat.bus).
            if not await self.bus.claim(fold):
                raise ChatError(Code.NICK_IN_USE, f"nickname {nick} is in use; choose another", (nick,))
            holder = self.users.get(fold)
            if not who.online or (holder is not None and holder is not who):
                self.bus.release(fold)
                raise ChatError(Code.NICK_IN_USE, f"nickname {nick} is in use; choose another", (nick,))
        old = who.nick
        if old is not None:
            oldFold = foldNick(old)
            del self.users[oldFold]
            if self.bus is not None and oldFold != fold and not getattr(who, "remote", False):
                self.bus.release(oldFold)
            for room in self._joined[who].values():
                room._rename(oldFold, fold, who)
            if old != nick:
                self._rememberWhowas(who)
        self.users[fold] = who
        source = hostmask(who) if old is not None else ""
        who.nick = nick
        if account is not None and hasattr(who, "account"):
            who.account = account
        if old is None:
            self._joined[who] = {}
            address = getattr(who, "peer", None)
            self._log.info("{who} arrived", who=nick if address is None else peerName(address, nick))
        elif old != nick:
            event = Event("NICK", old, text=nick, when=self.reactor.seconds(), source=source)
            self._toNeighbours(who, event)
            self._share(who, event)
        return account

    def _rememberWhowas(self, who: IParticipant) -> None:
        self.whowasLog.append(
            Whowas(
                who.nick,
                getattr(who, "user", None) or who.nick,
                getattr(who, "host", None) or "chat",
                getattr(who, "realname", None) or who.nick,
                self.reactor.seconds(),
            )
        )

    def whowas(self, nick: str, count: int = 0) -> list[Whowas]:
        """
        The last C{count} (0: all) remembered users called C{nick}, newest first.
        """
        fold = foldNick(nick)
        found = [w for w in reversed(self.whowasLog) if foldNick(w.nick) == fold]
        return found[:count] if count > 0 else found

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
            raise ChatError(Code.NO_SUCH_NICK, f"nobody is called {nick[:32]}", (nick[:32],))
        return who

    def quit(self, who: IParticipant, reason: str = "") -> None:
        """
        C{who} left: out of every room, nickname released.
        """
        joined = self._joined.get(who)
        if joined is None:
            return
        event = Event("QUIT", who.nick, text=reason, when=self.reactor.seconds(), source=hostmask(who))
        self._toNeighbours(who, event)
        self._share(who, event)
        for room in joined.values():
            room._forget(foldNick(who.nick))
        del self._joined[who]
        del self.users[foldNick(who.nick)]
        if self.bus is not None and not getattr(who, "remote", False):
            self.bus.release(foldNick(who.nick))
        self._rememberWhowas(who)
        address = getattr(who, "peer", None)
        self._log.info("{who} left: {reason}", who=who.nick if address is None else peerName(address, who.nick), reason=reason)

    def setAway(self, who: IParticipant, text: str | None) -> Event:
        """
        Mark C{who} away with C{text}, or back with L{None}; everyone who
        shares a room is told (IRC's away-notify).
        """
        self._registered(who)
        if text is not None:
            checkText(text, "away message")
        who.away = text
        event = Event("AWAY", who.nick, text=text or "", when=self.reactor.seconds(), source=hostmask(who))
        self._toNeighbours(who, event)
        self._share(who, event)
        return event

    def countUsers(self) -> int:
        return len(self.users)

    # -- roles -----------------------------------------------------------------

    def isInstructor(self, who: IParticipant) -> bool:
        account = getattr(who, "account", None)
        if not account:
            return False
        return foldNick(account) in self.instructors

    def isOperator(self, room: Room, who: IParticipant) -> bool:
        """
        Whether C{who} may moderate C{room}: one of its operators, or an
        instructor (operators everywhere).
        """
        return who.nick is not None and foldNick(who.nick) in room.ops or self.isInstructor(who)

    def prefixes(self, room: Room, who) -> str:
        """
        C{@} for an operator, C{+} for a voiced member, highest first.
        """
        fold = foldNick(who.nick)
        marks = "@" if fold in room.ops or self.isInstructor(who) else ""
        return marks + ("+" if fold in room.voices else "")

    # -- rooms -----------------------------------------------------------------

    def room(self, name: str) -> Room:
        """
        @raise ChatError: (541) unless room C{name} exists.
        """
        room = self.rooms.get(checkRoom(name))
        if room is None or not room.loaded:
            raise ChatError(Code.NO_SUCH_ROOM, f"no room {name[:40]}; LIST shows the rooms", (name[:40],))
        return room

    def _member(self, who: IParticipant, name: str) -> Room:
        joined = self._registered(who)
        room = joined.get(checkRoom(name))
        if room is None:
            self.room(name)  # 541 if there is no such room at all
            bare = checkRoom(name)
            raise ChatError(Code.NOT_IN_ROOM, f"you are not in room {bare}; JOIN {bare} first", (name[:40],))
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
        room = self.rooms[name] = Room(name, self.historySize, self.reactor.seconds(), self.turnClock)
        d = self.store.load(name, self.historySize)
        if self.bus is not None:
            # The history every node replays is the room's Redis stream (chat.bus).
            d.addCallback(self.bus.history, name)
        d.addCallbacks(room._loaded, room._failed)
        d.addErrback(lambda f: self._log.failure("loading room {room}", f, room=name))
        return room

    def join(self, who: IParticipant, name: str, key: str | None = None) -> Deferred:
        """
        Put C{who} in room C{name}, made if needed, if the room's modes and
        bans let it in (C{key} for a room with one).

        @return: a L{Deferred} firing with the L{Room}; its C{history} is
            what to replay.
        """
        return Deferred.fromCoroutine(self._join(who, name, key))

    async def _join(self, who: IParticipant, name: str, key: str | None) -> Room:
        joined = self._registered(who)
        bare = checkRoom(name)
        if bare in joined:
            raise ChatError(Code.BAD_SEQUENCE, f"you are already in room {bare}", (name,))
        if len(joined) >= self.maxRoomsPerUser:
            raise ChatError(
                Code.LIMIT, f"you are in {len(joined)} rooms, the limit; PART one first", (name,)
            )
        if self.bus is not None:
            self.bus.check()
        room = self._open(bare)
        if not room.loaded:
            try:
                await room.whenLoaded()
            except Exception:
                self.rooms.pop(bare, None)
                raise ChatError(Code.LIMIT, f"room {bare} could not be loaded; try again later", (name,))
            if self._joined.get(who) is not joined or bare in joined:
                raise ChatError(Code.BAD_SEQUENCE, f"you are already in room {bare}", (name,))
        self._admit(who, room, name, key)
        fold = foldNick(who.nick)
        if not room.members:
            room.ops.add(fold)
        room.invited.discard(fold)
        room.add(fold, who)
        joined[bare] = room
        event = Event("JOIN", who.nick, bare, when=self.reactor.seconds(), source=hostmask(who),
                      account=getattr(who, "account", None) or "")
        room.broadcast(event, skip=who)
        if self.bus is not None:
            from chat.bus import memberInfo

            self._share(who, event, member=memberInfo(who))
        away = getattr(who, "away", None)
        if away:
            # What IRC's away-notify promises: the away state of whoever joins.
            room.broadcast(Event("AWAY", who.nick, text=away, when=self.reactor.seconds(), source=hostmask(who)),
                           skip=who)
        return room

    def _admit(self, who: IParticipant, room: Room, name: str, key: str | None) -> None:
        """
        @raise ChatError: unless C{who} may enter C{room} now.
        """
        if self.isInstructor(who):
            return
        settings = room.settings
        invited = foldNick(who.nick) in room.invited
        if settings.banned(hostmask(who)) and not invited:
            raise ChatError(Code.BANNED, f"you are banned from room {room.name}", (name,))
        if "i" in settings.modes and not invited:
            raise ChatError(
                Code.INVITE_ONLY, f"room {room.name} is invite only (+i): ask an operator to INVITE you", (name,)
            )
        if settings.key is not None and key != settings.key:
            raise ChatError(Code.BAD_KEY, f"room {room.name} needs a key (+k): JOIN {room.name} KEY", (name,))
        if settings.limit is not None and len(room.members) >= settings.limit and not invited:
            raise ChatError(
                Code.ROOM_FULL, f"room {room.name} is full (+l {settings.limit}); try later", (name,)
            )

    def part(self, who: IParticipant, name: str, reason: str = "") -> Room:
        room = self._member(who, name)
        if reason:
            checkText(reason, "reason")
        event = Event("PART", who.nick, room.name, reason, self.reactor.seconds(), source=hostmask(who))
        room._forget(foldNick(who.nick))
        del self._joined[who][room.name]
        room.broadcast(event)
        self._share(who, event)
        return room

    def say(
        self, who: IParticipant, name: str, text: str, notice: bool = False, limit: int | None = MAX_TEXT,
        tags: dict | None = None, tagOnly: bool = False,
    ) -> Event:
        """
        Say C{text} in room C{name}: to every other member, and (unless it is
        a notice) into the room's history.  A member may be silenced (a ban,
        or +m without voice); one from outside needs a room without +n.

        @param limit: the longest text in bytes; L{None} where the client's
            line bounds it (IRC).
        @param tags: client-only tags to pass on (IRCv3 message-tags).
        @param tagOnly: tags and no text (IRC TAGMSG): not kept.
        """
        self._registered(who)
        room = self.room(name)
        if self.bus is not None:
            self.bus.check()
        fold = foldNick(who.nick)
        settings = room.settings
        if fold not in room.members:
            if "n" in settings.modes and not self.isInstructor(who):
                raise ChatError(
                    Code.NOT_IN_ROOM, f"you are not in room {room.name}; JOIN {room.name} first (+n)", (name,)
                )
        if not self.isOperator(room, who) and fold not in room.voices:
            if "m" in settings.modes:
                raise ChatError(
                    Code.CANNOT_SEND, f"room {room.name} is moderated (+m): only voiced members speak", (name,)
                )
            if settings.banned(hostmask(who)):
                raise ChatError(Code.CANNOT_SEND, f"you are banned from room {room.name}", (name,))
        if not tagOnly:
            checkText(text, limit=limit)
        event = Event(
            "MESSAGE", who.nick, room.name, text, self.reactor.seconds(),
            source=hostmask(who), notice=notice, account=getattr(who, "account", None) or "",
            tags=tags or {}, msgid=secrets.token_hex(8), tagOnly=tagOnly,
        )
        if not notice and not tagOnly:
            room.history.append(event)
            self.store.append(event)
        room.broadcast(event, skip=who)
        self._share(who, event)
        return event

    def tell(
        self, who: IParticipant, nick: str, text: str, notice: bool = False, limit: int | None = MAX_TEXT,
        tags: dict | None = None, tagOnly: bool = False,
    ) -> Event:
        """
        A private message from C{who} to C{nick} (see L{say}).
        """
        self._registered(who)
        target = self.find(nick)
        if self.bus is not None and getattr(target, "remote", False):
            self.bus.check()
        if not tagOnly:
            checkText(text, limit=limit)
        event = Event(
            "PRIVATE", who.nick, "", text, self.reactor.seconds(), target.nick,
            source=hostmask(who), notice=notice, account=getattr(who, "account", None) or "",
            tags=tags or {}, msgid=secrets.token_hex(8), tagOnly=tagOnly,
        )
        target.deliver(event)
        return event

    def setTopic(self, who: IParticipant, name: str, text: str) -> Event:
        """
        Set the topic (cut to L{MAX_TOPIC} bytes), or clear it with empty
        C{text}; with +t only operators may.
        """
        room = self._member(who, name)
        if self.bus is not None:
            self.bus.check()
        if "t" in room.settings.modes and not self.isOperator(room, who):
            raise ChatError(
                Code.NOT_OPERATOR, f"only operators set the topic of {room.name} (+t)", (name,)
            )
        if text:
            checkText(text, "topic", limit=None)
            text = cutText(text, MAX_TOPIC)
        when = self.reactor.seconds()
        room.topic = Topic(text, who.nick, when) if text else None
        self.store.setTopic(room.name, room.topic)
        event = Event("TOPIC", who.nick, room.name, text, when, source=hostmask(who))
        room.broadcast(event, skip=who)
        self._share(who, event)
        return event

    # -- moderation --------------------------------------------------------------

    def _moderate(self, who: IParticipant, name: str) -> Room:
        """
        The room, if C{who} may moderate it: an operator of it (so a
        member), or an instructor.
        """
        self._registered(who)
        room = self.room(name)
        if self.bus is not None:
            self.bus.check()
        if self.isInstructor(who):
            return room
        if foldNick(who.nick) not in room.members:
            raise ChatError(Code.NOT_IN_ROOM, f"you are not in room {room.name}", (name,))
        if not self.isOperator(room, who):
            raise ChatError(Code.NOT_OPERATOR, f"you are not an operator of room {room.name}", (name,))
        return room

    def mode(self, who: IParticipant, name: str, changes: list[Change]) -> tuple[Event | None, list[ChatError]]:
        """
        Apply mode C{changes} to room C{name} (see L{chat.moderation}); its
        members, C{who} included, get one C{MODE} event with those applied.

        @return: that event (L{None} if nothing changed) and a refusal for
            each change that could not be made.
        @raise ChatError: if C{who} may not change the room's modes at all.
        """
        room = self._moderate(who, name)
        settings = room.settings
        applied: list[Change] = []
        errors: list[ChatError] = []
        stored = False
        for change in changes:
            letter, adding, arg = change.letter, change.adding, change.arg
            if letter in "ov":
                assert arg is not None
                try:
                    target = self.find(arg)
                except ChatError as e:
                    errors.append(e)
                    continue
                fold = foldNick(target.nick)
                if fold not in room.members:
                    errors.append(
                        ChatError(Code.THEY_NOT_IN_ROOM, f"{target.nick} is not in room {room.name}",
                                  (target.nick, name))
                    )
                    continue
                roles = room.ops if letter == "o" else room.voices
                (roles.add if adding else roles.discard)(fold)
                applied.append(Change(adding, letter, target.nick))
            elif letter == "k":
                assert arg is not None
                if adding:
                    why = checkKey(arg)
                    if why is not None:
                        errors.append(ChatError(Code.BAD_MODE_ARGUMENT, why, (name, "k", "*")))
                        continue
                    settings.key = arg
                    applied.append(change)
                elif settings.key is not None:
                    settings.key = None
                    applied.append(Change(False, "k", "*"))
                stored = True
            elif letter == "l":
                if adding:
                    value = arg or ""
                    if not value.isdigit() or int(value) <= 0 or int(value) > 1_000_000:
                        errors.append(
                            ChatError(Code.BAD_MODE_ARGUMENT, "the limit is a whole number of members, 1 or more",
                                      (name, "l", value or "*"))
                        )
                        continue
                    settings.limit = int(value)
                    applied.append(Change(True, "l", value))
                elif settings.limit is not None:
                    settings.limit = None
                    applied.append(Change(False, "l"))
                stored = True
            elif letter == "b":
                assert arg is not None
                mask = normalizeMask(arg)[:MAX_MASK]
                present = [b for b in settings.bans if b.mask.lower() == mask.lower()]
                if adding and not present:
                    if len(settings.bans) >= MAX_BANS:
                        errors.append(ChatError(Code.LIMIT, f"room {room.name} has {MAX_BANS} bans, the limit",
                                                (name, mask)))
                        continue
                    settings.bans.append(Ban(mask, hostmask(who), self.reactor.seconds()))
                    applied.append(Change(True, "b", mask))
                elif not adding and present:
                    settings.bans.remove(present[0])
                    applied.append(Change(False, "b", present[0].mask))
                stored = True
            elif adding != (letter in settings.modes):
                (settings.modes.add if adding else settings.modes.discard)(letter)
                applied.append(change)
                stored = True
        if stored:
            self.store.setSettings(room.name, settings.toDict())
        if not applied:
            return None, errors
        event = Event("MODE", who.nick, room.name, " ".join(joinChanges(applied)), self.reactor.seconds(),
                      source=hostmask(who))
        room.broadcast(event)
        if foldNick(who.nick) not in room.members:
            who.deliver(event)
        if self.bus is not None:
            from chat.bus import roomState

            self._share(who, event, settings=roomState(room))
        return event, errors

    def kick(self, who: IParticipant, name: str, nick: str, reason: str = "") -> Event:
        """
        Put C{nick} out of room C{name}; every member, C{nick} included, gets
        the C{KICK} event.
        """
        room = self._moderate(who, name)
        target = self.find(nick)
        fold = foldNick(target.nick)
        if fold not in room.members:
            raise ChatError(Code.THEY_NOT_IN_ROOM, f"{target.nick} is not in room {room.name}", (target.nick, name))
        if reason:
            checkText(reason, "reason", limit=None)
        event = Event("KICK", who.nick, room.name, reason or who.nick, self.reactor.seconds(), target.nick,
                      source=hostmask(who))
        room.broadcast(event)
        if foldNick(who.nick) not in room.members:
            who.deliver(event)
        room._forget(fold)
        self._joined[target].pop(room.name, None)
        self._share(who, event)
        return event

    def invite(self, who: IParticipant, nick: str, name: str) -> Event:
        """
        Invite C{nick} to room C{name}: past +i, a ban and +l, once.  In an
        invite-only room only operators may invite.
        """
        self._registered(who)
        target = self.find(nick)
        bare = checkRoom(name)
        room = self.rooms.get(bare)
        if room is not None and room.loaded:
            if foldNick(who.nick) not in room.members and not self.isInstructor(who):
                raise ChatError(Code.NOT_IN_ROOM, f"you are not in room {bare}", (name,))
            if "i" in room.settings.modes and not self.isOperator(room, who):
                raise ChatError(Code.NOT_OPERATOR, f"only operators invite to {bare} (+i)", (name,))
            if foldNick(target.nick) in room.members:
                raise ChatError(Code.THEY_IN_ROOM, f"{target.nick} is already in room {bare}", (target.nick, name))
            if len(room.invited) >= self.maxInvited:
                room.invited.pop()
            room.invited.add(foldNick(target.nick))
        event = Event("INVITE", who.nick, bare, when=self.reactor.seconds(), target=target.nick,
                      source=hostmask(who))
        target.deliver(event)
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

    # -- other nodes (chat.bus) ----------------------------------------------------

    def _share(self, who: IParticipant, event: Event, **extra) -> None:
        """
        Publish C{event} to the other nodes, if a member of this node caused it.
        """
        if self.bus is not None and not getattr(who, "remote", False):
            self.bus.event(event, **extra)

    def _remoteJoin(self, who: IParticipant, name: str, event: Event | None) -> None:
        """
        Another node's member C{who} joined room C{name}: seen here too.
        """
        try:
            room = self._open(name)
        except ChatError:
            self._log.warn("chat bus: no room here for {room}", room=name)
            return

        def loaded(room: Room) -> None:
            joined = self._joined.get(who)
            if joined is None or name in joined:
                return
            fold = foldNick(who.nick)
            if not room.members:
                room.ops.add(fold)
            room.add(fold, who)
            joined[name] = room
            room.broadcast(event or Event("JOIN", who.nick, name, when=self.reactor.seconds(), source=hostmask(who),
                                          account=getattr(who, "account", None) or ""))

        room.whenLoaded().addCallback(loaded).addErrback(
            lambda f: self._log.failure("loading room {room}", f, room=name))

    def _remotePart(self, who: IParticipant, name: str, reason: str, event: Event | None = None) -> None:
        room = self._joined.get(who, {}).pop(name, None)
        if room is None:
            return
        room._forget(foldNick(who.nick))
        room.broadcast(event or Event("PART", who.nick, name, reason, self.reactor.seconds(), source=hostmask(who)))

    def _remoteQuit(self, who: IParticipant, reason: str, event: Event | None = None) -> None:
        if self._joined.get(who) is None:
            return
        self.quit(who, reason) if event is None else self._quitWith(who, event)

    def _quitWith(self, who: IParticipant, event: Event) -> None:
        self._toNeighbours(who, event)
        for room in self._joined.pop(who).values():
            room._forget(foldNick(who.nick))
        self.users.pop(foldNick(who.nick), None)
        self._rememberWhowas(who)

    def _remoteNick(self, who: IParticipant, event: Event) -> None:
        old, new = foldNick(who.nick), foldNick(event.text)
        if new in self.users and self.users[new] is not who:
            return
        del self.users[old]
        self.users[new] = who
        for room in self._joined[who].values():
            room._rename(old, new, who)
        who.nick = event.text
        self._toNeighbours(who, event)

    def _remoteRoomEvent(self, event: Event, settings: dict | None) -> None:
        """
        A MESSAGE, TOPIC, MODE or KICK from another node, for room C{event.room}.
        """
        room = self.rooms.get(event.room)
        if room is None or not room.loaded:
            return
        if event.kind == "MESSAGE" and not event.notice and not event.tagOnly:
            room.history.append(event)
            self.store.append(event)
        elif event.kind == "TOPIC":
            room.topic = Topic(event.text, event.nick, event.when) if event.text else None
            self.store.setTopic(room.name, room.topic)
        elif event.kind == "MODE" and settings is not None:
            from chat.bus import applyRoomState

            applyRoomState(room, settings)
            self.store.setSettings(room.name, room.settings.toDict())
        room.broadcast(event)
        if event.kind == "KICK":
            fold = foldNick(event.target)
            room._forget(fold)
            target = self.users.get(fold)
            if target is not None:
                self._joined.get(target, {}).pop(room.name, None)
