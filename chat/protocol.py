"""
The course chat server: one L{ChatProtocol} per connection, on the chat
receiver (L{chat.session.ChatReceiver}); the rooms live in a shared
L{chat.rooms.ChatServer}.

Each command is a C{do_VERB} method.  One that finishes later (NICK with a
password, JOIN of a room still loading) returns a L{Deferred}; until it
fires the protocol reads nothing more, so replies come in command order.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.moderation import FLAG_MODES, parseModeChanges
from chat.rooms import Event
from chat.session import ChatReceiver, DoorFactory
from chat.wire import (
    MAX_LINE,
    MAX_TEXT,
    VERSION,
    ChatError,
    Code,
    Command,
    checkText,
    formatLine,
    formatMultiline,
    formatReply,
    formatTime,
    parseCommand,
)

#: Commands that need no nickname.
_BEFORE_NICK = {"NICK", "PING", "PONG", "QUIT", "HELP", "LIST"}

HELP = [
    "NICK name [password]   choose or change your nickname (password: registered ones)",
    "JOIN room              enter a room; its recent history is replayed",
    "PART room [reason]     leave a room",
    "SAY room text          say something in a room",
    "MSG nick text          a private message",
    "LIST                   rooms, member counts, topics",
    "WHO room               who is in a room",
    "TOPIC room [text]      show or set a room's topic",
    "MODE room [changes]    show or (operators) change modes: +m, +v nick, +b mask, ...",
    "KICK room nick [why]   (operators) put someone out of a room",
    "INVITE nick room       invite someone (past +i, a ban or +l)",
    "PING [token] / PONG token / QUIT [reason] / HELP",
]


def encodeEvent(event: Event) -> bytes:
    """
    An event as the course protocol sends it (docs/chat.md, section 5).
    """
    kind = event.kind
    if event.tagOnly:
        return b""  # IRC's TAGMSG: tags only, nothing to show here
    if kind == "MESSAGE":
        line = f"{'NOTICE' if event.notice else 'MESSAGE'} {event.room} {event.nick} {event.text}"
    elif kind == "PRIVATE":
        line = f"{'PRIVNOTICE' if event.notice else 'PRIVATE'} {event.nick} {event.text}"
    elif kind == "JOIN":
        line = f"JOIN {event.room} {event.nick}"
    elif kind in ("PART", "TOPIC", "MODE"):
        line = f"{kind} {event.room} {event.nick} {event.text}"
    elif kind == "KICK":
        line = f"KICK {event.room} {event.nick} {event.target} {event.text}"
    elif kind == "INVITE":
        line = f"INVITE {event.room} {event.nick}"
    elif kind == "AWAY":
        return b""  # IRC's away status: the course protocol has none
    else:  # QUIT, NICK
        line = f"{kind} {event.nick} {event.text}"
    return formatLine(line)


def encodeHistory(event: Event) -> bytes:
    return formatLine(
        f"HISTORY {event.room} {formatTime(event.when)} {event.nick} {event.text}"
    )


class ChatProtocol(ChatReceiver):
    """
    One course-protocol connection.
    """

    __slots__ = ()

    # Lines end with CRLF; a bare LF is taken too, for netcat and telnet.
    maxLineLength = MAX_LINE
    wire = "chat"
    _log = Logger()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.reply(
            Code.READY,
            f"{VERSION} coursenet chat ready; max-line={MAX_LINE}"
            f" max-text={MAX_TEXT}; choose a nickname with NICK",
        )

    def reply(self, code: int, text: str) -> None:
        self.send(formatReply(code, text))

    # -- IFrontDoor -----------------------------------------------------------

    encodeEvent = staticmethod(encodeEvent)

    @staticmethod
    def busyReply(text: str) -> bytes:
        return formatReply(Code.CLOSING, text)

    def sendPing(self, token: str) -> None:
        self.send(formatLine(f"PING {token}"))

    # -- input ------------------------------------------------------------------

    def lineTooLong(self) -> None:
        self.reply(Code.SYNTAX, f"line too long: the limit is {MAX_LINE} bytes; line ignored")

    def commandReceived(self, line: bytes) -> Deferred | None:
        try:
            command = parseCommand(line)
        except ChatError as e:
            self.reply(e.code, e.message)
            return None
        return maybeDeferred(self._dispatch, command).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if not self.session.online:
            return
        if failure.check(ChatError):
            self.reply(failure.value.code, failure.value.message)
        else:
            self._log.failure("command failed", failure)
            self.reply(Code.LIMIT, "internal server error; the command was not completed")

    def _dispatch(self, command: Command):
        handler = getattr(self, "do_" + command.verb, None)
        if handler is None:
            raise ChatError(Code.SYNTAX, f"unknown command {command.verb[:32]}; try HELP")
        if self.session.nick is None and command.verb not in _BEFORE_NICK:
            raise ChatError(Code.BAD_SEQUENCE, "choose a nickname first: NICK name")
        return handler(command)

    # -- commands ---------------------------------------------------------------

    def do_NICK(self, command: Command) -> Deferred:
        args = command.rest.split(" ")
        if not 1 <= len(args) <= 2 or not args[0]:
            raise ChatError(Code.BAD_ARGUMENT, "usage: NICK name [password]")
        nick, password = args[0], (args[1] if len(args) > 1 else None)

        def done(account):
            note = f" (account {account})" if account else ""
            self.reply(Code.NICK_OK, f"{nick} is your nickname{note}")

        return self.server.register(self.session, nick, password).addCallback(done)

    def do_JOIN(self, command: Command) -> Deferred:
        args = command.rest.split()
        if not 1 <= len(args) <= 2:
            raise ChatError(Code.BAD_ARGUMENT, "usage: JOIN room [key]")
        name, key = args[0], (args[1] if len(args) > 1 else None)
        if key is not None and self.server.room(name).settings.key is None:
            # A word too many is more likely a mistake than a key.
            raise ChatError(Code.BAD_ARGUMENT, f"usage: JOIN room [key]: room {name[:40]} has no key")

        def joined(room):
            self.send(b"".join(e.encoded("chat-history", encodeHistory) for e in room.history))
            topic = f"; topic: {room.topic.text}" if room.topic else ""
            self.reply(Code.JOINED, f"{room.name} joined; members {len(room.members)}{topic}")

        return self.server.join(self.session, name, key).addCallback(joined)

    def do_PART(self, command: Command) -> None:
        name, reason = command.split(1, True, "PART room [reason]")
        room = self.server.part(self.session, name, reason)
        self.reply(Code.OK, f"left {room.name}")

    def do_SAY(self, command: Command) -> None:
        name, text = command.split(1, True, "SAY room text")
        event = self.server.say(self.session, name, text)
        self.reply(Code.OK, f"said in {event.room}")

    def do_MSG(self, command: Command) -> None:
        nick, text = command.split(1, True, "MSG nick text")
        event = self.server.tell(self.session, nick, text)
        self.reply(Code.OK, f"sent to {event.target}")

    def do_LIST(self, command: Command) -> None:
        rooms = self.server.listRooms()
        lines = [
            f"{r.name} {len(r.members)} {r.topic.text if r.topic else ''}".rstrip()
            for r in rooms
        ]
        self.send(formatMultiline(Code.LIST, lines, f"{len(lines)} rooms"))

    def do_WHO(self, command: Command) -> None:
        (name,) = command.split(1, False, "WHO room")
        room = self.server.room(name)
        nicks = [self.server.prefixes(room, m) + m.nick for m in room.members.values()]
        self.send(formatMultiline(Code.WHO, nicks, f"{len(nicks)} in {room.name}"))

    def do_TOPIC(self, command: Command) -> None:
        name, text = command.split(1, True, "TOPIC room [text]")
        if not text:
            room = self.server.room(name)
            self.reply(Code.TOPIC, f"{room.name} {room.topic.text if room.topic else ''}".rstrip())
            return
        event = self.server.setTopic(self.session, name, text)
        self.reply(Code.OK, f"topic of {event.room} set")

    def do_MODE(self, command: Command) -> None:
        args = command.rest.split()
        if not args:
            raise ChatError(Code.BAD_ARGUMENT, "usage: MODE room [+|-modes [arguments]]")
        name = args[0]
        if len(args) == 1:
            room = self.server.room(name)
            member = any(m is self.session for m in room.members.values())
            self.reply(Code.MODES, f"{room.name} " + " ".join(room.settings.modeString(showKey=member)))
            return
        changes, unknown = parseModeChanges(args[1], args[2:])
        if unknown:
            raise ChatError(Code.UNKNOWN_MODE, f"unknown mode {unknown[0]!r}: the modes are {FLAG_MODES}, k, l, o, v, b")
        if any(c.letter == "b" and c.arg is None for c in changes) and len(changes) == 1:
            room = self.server.room(name)
            lines = [f"{b.mask} {b.setter} {formatTime(b.when)}" for b in room.settings.bans]
            self.send(formatMultiline(Code.BANS, lines, f"{len(lines)} bans in {room.name}"))
            return
        changes = [c for c in changes if c.arg is not None or c.letter != "b"]
        if not changes:
            raise ChatError(Code.BAD_ARGUMENT, "usage: MODE room +|-modes [arguments]: a mode needs its argument")
        event, errors = self.server.mode(self.session, name, changes)
        if event is None and errors:
            raise errors[0]
        done = f"mode of {event.room}: {event.text}" if event is not None else "no mode changed"
        refused = "".join(f"; refused: {e.message}" for e in errors)
        self.reply(Code.OK, done + refused)

    def do_KICK(self, command: Command) -> None:
        name, rest = command.split(1, True, "KICK room nick [reason]")
        nick, _, reason = rest.partition(" ")
        if not nick:
            raise ChatError(Code.BAD_ARGUMENT, "usage: KICK room nick [reason]")
        event = self.server.kick(self.session, name, nick, reason)
        self.reply(Code.OK, f"{event.target} kicked from {event.room}")

    def do_INVITE(self, command: Command) -> None:
        nick, name = command.split(2, False, "INVITE nick room")
        event = self.server.invite(self.session, nick, name)
        self.reply(Code.OK, f"{event.target} invited to {event.room}")

    def do_PING(self, command: Command) -> None:
        token = command.rest or "-"
        checkText(token, "token")
        self.reply(Code.OK, f"PONG {token}")

    def do_PONG(self, command: Command) -> None:
        """
        The answer to the server's PING: nothing to do, and no reply (the
        line itself showed the client is alive).
        """

    def do_HELP(self, command: Command) -> None:
        self.send(formatMultiline(Code.HELP, HELP, "end of HELP; docs/chat.md has the rest"))

    def do_QUIT(self, command: Command) -> None:
        self.quitReason = command.rest[:MAX_TEXT] or "quit"
        self.reply(Code.BYE, "bye")
        self.transport.loseConnection()


class ChatFactory(DoorFactory):
    """
    Course-protocol connections to a chat server (L{IChatServer}).
    """

    protocol = ChatProtocol
