"""
The IRC front door: the same rooms and nicknames for IRC clients, on
L{twisted.words.protocols.irc.IRC}.  Channel C{#room} is room C{room}.

Registration is NICK and USER (PASS first for a registered nickname); then
JOIN, PART, PRIVMSG, NOTICE, NAMES, TOPIC, LIST, WHO, WHOIS, MODE (read
only), PING, PONG, AWAY and QUIT.  Limits answer with IRC numerics.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols import irc

from chat.interfaces import IChatServer
from chat.rooms import Event, Room
from chat.session import ChatReceiver, DoorFactory, Limits
from chat.wire import MAX_NICK, MAX_ROOM, ChatError, Code, formatLine, formatTime
from coursenet.admission import Admission

#: An IRC line is at most 512 bytes, CRLF included: 510 without it,
#: whichever line ending the client uses.
MAX_IRC_LINE = 510
#: Twisted's IRC module has no name for it (modern IRC, ircdocs.horse).
ERR_INPUTTOOLONG = "417"
_BEFORE_WELCOME = {"PASS", "NICK", "USER", "PING", "PONG", "QUIT", "CAP"}

#: The IRC numeric for each refusal, unless a command says otherwise.
_NUMERIC: dict[int, str] = {
    Code.NICK_IN_USE: irc.ERR_NICKNAMEINUSE,
    Code.PASSWORD: irc.ERR_PASSWDMISMATCH,
    Code.ACCOUNTS_ONLY: irc.ERR_PASSWDMISMATCH,
    Code.NO_SUCH_NICK: irc.ERR_NOSUCHNICK,
    Code.NO_SUCH_ROOM: irc.ERR_NOSUCHCHANNEL,
    Code.NOT_IN_ROOM: irc.ERR_NOTONCHANNEL,
    Code.LIMIT: irc.ERR_TOOMANYCHANNELS,
    Code.BAD_ARGUMENT: irc.ERR_NEEDMOREPARAMS,
    Code.BAD_SEQUENCE: irc.ERR_USERONCHANNEL,
    Code.BAD_NAME: irc.ERR_NOSUCHCHANNEL,
    Code.TOO_LONG: irc.ERR_CANNOTSENDTOCHAN,
}


def _mask(nick: str | None) -> str:
    nick = nick or "*"
    return f"{nick}!{nick}@chat"


def encodeEvent(event: Event) -> bytes:
    """
    An event as IRC clients expect it.
    """
    kind, src = event.kind, _mask(event.nick)
    if kind == "MESSAGE":
        line = f":{src} PRIVMSG #{event.room} :{event.text}"
    elif kind == "PRIVATE":
        line = f":{src} PRIVMSG {event.target} :{event.text}"
    elif kind == "JOIN":
        line = f":{src} JOIN #{event.room}"
    elif kind == "PART":
        line = f":{src} PART #{event.room} :{event.text}"
    elif kind == "TOPIC":
        line = f":{src} TOPIC #{event.room} :{event.text}"
    elif kind == "NICK":
        line = f":{src} NICK {event.text}"
    else:  # QUIT
        line = f":{src} QUIT :{event.text}"
    return formatLine(line, MAX_IRC_LINE)


# CommandReceiver, first, gives lineLengthExceeded bytes; IRC's own, typed
# for str, is never called.
class IRCSession(ChatReceiver, irc.IRC):  # type: ignore[misc]
    """
    One IRC client connection.  Lines go to L{handleCommand} through the
    chat receiver, not through L{irc.IRC}'s own framing.
    """

    wire = "irc"
    maxLineLength = MAX_IRC_LINE
    _log = Logger()

    def connectionMade(self) -> None:
        # Not irc.IRC's: it would look the host name up, blocking.
        super().connectionMade()
        self.channels = []
        self.hostname = self.factory.hostname
        self._password: str | None = None
        self._user: str | None = None
        self.welcomed = False

    # -- output -------------------------------------------------------------------

    def sendLine(self, line: str) -> None:
        self.send(formatLine(line, MAX_IRC_LINE))

    def numeric(self, code: str, *params: str) -> None:
        """
        A numeric reply; the last parameter is the trailing text.
        """
        *middle, text = params
        self.sendLine(" ".join([f":{self.hostname}", code, self.session.nick or "*", *middle, ":" + text]))

    # -- IFrontDoor -----------------------------------------------------------------

    encodeEvent = staticmethod(encodeEvent)

    @staticmethod
    def busyReply(text: str) -> bytes:
        return formatLine(f"ERROR :Closing Link: {text}", MAX_IRC_LINE)

    def sendPing(self, token: str) -> None:
        self.sendLine(f"PING :{token}")

    def refuseFlood(self, text: str) -> None:
        self.sendLine(f":{self.hostname} NOTICE {self.session.nick or '*'} :{text}")

    # -- input --------------------------------------------------------------------

    def lineTooLong(self) -> None:
        self.numeric(ERR_INPUTTOOLONG, f"Input line was too long (limit {MAX_IRC_LINE + 2} bytes with CRLF)")

    def commandReceived(self, line: bytes) -> Deferred | None:
        if not line.strip():
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            # As the course door does (docs/chat.md section 2): refuse, do not relay U+FFFD.
            self.numeric("400", "*", "Line is not valid UTF-8; nothing was done")
            return None
        try:
            prefix, command, params = irc.parsemsg(text)
        except (ValueError, IndexError, irc.IRCBadMessage):
            self.numeric(irc.ERR_UNKNOWNCOMMAND, "*", "Malformed message")
            return None
        return self.handleCommand(command.upper(), prefix, params)

    def handleCommand(self, command: str, prefix: str, params: list[str]):
        method = getattr(self, "irc_" + command, None)
        if method is None:
            self.numeric(irc.ERR_UNKNOWNCOMMAND, command[:32], "Unknown command")
            return None
        if not self.welcomed and command not in _BEFORE_WELCOME:
            self.numeric(irc.ERR_NOTREGISTERED, "You have not registered: send NICK and USER")
            return None
        target = params[0] if params else "*"
        try:
            result = method(prefix, params)
        except ChatError as e:
            self.refuse(command, target, e)
            return None
        if isinstance(result, Deferred):
            result.addErrback(self._failed, command, target)
        return result

    def refuse(self, command: str, target: str, error: ChatError) -> None:
        code = _NUMERIC.get(error.code, "400")
        if command == "NICK" and error.code == Code.BAD_NAME:
            code = irc.ERR_ERRONEUSNICKNAME
        elif command in ("PRIVMSG", "NOTICE") and error.code == Code.NOT_IN_ROOM:
            code = irc.ERR_CANNOTSENDTOCHAN
        if command == "NOTICE":
            return
        self.numeric(code, target, error.message)

    def _failed(self, failure: Failure, command: str, target: str) -> None:
        if not self.session.online:
            return
        if failure.check(ChatError):
            self.refuse(command, target, failure.value)
        else:
            self._log.failure("IRC {command} failed", failure, command=command)
            self.numeric("400", command, "internal server error; the command was not completed")

    def _need(self, params: list[str], n: int, command: str) -> None:
        if len(params) < n:
            raise ChatError(Code.BAD_ARGUMENT, f"{command}: not enough parameters")

    # -- registration -----------------------------------------------------------

    def irc_CAP(self, prefix, params) -> None:
        sub = params[0].upper() if params else ""
        if sub == "LS":
            self.sendLine(f":{self.hostname} CAP * LS :")
        elif sub == "REQ":
            self.sendLine(f":{self.hostname} CAP * NAK :{params[-1] if len(params) > 1 else ''}")

    def irc_PASS(self, prefix, params) -> None:
        if self.welcomed:
            self.numeric(irc.ERR_ALREADYREGISTRED, "You may not reregister")
            return
        self._need(params, 1, "PASS")
        self._password = params[-1]

    def irc_NICK(self, prefix, params) -> Deferred | None:
        if not params or not params[0]:
            self.numeric(irc.ERR_NONICKNAMEGIVEN, "No nickname given")
            return None
        old = self.session.nick

        def done(_):
            if self.welcomed and old != self.session.nick:
                self.sendLine(f":{_mask(old)} NICK {self.session.nick}")
            self._maybeWelcome()

        return self.server.register(self.session, params[0], self._password).addCallback(done)

    def irc_USER(self, prefix, params) -> None:
        if self.welcomed:
            self.numeric(irc.ERR_ALREADYREGISTRED, "You may not reregister")
            return
        self._need(params, 4, "USER")
        self._user = params[0]
        self._maybeWelcome()

    def _maybeWelcome(self) -> None:
        if self.welcomed or self.session.nick is None or self._user is None:
            return
        self.welcomed = True
        self._password = None
        nick, host = self.session.nick, self.hostname
        self.numeric(irc.RPL_WELCOME, f"Welcome to the coursenet chat, {nick}")
        self.numeric(irc.RPL_YOURHOST, f"Your host is {host}, running coursenet chat")
        self.numeric(irc.RPL_CREATED, "This server speaks the course chat protocol too (docs/chat.md)")
        self.sendLine(f":{host} {irc.RPL_MYINFO} {nick} {host} coursenet-chat i t")
        self.sendLine(
            f":{host} {irc.RPL_ISUPPORT} {nick} CHANTYPES=# NICKLEN={MAX_NICK}"
            f" CHANNELLEN={MAX_ROOM + 1} CASEMAPPING=ascii NETWORK=coursenet"
            " :are supported by this server"
        )
        self.numeric(irc.ERR_NOMOTD, "MOTD File is missing")

    def irc_QUIT(self, prefix, params) -> None:
        self.quitReason = (params[0] if params else "") or "quit"
        self.sendLine(f"ERROR :Closing Link: {self.session.nick or '*'} (Quit: {self.quitReason})")
        self.transport.loseConnection()

    def irc_PING(self, prefix, params) -> None:
        token = params[-1] if params else self.hostname
        self.sendLine(f":{self.hostname} PONG {self.hostname} :{token}")

    def irc_PONG(self, prefix, params) -> None:
        """
        The answer to our PING; the line itself showed the client is alive.
        """

    # -- rooms ----------------------------------------------------------------------

    def irc_JOIN(self, prefix, params) -> Deferred | None:
        self._need(params, 1, "JOIN")
        if params[0] == "0":
            for room in self.server.roomsOf(self.session):
                self._part(room.name, "")
            return None
        return Deferred.fromCoroutine(self._joinAll(params[0].split(",")))

    async def _joinAll(self, names: list[str]) -> None:
        for name in names:
            try:
                room = await self.server.join(self.session, name)
            except ChatError as e:
                if e.code != Code.BAD_SEQUENCE:  # already there: IRC says nothing
                    self.refuse("JOIN", name, e)
                continue
            self._joined(room)

    def _joined(self, room: Room) -> None:
        channel = "#" + room.name
        self.sendLine(f":{_mask(self.session.nick)} JOIN {channel}")
        if room.topic:
            self.topic(self.session.nick, channel, room.topic.text)
        self.names(self.session.nick, channel, [m.nick for m in room.members.values()])
        for event in room.history:
            self.sendLine(
                f":{self.hostname} NOTICE {channel} :[{formatTime(event.when)}] <{event.nick}> {event.text}"
            )

    def irc_PART(self, prefix, params) -> None:
        self._need(params, 1, "PART")
        reason = params[1] if len(params) > 1 else ""
        for name in params[0].split(","):
            try:
                self._part(name, reason)
            except ChatError as e:
                self.refuse("PART", name, e)

    def _part(self, name: str, reason: str) -> None:
        room = self.server.part(self.session, name, reason)
        self.part(_mask(self.session.nick), "#" + room.name, reason or None)

    def irc_PRIVMSG(self, prefix, params) -> None:
        if not params:
            self.numeric(irc.ERR_NORECIPIENT, "No recipient given (PRIVMSG)")
            return
        if len(params) < 2 or not params[1]:
            self.numeric(irc.ERR_NOTEXTTOSEND, "No text to send")
            return
        target, text = params[0], params[1]
        if target.startswith("#"):
            self.server.say(self.session, target, text)
        else:
            self.server.tell(self.session, target, text)

    irc_NOTICE = irc_PRIVMSG

    def irc_NAMES(self, prefix, params) -> None:
        if not params:
            self.numeric(irc.RPL_ENDOFNAMES, "*", "End of /NAMES list")
            return
        for name in params[0].split(","):
            try:
                room = self.server.room(name)
            except ChatError:
                self.numeric(irc.RPL_ENDOFNAMES, name, "End of /NAMES list")
                continue
            self.names(self.session.nick, "#" + room.name, [m.nick for m in room.members.values()])

    def irc_TOPIC(self, prefix, params) -> None:
        self._need(params, 1, "TOPIC")
        if len(params) == 1:
            room = self.server.room(params[0])
            self.topic(self.session.nick, "#" + room.name, room.topic.text if room.topic else None)
            return
        event = self.server.setTopic(self.session, params[0], params[1])
        self.session.deliver(event)

    def irc_LIST(self, prefix, params) -> None:
        self.numeric(irc.RPL_LISTSTART, "Channel", "Users  Name")
        for room in self.server.listRooms():
            topic = room.topic.text if room.topic else ""
            self.numeric(irc.RPL_LIST, "#" + room.name, str(len(room.members)), topic)
        self.numeric(irc.RPL_LISTEND, "End of /LIST")

    def irc_WHO(self, prefix, params) -> None:
        mask = params[0] if params else "*"
        members: list = []
        if mask.startswith("#"):
            try:
                members = list(self.server.room(mask).members.values())
            except ChatError:
                pass
        else:
            try:
                members = [self.server.find(mask)]
            except ChatError:
                pass
        self.who(
            self.session.nick,
            mask,
            [(m.nick, "chat", self.hostname, m.nick, "H", 0, m.nick) for m in members],
        )

    def irc_WHOIS(self, prefix, params) -> None:
        self._need(params, 1, "WHOIS")
        who = self.server.find(params[-1])
        self.numeric(irc.RPL_WHOISUSER, who.nick, who.nick, "chat", "*", who.nick)
        rooms = " ".join("#" + r.name for r in self.server.roomsOf(who))
        if rooms:
            self.numeric(irc.RPL_WHOISCHANNELS, who.nick, rooms)
        self.numeric(irc.RPL_ENDOFWHOIS, who.nick, "End of /WHOIS list")

    def irc_MODE(self, prefix, params) -> None:
        self._need(params, 1, "MODE")
        if params[0].startswith("#"):
            room = self.server.room(params[0])
            if len(params) == 1:
                self.sendLine(f":{self.hostname} {irc.RPL_CHANNELMODEIS} {self.session.nick} #{room.name} +t")
            elif params[1].lstrip("+") == "b":
                self.numeric(irc.RPL_ENDOFBANLIST, "#" + room.name, "End of channel ban list")
            else:
                self.numeric(irc.ERR_CHANOPRIVSNEEDED, "#" + room.name, "Channel modes cannot be changed here")
        else:
            self.sendLine(f":{self.hostname} {irc.RPL_UMODEIS} {self.session.nick} +")

    def irc_AWAY(self, prefix, params) -> None:
        self.numeric(irc.RPL_UNAWAY, "Away status is not kept here")


class IRCFactory(DoorFactory):
    """
    IRC connections to a chat server (L{chat.interfaces.IChatServer}).
    """

    protocol = IRCSession

    def __init__(
        self,
        server: IChatServer,
        limits: Limits = Limits(),
        hostname: str = "coursenet.chat",
        reactor=None,
        admission: Admission | None = None,
    ) -> None:
        super().__init__(server, limits, reactor, admission)
        self.hostname = hostname
