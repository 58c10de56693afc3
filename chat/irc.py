"""
The IRC front door: the same rooms and nicknames for IRC clients, as the
modern IRC client protocol (modern.ircdocs.horse, RFC 2812) describes it,
with ngIRCd's and Ergo's behaviour where they differ.  Channel C{#room}
is room C{room}; moderation (operators, voice, KICK, INVITE, bans, modes)
is the rooms' own (L{chat.moderation}), shared with the course door.

Parsing and formatting are L{chat.ircwire}'s; this module is the
commands.  docs/chat.md section 10 lists them, the capabilities and the
numerics.
"""

from __future__ import annotations

import base64
import binascii
import re
import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols import irc

from chat.interfaces import IChatServer
from chat.ircwire import (
    MAX_CLIENT_TAGS,
    MAX_IRC_LINE,
    MAX_TAGGED_LINE,
    BadMessage,
    Message,
    formatMessage,
    parseMessage,
    serverTime,
    splitList,
    splitTags,
)
from chat.moderation import CHANMODES, FLAG_MODES, MAX_BANS, PREFIX, Change, maskMatches, parseModeChanges
from chat.rooms import ChatServer, Event, Room, hostmask
from chat.session import ChatReceiver, DoorFactory, Limits
from chat.wire import MAX_NICK, MAX_ROOM, MAX_TOPIC, ChatError, Code, foldNick
from coursenet.admission import Admission

__all__ = ["IRCSession", "IRCFactory", "MAX_IRC_LINE"]

#: Twisted's IRC module has no name for these (modern IRC, ircdocs.horse).
ERR_INPUTTOOLONG = "417"
ERR_INVALIDCAPCMD = "410"
ERR_INVALIDMODEPARAM = "696"
ERR_BANLISTFULL = "478"
RPL_CREATIONTIME = "329"
RPL_TOPICWHOTIME = "333"
RPL_WHOISACCOUNT = "330"
RPL_LOCALUSERS = "265"
RPL_GLOBALUSERS = "266"
RPL_LOGGEDIN = "900"
RPL_SASLSUCCESS = "903"
ERR_SASLFAIL = "904"
ERR_SASLTOOLONG = "905"
ERR_SASLABORTED = "906"
RPL_SASLMECHS = "908"

_BEFORE_WELCOME = {"CAP", "AUTHENTICATE", "PASS", "NICK", "USER", "PING", "PONG", "QUIT"}
#: The capabilities offered (IRCv3), in CAP LS order.
CAPABILITIES = [
    "account-tag", "away-notify", "echo-message", "message-tags", "multi-prefix", "sasl", "server-time",
    "userhost-in-names",
]
_USERNAME = re.compile(r"[^A-Za-z0-9_.\-]")
USERLEN = 10
AWAYLEN = 300
KICKLEN = 300
_LONE_CR = re.compile(rb"\r(?!\n)")

#: The IRC numeric for each refusal, unless a command says otherwise.
_NUMERIC: dict[int, str] = {
    Code.NICK_IN_USE: irc.ERR_NICKNAMEINUSE,
    Code.PASSWORD: irc.ERR_PASSWDMISMATCH,
    Code.ACCOUNTS_ONLY: irc.ERR_PASSWDMISMATCH,
    Code.NO_SUCH_NICK: irc.ERR_NOSUCHNICK,
    Code.NO_SUCH_ROOM: irc.ERR_NOSUCHCHANNEL,
    Code.NOT_IN_ROOM: irc.ERR_NOTONCHANNEL,
    Code.LIMIT: irc.ERR_TOOMANYCHANNELS,
    Code.BAD_SEQUENCE: irc.ERR_USERONCHANNEL,
    Code.BAD_NAME: irc.ERR_NOSUCHCHANNEL,
    Code.TOO_LONG: ERR_INPUTTOOLONG,
    Code.NOT_OPERATOR: irc.ERR_CHANOPRIVSNEEDED,
    Code.BANNED: irc.ERR_BANNEDFROMCHAN,
    Code.INVITE_ONLY: irc.ERR_INVITEONLYCHAN,
    Code.BAD_KEY: irc.ERR_BADCHANNELKEY,
    Code.ROOM_FULL: irc.ERR_CHANNELISFULL,
    Code.CANNOT_SEND: irc.ERR_CANNOTSENDTOCHAN,
    Code.UNKNOWN_MODE: irc.ERR_UNKNOWNMODE,
    Code.THEY_NOT_IN_ROOM: irc.ERR_USERNOTINCHANNEL,
    Code.THEY_IN_ROOM: irc.ERR_USERONCHANNEL,
    Code.BAD_MODE_ARGUMENT: ERR_INVALIDMODEPARAM,
}


#: The capabilities that change how an event is written (IRCSession.wire).
_WIRE_CAPS = frozenset({"server-time", "account-tag", "away-notify", "message-tags"})

#: Commands whose last parameter is not free text.
_NO_TEXT = {"JOIN", "NICK", "MODE", "INVITE", "TAGMSG", "AUTHENTICATE"}


def _source(event: Event) -> str:
    return event.source or f"{event.nick}!{event.nick}@chat"


def encodeEvent(event: Event, caps: frozenset[str] = frozenset()) -> bytes:
    """
    An event as an IRC client with capabilities C{caps} expects it.
    """
    kind, src = event.kind, _source(event)
    params: tuple[str, ...]
    if event.tagOnly:
        if "message-tags" not in caps:
            return b""
        command, params = "TAGMSG", (("#" + event.room) if kind == "MESSAGE" else event.target,)
    elif kind == "MESSAGE":
        command, params = ("NOTICE" if event.notice else "PRIVMSG"), ("#" + event.room, event.text)
    elif kind == "PRIVATE":
        command, params = ("NOTICE" if event.notice else "PRIVMSG"), (event.target, event.text)
    elif kind == "JOIN":
        command, params = "JOIN", ("#" + event.room,)
    elif kind == "PART":
        command, params = "PART", (("#" + event.room, event.text) if event.text else ("#" + event.room,))
    elif kind == "TOPIC":
        command, params = "TOPIC", ("#" + event.room, event.text)
    elif kind == "NICK":
        command, params = "NICK", (event.text,)
    elif kind == "MODE":
        command, params = "MODE", ("#" + event.room, *event.text.split(" "))
    elif kind == "KICK":
        command, params = "KICK", ("#" + event.room, event.target, event.text)
    elif kind == "INVITE":
        command, params = "INVITE", (event.target, "#" + event.room)
    elif kind == "AWAY":
        if "away-notify" not in caps:
            return b""
        command, params = "AWAY", ((event.text,) if event.text else ())
    else:  # QUIT
        command, params = "QUIT", (event.text,)
    tags = {}
    if "server-time" in caps:
        tags["time"] = serverTime(event.when)
    if "account-tag" in caps and event.account:
        tags["account"] = event.account
    if "message-tags" in caps and event.msgid:
        tags["msgid"] = event.msgid
        tags.update(event.tags)
    return formatMessage(command, *params, source=src, tags=tags, trailing=command not in _NO_TEXT)


#: HELP's text: one line per command (modern IRC's HELP, numerics 704-706).
HELP = {
    "AWAY": "AWAY [:message]  mark yourself away (no message: back)",
    "CAP": "CAP LS [302] | REQ :caps | LIST | END  negotiate capabilities",
    "INVITE": "INVITE nick #channel  invite someone (operators only in +i channels)",
    "ISON": "ISON nick...  which of these nicks are online",
    "JOIN": "JOIN #channel[,#channel] [key[,key]]  enter channels; JOIN 0 leaves them all",
    "KICK": "KICK #channel nick [:reason]  (operators) put someone out of a channel",
    "LIST": "LIST [#channel,...]  channels, member counts, topics",
    "LUSERS": "LUSERS  how many users and channels",
    "MODE": "MODE #channel [+|-imnstklovb [args]] | MODE nick [+|-i]  show or change modes",
    "MOTD": "MOTD  the message of the day",
    "NAMES": "NAMES #channel  who is in a channel",
    "NICK": "NICK name  choose or change your nickname",
    "NOTICE": "NOTICE target :text  like PRIVMSG, but never answered automatically",
    "OPER": "OPER account password  an instructor's account: operator of every channel",
    "PART": "PART #channel [:reason]  leave a channel",
    "PRIVMSG": "PRIVMSG #channel|nick :text  say something to a channel or a nick",
    "QUIT": "QUIT [:reason]  leave the server",
    "TIME": "TIME  the server's time",
    "TOPIC": "TOPIC #channel [:text]  show or set a channel's topic",
    "USERHOST": "USERHOST nick...  nick=+user@host of each (- when away)",
    "WHO": "WHO #channel|mask  who is there",
    "WHOIS": "WHOIS [server] nick  about someone",
    "WHOWAS": "WHOWAS nick [count]  who had a nickname",
}


#: The tags of a line that has none (never changed: a line's tags replace it).
_NO_TAGS: dict[str, str] = {}
#: No capabilities, no user modes: one object for every connection.
_NO_MODES: frozenset[str] = frozenset()


class IRCSession(ChatReceiver):
    """
    One IRC client connection.
    """

    __slots__ = (
        "hostname", "_caps", "umodes", "welcomed", "lastActive", "signedOn", "_password",
        "_negotiating", "_sasl", "_saslBuffer", "_crEnded", "_tags", "wire",
    )

    maxLineLength = MAX_TAGGED_LINE
    _log = Logger()
    # The IRC door runs in the process that holds the rooms (the twins
    # serve the course protocol only), so it may ask them more.
    server: ChatServer  # type: ignore[assignment]

    def connectionMade(self) -> None:
        super().connectionMade()
        self.hostname: str = self.factory.hostname
        self.caps = _NO_MODES
        self.umodes: frozenset[str] = _NO_MODES
        self.welcomed = False
        self.lastActive = self.factory.reactor.seconds()
        self.signedOn = self.lastActive
        self._password: str | None = None
        self._negotiating = False
        self._sasl: str | None = None
        self._saslBuffer = ""
        self._crEnded = False
        self._tags: dict[str, str] = _NO_TAGS
        self.factory.pending.add(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.pending.discard(self)
        self.factory.invisible.discard(self)
        super().connectionLost(reason)

    # -- output -------------------------------------------------------------------

    @property
    def caps(self) -> frozenset[str]:
        return self._caps

    @caps.setter
    def caps(self, caps: frozenset[str]) -> None:
        # The wire key is read once per event delivered: kept, not computed
        # each time (py-spy showed it at 8% of a 1000-member fan-out).
        # A room holding this connection's output for the turn encodes its
        # events with the capabilities as they were: written out first.
        session = getattr(self, "session", None)
        if session is not None and session.turnQueue is not None:
            session.turnQueue.release()
        self._caps = caps
        self.wire = "irc:" + ",".join(sorted(caps & _WIRE_CAPS))

    def encodeEvent(self, event: Event) -> bytes:
        return encodeEvent(event, self.caps)

    @property
    def me(self) -> str:
        return self.session.nick or "*"

    def mask(self) -> str:
        return hostmask(self.session)

    def sendMessage(self, command: str, *params: str, source: str | None = None) -> None:
        self.send(formatMessage(command, *params, source=self.hostname if source is None else source,
                                trailing=command not in _NO_TEXT))

    def numeric(self, code: str, *params: str) -> None:
        """
        A numeric reply to this client; the last parameter is the trailing text.
        """
        *middle, text = params
        self.send(formatMessage(code, self.me, *middle, text, source=self.hostname, trailing=True))

    @staticmethod
    def busyReply(text: str) -> bytes:
        return formatMessage("ERROR", f"Closing Link: {text}", trailing=True)

    def sendPing(self, token: str) -> None:
        self.sendMessage("PING", token)

    # -- input --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # A line may end with CR alone (modern IRC): make it an LF, and
        # drop the LF of a CRLF split between two reads.
        if self._crEnded and data.startswith(b"\n"):
            data = data[1:]
        self._crEnded = data.endswith(b"\r")
        if b"\r" in data:
            data = _LONE_CR.sub(b"\n", data)
        super().dataReceived(data)

    def lineTooLong(self) -> None:
        self.numeric(ERR_INPUTTOOLONG, f"Input line was too long (limit {MAX_IRC_LINE + 2} bytes with CRLF)")

    def commandReceived(self, line: bytes) -> Deferred | None:
        tags, rest = splitTags(line)
        if len(tags) > MAX_CLIENT_TAGS or len(rest) > MAX_IRC_LINE:
            self.lineTooLong()
            return None
        if not rest.strip(b" "):
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            # As the course door does (docs/chat.md section 2): refuse, do
            # not relay U+FFFD.  IRCv3's UTF8ONLY says it with FAIL.
            command = rest.split(b" ", 1)[0].decode("latin-1").upper()[:32] or "*"
            self.sendMessage("FAIL", command, "INVALID_UTF8", "Line is not valid UTF-8; nothing was done")
            return None
        if "\x00" in text:
            self.sendMessage("FAIL", "*", "INVALID_TEXT", "NUL in line; nothing was done")
            return None
        try:
            message = parseMessage(text)
        except BadMessage:
            return None
        self.lastActive = self.factory.reactor.seconds()
        return self.handleMessage(message)

    def handleMessage(self, message: Message):
        command, params = message.command, message.params
        self._tags = message.tags
        method = getattr(self, "irc_" + command, None)
        if method is None:
            self.numeric(irc.ERR_UNKNOWNCOMMAND, command[:32], "Unknown command")
            return None
        if not self.welcomed and command not in _BEFORE_WELCOME:
            self.numeric(irc.ERR_NOTREGISTERED, "You have not registered: send NICK and USER")
            return None
        target = params[0] if params else "*"
        try:
            result = method(params)
        except ChatError as e:
            self.refuse(command, target, e)
            return None
        if isinstance(result, Deferred):
            result.addErrback(self._failed, command, target)
        return result

    def refuse(self, command: str, target: str, error: ChatError) -> None:
        if command == "NOTICE":
            return  # RFC 2812 3.3.2: never an automatic reply to a NOTICE
        code = _NUMERIC.get(error.code)
        params = list(error.params) or [target]
        if command == "NICK" and error.code == Code.BAD_NAME:
            code = irc.ERR_ERRONEUSNICKNAME
        elif command in ("PRIVMSG", "TAGMSG") and error.code == Code.NOT_IN_ROOM:
            code = irc.ERR_CANNOTSENDTOCHAN
        elif command == "JOIN" and error.code == Code.BAD_NAME:
            code = irc.ERR_NOSUCHCHANNEL
        elif command in ("PRIVMSG", "TAGMSG") and error.code == Code.BAD_ARGUMENT:
            code = "400"
            params = [command]
        elif code == irc.ERR_TOOMANYCHANNELS and command != "JOIN":
            code, params = "400", [command]
        if code is None:
            code, params = "400", [command]
        self.numeric(code, *params, error.message)

    def _failed(self, failure: Failure, command: str, target: str) -> None:
        if not self.session.online:
            return
        if failure.check(ChatError):
            self.refuse(command, target, failure.value)
        else:
            self._log.failure("IRC {command} failed", failure, command=command)
            self.numeric("400", command, "internal server error; the command was not completed")

    def _need(self, params: list[str], n: int, command: str) -> bool:
        if len(params) < n:
            self.numeric(irc.ERR_NEEDMOREPARAMS, command, "Not enough parameters")
            return False
        return True

    # -- registration -----------------------------------------------------------

    def irc_CAP(self, params) -> None:
        sub = params[0].upper() if params else ""
        if sub == "LS":
            if not self.welcomed:
                self._negotiating = True
            offered = " ".join("sasl=PLAIN" if c == "sasl" and params[1:2] == ["302"] else c
                               for c in self._offered())
            self.sendMessage("CAP", self.me, "LS", offered)
        elif sub == "LIST":
            self.sendMessage("CAP", self.me, "LIST", " ".join(sorted(self.caps)))
        elif sub == "REQ":
            if not self.welcomed:
                self._negotiating = True
            wanted = params[1] if len(params) > 1 else ""
            caps = set(self.caps)
            ok = bool(wanted.split())
            for name in wanted.split():
                remove = name.startswith("-")
                bare = name.lstrip("-")
                if bare not in self._offered():
                    ok = False
                    break
                (caps.discard if remove else caps.add)(bare)
            if ok:
                self.caps = frozenset(caps)
            self.sendMessage("CAP", self.me, "ACK" if ok else "NAK", wanted)
        elif sub == "END":
            if not self.welcomed:
                self._negotiating = False
                self._maybeWelcome()
        else:
            self.numeric(ERR_INVALIDCAPCMD, sub or "*", "Invalid CAP command")

    def _offered(self) -> list[str]:
        if self.server.checker is None:
            return [c for c in CAPABILITIES if c != "sasl"]
        return CAPABILITIES

    def irc_AUTHENTICATE(self, params) -> Deferred | None:
        if "sasl" not in self.caps:
            self.numeric(ERR_SASLFAIL, "SASL was not negotiated: CAP REQ :sasl first")
            return None
        if self.welcomed or self.session.account:
            self.numeric("907", "You have already authenticated")
            return None
        if not params:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "AUTHENTICATE", "Not enough parameters")
            return None
        arg = params[0]
        if arg == "*":
            self._sasl, self._saslBuffer = None, ""
            self.numeric(ERR_SASLABORTED, "SASL authentication aborted")
            return None
        if self._sasl is None:
            if arg.upper() != "PLAIN":
                self.numeric(RPL_SASLMECHS, "PLAIN", "are available SASL mechanisms")
                self.numeric(ERR_SASLFAIL, "SASL authentication failed: only PLAIN is offered")
                return None
            self._sasl = "PLAIN"
            self.sendMessage("AUTHENTICATE", "+", source="")
            return None
        if len(arg) > 400 or len(self._saslBuffer) > 800:
            self._sasl, self._saslBuffer = None, ""
            self.numeric(ERR_SASLTOOLONG, "SASL message too long")
            return None
        if arg != "+":
            self._saslBuffer += arg
        if len(arg) == 400:
            return None  # more to come
        data, self._sasl, self._saslBuffer = self._saslBuffer, None, ""
        try:
            _, account, password = base64.b64decode(data, validate=True).decode("utf-8").split("\x00")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self.numeric(ERR_SASLFAIL, "SASL authentication failed: malformed PLAIN response")
            return None

        def done(name: str) -> None:
            self.session.account = name
            self.numeric(RPL_LOGGEDIN, f"{self.me}!{self.session.user or '*'}@{self.session.host}", name,
                         f"You are now logged in as {name}")
            self.numeric(RPL_SASLSUCCESS, "SASL authentication successful")

        def failed(failure: Failure) -> None:
            failure.trap(ChatError)
            self.numeric(ERR_SASLFAIL, "SASL authentication failed: " + failure.value.message)

        return self.server.checkPassword(self.session, account, password).addCallbacks(done, failed)

    def irc_PASS(self, params) -> None:
        if self.welcomed:
            self.numeric(irc.ERR_ALREADYREGISTRED, "You may not reregister")
            return
        if self._need(params, 1, "PASS"):
            self._password = params[-1]

    def irc_NICK(self, params) -> Deferred | None:
        if not params or not params[0]:
            self.numeric(irc.ERR_NONICKNAMEGIVEN, "No nickname given")
            return None
        old, oldMask = self.session.nick, self.mask()

        def done(_):
            if self.welcomed and old != self.session.nick:
                self.sendMessage("NICK", self.session.nick or "", source=oldMask)
            self._maybeWelcome()

        def refused(failure: Failure):
            failure.trap(ChatError)
            error = failure.value
            if error.code == Code.BAD_NAME:
                self.numeric(irc.ERR_ERRONEUSNICKNAME, params[0][:32], error.message)
            elif error.code == Code.NICK_IN_USE:
                self.numeric(irc.ERR_NICKNAMEINUSE, params[0][:32], error.message)
            else:
                self.refuse("NICK", params[0][:32], error)

        return self.server.register(self.session, params[0], self._password).addCallbacks(done, refused)

    def irc_USER(self, params) -> None:
        if self.welcomed or self.session.user is not None:
            self.numeric(irc.ERR_ALREADYREGISTRED, "You may not reregister")
            return
        if len(params) < 4 or not params[0] or not params[3]:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "USER", "Not enough parameters")
            return
        user = _USERNAME.sub("", params[0])[:USERLEN] or "user"
        self.session.user = "~" + user
        self.session.realname = params[3][:200]
        self._maybeWelcome()

    def _maybeWelcome(self) -> None:
        if self.welcomed or self.session.nick is None or self.session.user is None or self._negotiating:
            return
        self.welcomed = True
        self.factory.pending.discard(self)
        self._password = None
        nick, host = self.session.nick, self.hostname
        self.signedOn = self.factory.reactor.seconds()
        self.numeric(irc.RPL_WELCOME, f"Welcome to the coursenet chat, {self.mask()}")
        self.numeric(irc.RPL_YOURHOST, f"Your host is {host}, running coursenet-chat")
        self.numeric(irc.RPL_CREATED, "This server speaks the course chat protocol too (docs/chat.md)")
        self.numeric(irc.RPL_MYINFO, host, "coursenet-chat", "i", FLAG_MODES + "bklov", "bklov")
        tokens = [
            f"AWAYLEN={AWAYLEN}", "CASEMAPPING=ascii", f"CHANLIMIT=#:{self.server.maxRoomsPerUser}",
            f"CHANMODES={CHANMODES}", f"CHANNELLEN={MAX_ROOM + 1}", "CHANTYPES=#",
            f"KICKLEN={KICKLEN}", f"MAXLIST=b:{MAX_BANS}", "MODES=4", "NETWORK=coursenet",
            f"NICKLEN={MAX_NICK}", f"PREFIX={PREFIX}", f"TOPICLEN={MAX_TOPIC}", "UTF8ONLY", f"USERLEN={USERLEN}",
        ]
        for start in range(0, len(tokens), 12):
            self.numeric(irc.RPL_ISUPPORT, *tokens[start : start + 12], "are supported by this server")
        self.factory.noteUsers()
        self.irc_LUSERS([])
        self.irc_MOTD([])

    def irc_QUIT(self, params) -> None:
        self.quitReason = (params[0] if params else "") or "quit"
        self.sendMessage("ERROR", f"Closing Link: {self.session.host} (Quit: {self.quitReason})", source="")
        self.transport.loseConnection()

    def irc_PING(self, params) -> None:
        if not params or not params[0]:
            self.numeric(irc.ERR_NOORIGIN, "No origin specified")
            return
        self.sendMessage("PONG", self.hostname, params[-1])

    def irc_PONG(self, params) -> None:
        """
        The answer to our PING; the line itself showed the client is alive.
        """

    # -- rooms ----------------------------------------------------------------------

    def irc_JOIN(self, params) -> Deferred | None:
        if not self._need(params, 1, "JOIN"):
            return None
        if params[0] == "0":
            for room in self.server.roomsOf(self.session):
                self._part(room.name, "")
            return None
        keys = params[1].split(",") if len(params) > 1 else []
        names = params[0].split(",")
        pairs = [(name, keys[i] if i < len(keys) else None) for i, name in enumerate(names) if name]
        return Deferred.fromCoroutine(self._joinAll(pairs))

    async def _joinAll(self, pairs: list[tuple[str, str | None]]) -> None:
        for name, key in pairs:
            if not name.startswith("#"):
                self.numeric(irc.ERR_NOSUCHCHANNEL, name[:40], "No such channel: channel names start with #")
                continue
            try:
                room = await self.server.join(self.session, name, key)
            except ChatError as e:
                if e.code != Code.BAD_SEQUENCE:  # already there: IRC says nothing
                    self.refuse("JOIN", name, e)
                continue
            self._joined(room)

    def _joined(self, room: Room) -> None:
        channel = "#" + room.name
        self.sendMessage("JOIN", channel, source=self.mask())
        if room.topic:
            self._topic(room)
        self._names(room)
        for event in room.history:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.when))
            self.sendMessage("NOTICE", channel, f"[{stamp}] <{event.nick}> {event.text}")

    def _visible(self, room: Room) -> bool:
        return "s" not in room.settings.modes or foldNick(self.me) in room.members

    def _prefix(self, room: Room, who) -> str:
        marks = self.server.prefixes(room, who)
        return marks if "multi-prefix" in self.caps else marks[:1]

    def _names(self, room: Room) -> None:
        channel = "#" + room.name
        symbol = "@" if "s" in room.settings.modes else "="
        full = "userhost-in-names" in self.caps
        names = [self._prefix(room, m) + (hostmask(m) if full else m.nick) for m in room.members.values()]
        line: list[str] = []
        for name in names:
            if sum(len(n) + 1 for n in line) + len(name) > 400:
                self.numeric(irc.RPL_NAMREPLY, symbol, channel, " ".join(line))
                line = []
            line.append(name)
        if line:
            self.numeric(irc.RPL_NAMREPLY, symbol, channel, " ".join(line))
        self.numeric(irc.RPL_ENDOFNAMES, channel, "End of /NAMES list")

    def irc_NAMES(self, params) -> None:
        if not params:
            self.numeric(irc.RPL_ENDOFNAMES, "*", "End of /NAMES list")
            return
        for name in splitList(params[0]):
            try:
                room = self.server.room(name)
            except ChatError:
                room = None
            if room is None or not self._visible(room):
                self.numeric(irc.RPL_ENDOFNAMES, name, "End of /NAMES list")
                continue
            self._names(room)

    def irc_PART(self, params) -> None:
        if not self._need(params, 1, "PART"):
            return
        reason = params[1] if len(params) > 1 else ""
        for name in splitList(params[0]):
            try:
                self._part(name, reason)
            except ChatError as e:
                self.refuse("PART", name, e)

    def _part(self, name: str, reason: str) -> None:
        mask = self.mask()
        room = self.server.part(self.session, name, reason)
        channel = "#" + room.name
        if reason:
            self.sendMessage("PART", channel, reason, source=mask)
        else:
            self.sendMessage("PART", channel, source=mask)

    def irc_PRIVMSG(self, params, command: str = "PRIVMSG") -> None:
        notice = command == "NOTICE"
        tagOnly = command == "TAGMSG"
        if not params or not params[0]:
            if not notice:
                self.numeric(irc.ERR_NORECIPIENT, f"No recipient given ({command})")
            return
        if not tagOnly and (len(params) < 2 or not params[1]):
            if not notice:
                self.numeric(irc.ERR_NOTEXTTOSEND, "No text to send")
            return
        text = "" if tagOnly else params[1]
        tags = {k: v for k, v in self._tags.items() if k.startswith("+")}
        for target in splitList(params[0]):
            try:
                if target.startswith("#"):
                    event = self.server.say(self.session, target, text, notice, None, tags, tagOnly)
                else:
                    event = self.server.tell(self.session, target, text, notice, None, tags, tagOnly)
                    if not notice:
                        away = getattr(self.server.find(target), "away", None)
                        if away:
                            self.numeric(irc.RPL_AWAY, event.target, away)
            except ChatError as e:
                if target.startswith("#") and e.code in (Code.BAD_NAME, Code.NO_SUCH_ROOM):
                    e = ChatError(Code.NO_SUCH_ROOM, f"no channel {target[:40]}", (target[:40],))
                self.refuse(command, target, e)
                continue
            if "echo-message" in self.caps:
                self.send(self.encodeEvent(event))

    def irc_NOTICE(self, params) -> None:
        self.irc_PRIVMSG(params, "NOTICE")

    def irc_TAGMSG(self, params) -> None:
        if "message-tags" in self.caps:
            self.irc_PRIVMSG(params, "TAGMSG")

    def _topic(self, room: Room) -> None:
        channel = "#" + room.name
        if room.topic is None:
            self.numeric(irc.RPL_NOTOPIC, channel, "No topic is set")
            return
        self.numeric(irc.RPL_TOPIC, channel, room.topic.text)
        self.numeric(RPL_TOPICWHOTIME, channel, room.topic.nick, str(int(room.topic.when)))

    def irc_TOPIC(self, params) -> None:
        if not self._need(params, 1, "TOPIC"):
            return
        if len(params) == 1:
            room = self.server.room(params[0])
            if not self._visible(room):
                raise ChatError(Code.NOT_IN_ROOM, "You're not on that channel", (params[0],))
            self._topic(room)
            return
        event = self.server.setTopic(self.session, params[0], params[1])
        self.session.deliver(event)

    def irc_LIST(self, params) -> None:
        wanted = {foldNick(n.lstrip("#")) for n in splitList(params[0])} if params else None
        self.numeric(irc.RPL_LISTSTART, "Channel", "Users  Name")
        for room in self.server.listRooms():
            if wanted is not None and room.name not in wanted:
                continue
            if not self._visible(room):
                continue
            topic = room.topic.text if room.topic else ""
            self.numeric(irc.RPL_LIST, "#" + room.name, str(len(room.members)), topic)
        self.numeric(irc.RPL_LISTEND, "End of /LIST")

    # -- users ------------------------------------------------------------------------

    def _flags(self, who, room: Room | None) -> str:
        flags = "G" if getattr(who, "away", None) else "H"
        if self.server.isInstructor(who):
            flags += "*"  # an IRC operator, as OPER makes one
        if room is not None:
            flags += self._prefix(room, who)
        return flags

    def _whoLine(self, who, room: Room | None) -> None:
        self.numeric(
            irc.RPL_WHOREPLY, "#" + room.name if room else "*", getattr(who, "user", None) or who.nick,
            getattr(who, "host", None) or "chat", self.hostname, who.nick, self._flags(who, room),
            f"0 {getattr(who, 'realname', None) or who.nick}",
        )

    def _invisible(self, who) -> bool:
        door = getattr(who, "door", None)
        return "i" in getattr(door, "umodes", ())

    def irc_WHO(self, params) -> None:
        mask = params[0] if params else "*"
        if mask.startswith("#"):
            try:
                room = self.server.room(mask)
            except ChatError:
                room = None
            if room is not None and self._visible(room):
                for member in list(room.members.values()):
                    self._whoLine(member, room)
        else:
            mine = {m for r in self.server.roomsOf(self.session) for m in r.members.values()}
            for who in list(self.server.users.values()):
                door = getattr(who, "door", None)
                if door is not None and not getattr(door, "welcomed", True):
                    continue
                masked = "*" in mask or "?" in mask
                if masked and who is not self.session and self._invisible(who) and who not in mine:
                    continue
                if mask in ("*", "0") or maskMatches(mask, who.nick) or maskMatches(mask, hostmask(who)):
                    self._whoLine(who, None)
        self.numeric(irc.RPL_ENDOFWHO, mask, "End of /WHO list")

    def irc_WHOIS(self, params) -> None:
        if not params or not params[-1]:
            self.numeric(irc.ERR_NONICKNAMEGIVEN, "No nickname given")
            return
        for nick in splitList(params[-1]):
            try:
                who = self.server.find(nick)
            except ChatError:
                self.numeric(irc.ERR_NOSUCHNICK, nick[:32], "No such nick")
                self.numeric(irc.RPL_ENDOFWHOIS, nick[:32], "End of /WHOIS list")
                continue
            self.numeric(irc.RPL_WHOISUSER, who.nick, getattr(who, "user", None) or who.nick,
                         getattr(who, "host", None) or "chat", "*", getattr(who, "realname", None) or who.nick)
            shared = set(self.server.roomsOf(self.session))
            rooms = [
                self._prefix(r, who) + "#" + r.name
                for r in self.server.roomsOf(who)
                if ("s" not in r.settings.modes and not self._invisible(who)) or r in shared or who is self.session
            ]
            if rooms:
                self.numeric(irc.RPL_WHOISCHANNELS, who.nick, " ".join(rooms))
            self.numeric(irc.RPL_WHOISSERVER, who.nick, self.hostname, "coursenet chat")
            if getattr(who, "away", None):
                self.numeric(irc.RPL_AWAY, who.nick, who.away)
            if self.server.isInstructor(who):
                self.numeric(irc.RPL_WHOISOPERATOR, who.nick, "is an IRC operator (an instructor)")
            if getattr(who, "account", None):
                self.numeric(RPL_WHOISACCOUNT, who.nick, who.account, "is logged in as")
            door = getattr(who, "door", None)
            if isinstance(door, IRCSession):
                now = self.factory.reactor.seconds()
                self.numeric(irc.RPL_WHOISIDLE, who.nick, str(int(now - door.lastActive)), str(int(door.signedOn)),
                             "seconds idle, signon time")
            self.numeric(irc.RPL_ENDOFWHOIS, who.nick, "End of /WHOIS list")

    def irc_WHOWAS(self, params) -> None:
        if not params or not params[0]:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "WHOWAS", "Not enough parameters")
            return
        count = 0
        if len(params) > 1 and params[1].lstrip("-").isdigit():
            count = int(params[1])
        for nick in splitList(params[0]):
            found = self.server.whowas(nick, count)
            if not found:
                self.numeric(irc.ERR_WASNOSUCHNICK, nick[:32], "There was no such nickname")
            for was in found:
                self.numeric(irc.RPL_WHOWASUSER, was.nick, was.user, was.host, "*", was.realname)
                self.numeric(irc.RPL_WHOISSERVER, was.nick, self.hostname,
                             time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(was.when)))
        self.numeric(irc.RPL_ENDOFWHOWAS, params[0], "End of WHOWAS")

    def irc_USERHOST(self, params) -> None:
        if not self._need(params, 1, "USERHOST"):
            return
        replies = []
        for nick in params[:5]:
            try:
                who = self.server.find(nick)
            except ChatError:
                continue
            away = "-" if getattr(who, "away", None) else "+"
            replies.append(f"{who.nick}={away}{getattr(who, 'user', None) or who.nick}@{getattr(who, 'host', None) or 'chat'}")
        self.numeric(irc.RPL_USERHOST, " ".join(replies))

    def irc_ISON(self, params) -> None:
        if not self._need(params, 1, "ISON"):
            return
        online = []
        for nick in " ".join(params).split():
            try:
                online.append(self.server.find(nick).nick)
            except ChatError:
                pass
        self.numeric(irc.RPL_ISON, " ".join(online))

    def irc_AWAY(self, params) -> None:
        text = params[0] if params and params[0] else None
        if text is not None:
            text = text[:AWAYLEN]
        self.server.setAway(self.session, text)
        if text is None:
            self.numeric(irc.RPL_UNAWAY, "You are no longer marked as being away")
        else:
            self.numeric(irc.RPL_NOWAWAY, "You have been marked as being away")

    # -- server information ----------------------------------------------------------------

    def irc_LUSERS(self, params) -> None:
        users, invisible, unknown, peak = self.factory.counts()
        rooms = len(list(self.server.listRooms()))
        self.numeric(irc.RPL_LUSERCLIENT, f"There are {users - invisible} users and {invisible} invisible on 1 servers")
        if unknown:
            self.numeric(irc.RPL_LUSERUNKNOWN, str(unknown), "unknown connection(s)")
        self.numeric(irc.RPL_LUSERCHANNELS, str(rooms), "channels formed")
        self.numeric(irc.RPL_LUSERME, f"I have {users} clients and 0 servers")
        self.numeric(RPL_LOCALUSERS, str(users), str(peak), f"Current local users {users}, max {peak}")
        self.numeric(RPL_GLOBALUSERS, str(users), str(peak), f"Current global users {users}, max {peak}")

    def irc_MOTD(self, params) -> None:
        self.numeric(irc.ERR_NOMOTD, "MOTD File is missing")

    def irc_TIME(self, params) -> None:
        now = self.factory.reactor.seconds()
        self.numeric(irc.RPL_TIME, self.hostname, time.strftime("%A %B %d %Y -- %H:%M:%S +00:00", time.gmtime(now)))

    def irc_VERSION(self, params) -> None:
        self.numeric(irc.RPL_VERSION, "coursenet-chat", self.hostname, "the course network chat")
        tokens = [f"CHANMODES={CHANMODES}", f"PREFIX={PREFIX}", "CHANTYPES=#"]
        self.numeric(irc.RPL_ISUPPORT, *tokens, "are supported by this server")

    def irc_HELP(self, params) -> None:
        subject = params[0].upper() if params else "*"
        if subject != "*" and subject not in HELP:
            self.numeric("524", params[0][:32], "No help available on this topic")
            return
        lines = [HELP[subject]] if subject != "*" else ["Commands: " + " ".join(sorted(HELP)), "HELP command for one"]
        self.numeric("704", subject, lines[0])
        for line in lines[1:]:
            self.numeric("705", subject, line)
        self.numeric("706", subject, "End of /HELP")

    irc_HELPOP = irc_HELP

    def irc_OPER(self, params) -> Deferred | None:
        if not self._need(params, 2, "OPER"):
            return None
        name, password = params[0], params[1]
        if foldNick(name) not in self.server.instructors:
            self.numeric(irc.ERR_NOOPERHOST, "No O-lines for your host: operators are the instructors' accounts")
            return None

        def done(account: str) -> None:
            self.session.account = account
            self.numeric(irc.RPL_YOUREOPER, "You are now an IRC operator (an instructor: operator of every channel)")

        def failed(failure: Failure) -> None:
            failure.trap(ChatError)
            self.numeric(irc.ERR_PASSWDMISMATCH, "Password incorrect")

        if self.server.checker is None:
            self.numeric(irc.ERR_NOOPERHOST, "No O-lines for your host")
            return None
        return self.server.checkPassword(self.session, name, password).addCallbacks(done, failed)

    # -- moderation ----------------------------------------------------------------------

    def irc_MODE(self, params) -> None:
        if not self._need(params, 1, "MODE"):
            return
        target = params[0]
        if not target.startswith("#"):
            self._userMode(target, params[1:])
            return
        room = self.server.room(target)
        channel = "#" + room.name
        if len(params) == 1:
            member = foldNick(self.me) in room.members
            self.numeric(irc.RPL_CHANNELMODEIS, channel, *room.settings.modeString(showKey=member))
            self.numeric(RPL_CREATIONTIME, channel, str(int(room.created)))
            return
        changes, unknown = parseModeChanges(params[1], params[2:])
        for letter in unknown:
            self.numeric(irc.ERR_UNKNOWNMODE, letter, "is unknown mode char to me")
        queries = [c for c in changes if c.letter == "b" and c.arg is None]
        changes = [c for c in changes if c not in queries]
        if queries:
            for ban in room.settings.bans:
                self.numeric(irc.RPL_BANLIST, channel, ban.mask, ban.setter, str(int(ban.when)))
            self.numeric(irc.RPL_ENDOFBANLIST, channel, "End of channel ban list")
        if not changes:
            return
        _, errors = self.server.mode(self.session, target, changes)
        for error in errors:
            if error.code == Code.LIMIT:
                self.numeric(ERR_BANLISTFULL, *error.params, error.message)
            else:
                self.refuse("MODE", target, error)

    def _userMode(self, nick: str, params: list[str]) -> None:
        if foldNick(nick) != foldNick(self.me):
            try:
                self.server.find(nick)
            except ChatError:
                self.numeric(irc.ERR_NOSUCHNICK, nick[:32], "No such nick")
                return
            self.numeric(irc.ERR_USERSDONTMATCH, "Can't change mode for other users")
            return
        if not params:
            self.numeric(irc.RPL_UMODEIS, "+" + "".join(sorted(self.umodes)))
            return
        adding, applied, sign = True, "", ""
        for letter in params[0]:
            if letter in "+-":
                adding = letter == "+"
            elif letter == "i":
                if adding != ("i" in self.umodes):
                    self.umodes = self.umodes | {"i"} if adding else self.umodes - {"i"}
                    (self.factory.invisible.add if adding else self.factory.invisible.discard)(self)
                    s = "+" if adding else "-"
                    applied += ("" if s == sign else s) + "i"
                    sign = s
            elif letter in "ow" and not adding:
                continue
            else:
                self.numeric(irc.ERR_UMODEUNKNOWNFLAG, "Unknown MODE flag")
        if applied:
            self.sendMessage("MODE", self.me, applied, source=self.mask())

    def irc_KICK(self, params) -> None:
        if not self._need(params, 2, "KICK"):
            return
        reason = params[2][:KICKLEN] if len(params) > 2 and params[2] else ""
        for nick in splitList(params[1]):
            try:
                self.server.kick(self.session, params[0], nick, reason)
            except ChatError as e:
                self.refuse("KICK", params[0], e)

    def irc_INVITE(self, params) -> None:
        if not self._need(params, 2, "INVITE"):
            return
        nick, channel = params[0], params[1]
        event = self.server.invite(self.session, nick, channel)
        self.numeric(irc.RPL_INVITING, event.target, channel)
        away = getattr(self.server.find(nick), "away", None)
        if away:
            self.numeric(irc.RPL_AWAY, event.target, away)


class IRCFactory(DoorFactory):
    """
    IRC connections to a chat server (L{chat.interfaces.IChatServer}).
    """

    protocol = IRCSession
    server: ChatServer  # type: ignore[assignment]

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
        #: Connections not registered yet, and registered ones with +i:
        #: kept as they change, so LUSERS costs no pass over every client.
        self.pending: set[IRCSession] = set()
        self.invisible: set[IRCSession] = set()
        self.peak = 0

    def counts(self) -> tuple[int, int, int, int]:
        """
        Users (registered, either door), how many of them are invisible,
        IRC connections not registered yet, and the most users seen at once.
        """
        unwelcomedNamed = sum(1 for s in self.pending if s.session.nick is not None)
        users = len(self.server.users) - unwelcomedNamed
        invisible = len(self.invisible)
        unknown = len(self.pending)
        self.peak = max(self.peak, users)
        return users, invisible, unknown, self.peak

    def noteUsers(self) -> None:
        self.counts()
