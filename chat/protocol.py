"""
The course chat server: one L{ChatProtocol} per connection, on a line
receiver; the rooms live in a shared L{chat.rooms.ChatServer}.

Each command is a C{do_VERB} method.  One that finishes later (NICK with a
password, JOIN of a room still loading) returns a L{Deferred}; until it
fires the protocol reads nothing more, so replies come in command order.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from chat.rooms import ChatServer, Event
from chat.session import Limits, Session
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
    "PING [token] / PONG token / QUIT [reason] / HELP",
]


def encodeEvent(event: Event) -> bytes:
    """
    An event as the course protocol sends it (docs/chat.md, section 5).
    """
    kind = event.kind
    if kind == "MESSAGE":
        line = f"MESSAGE {event.room} {event.nick} {event.text}"
    elif kind == "PRIVATE":
        line = f"PRIVATE {event.nick} {event.text}"
    elif kind == "JOIN":
        line = f"JOIN {event.room} {event.nick}"
    elif kind in ("PART", "TOPIC"):
        line = f"{kind} {event.room} {event.nick} {event.text}"
    else:  # QUIT, NICK
        line = f"{kind} {event.nick} {event.text}"
    return formatLine(line)


def encodeHistory(event: Event) -> bytes:
    return formatLine(
        f"HISTORY {event.room} {formatTime(event.when)} {event.nick} {event.text}"
    )


class ChatProtocol(LineReceiver, Session):
    """
    One course-protocol connection.
    """

    # Lines end with CRLF; a bare LF is accepted too, for netcat and telnet.
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE + 1
    wire = "chat"
    _log = Logger()
    _discarding = False
    _quitReason = "connection lost"

    def connectionMade(self) -> None:
        factory = self.factory
        if self.startSession(factory.server, factory.limits, factory.reactor):
            self.write(
                formatReply(
                    Code.READY,
                    f"{VERSION} coursenet chat ready; max-line={MAX_LINE}"
                    f" max-text={MAX_TEXT}; choose a nickname with NICK",
                )
            )

    def connectionLost(self, reason: Failure = None) -> None:
        self.endSession(self._quitReason)

    def reply(self, code: int, text: str) -> None:
        self.write(formatReply(code, text))

    # Session's wire-specific parts.

    encodeEvent = staticmethod(encodeEvent)

    def sendPing(self, token: str) -> None:
        self.write(formatLine(f"PING {token}"))

    def sendClosing(self, text: str) -> None:
        self.transport.write(formatReply(Code.CLOSING, text))

    def refuseFlood(self, text: str) -> None:
        self.reply(Code.FLOOD, text)

    # -- input ------------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self._discarding:
            self.reply(Code.SYNTAX, f"line too long: the limit is {MAX_LINE} bytes; line ignored")
        end = line.find(b"\n")
        if end == -1:
            # The rest of that line is still to come: drop it when it ends.
            self._discarding = True
            return
        self._discarding = False
        # LineReceiver ignores a nested dataReceived: go on with the lines
        # after this one on the next turn.
        self._buffer = line[end + 1 :]
        self.factory.reactor.callLater(0, self.dataReceived, b"")

    def lineReceived(self, line: bytes) -> None:
        if self._discarding:
            self._discarding = False
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if not self.connected:
            return
        try:
            command = parseCommand(line)
        except ChatError as e:
            if self.lineArrived():
                self.reply(e.code, e.message)
            return
        if not self.lineArrived(counted=command.verb != "PONG"):
            return
        d = maybeDeferred(self._dispatch, command)
        if d.called:
            d.addErrback(self._failed)
            return
        self.pauseProducing()
        d.addErrback(self._failed)
        d.addBoth(lambda _: self.resumeProducing() if self.connected else None)

    def _failed(self, failure: Failure) -> None:
        if not self.connected:
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
        if self.nick is None and command.verb not in _BEFORE_NICK:
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

        return self.server.register(self, nick, password).addCallback(done)

    def do_JOIN(self, command: Command) -> Deferred:
        (name,) = command.split(1, False, "JOIN room")

        def joined(room):
            self.write(b"".join(e.encoded("chat-history", encodeHistory) for e in room.history))
            topic = f"; topic: {room.topic.text}" if room.topic else ""
            self.reply(Code.JOINED, f"{room.name} joined; members {len(room.members)}{topic}")

        return self.server.join(self, name).addCallback(joined)

    def do_PART(self, command: Command) -> None:
        name, reason = command.split(1, True, "PART room [reason]")
        room = self.server.part(self, name, reason)
        self.reply(Code.OK, f"left {room.name}")

    def do_SAY(self, command: Command) -> None:
        name, text = command.split(1, True, "SAY room text")
        event = self.server.say(self, name, text)
        self.reply(Code.OK, f"said in {event.room}")

    def do_MSG(self, command: Command) -> None:
        nick, text = command.split(1, True, "MSG nick text")
        event = self.server.tell(self, nick, text)
        self.reply(Code.OK, f"sent to {event.target}")

    def do_LIST(self, command: Command) -> None:
        rooms = self.server.listRooms()
        lines = [
            f"{r.name} {len(r.members)} {r.topic.text if r.topic else ''}".rstrip()
            for r in rooms
        ]
        self.write(formatMultiline(Code.LIST, lines, f"{len(lines)} rooms"))

    def do_WHO(self, command: Command) -> None:
        (name,) = command.split(1, False, "WHO room")
        room = self.server.room(name)
        nicks = [m.nick for m in room.members.values()]
        self.write(formatMultiline(Code.WHO, nicks, f"{len(nicks)} in {room.name}"))

    def do_TOPIC(self, command: Command) -> None:
        name, text = command.split(1, True, "TOPIC room [text]")
        if not text:
            room = self.server.room(name)
            self.reply(Code.TOPIC, f"{room.name} {room.topic.text if room.topic else ''}".rstrip())
            return
        event = self.server.setTopic(self, name, text)
        self.reply(Code.OK, f"topic of {event.room} set")

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
        self.write(formatMultiline(Code.HELP, HELP, "end of HELP; docs/chat.md has the rest"))

    def do_QUIT(self, command: Command) -> None:
        self._quitReason = command.rest[:MAX_TEXT] or "quit"
        self.reply(Code.BYE, "bye")
        self.hangUp()


class ChatFactory(Factory):
    """
    Course-protocol connections to a L{ChatServer}.
    """

    protocol = ChatProtocol

    def __init__(self, server: ChatServer, limits: Limits = Limits(), reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.server = server
        self.limits = limits
