"""
C{chat}: an interactive terminal client on Twisted's stdio.

    chat localhost ada            # then type; /help lists the commands
    chat --tls --cafile var/tls/cert.pem localhost ada --room lab

A line not starting with C{/} is said in the current room.  The password
of a registered nickname comes from C{--password-env VAR}, never from the
command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver

from chat.client import ChatClient, ChatReplyError, connect
from chat.wire import ServerEvent

USAGE = """\
/join room        enter a room (it becomes the current room)
/part [room]      leave a room
/msg nick text    private message
/nick name        change nickname
/who [room]       who is in a room
/list             rooms
/topic [text]     show or set the current room's topic
/quit [reason]    leave
anything else     said in the current room"""


def describe(event: ServerEvent) -> str:
    """
    One event as the terminal shows it.
    """
    kind = event.kind
    if kind == "MESSAGE":
        return f"[{event.room}] <{event.nick}> {event.text}"
    if kind == "HISTORY":
        return f"[{event.room}] {event.time} <{event.nick}> {event.text}"
    if kind == "PRIVATE":
        return f"*{event.nick}* {event.text}"
    if kind == "JOIN":
        return f"*** {event.nick} joined {event.room}"
    if kind == "PART":
        return f"*** {event.nick} left {event.room} {event.text}".rstrip()
    if kind == "QUIT":
        return f"*** {event.nick} quit {event.text}".rstrip()
    if kind == "NICK":
        return f"*** {event.nick} is now {event.text}"
    if kind == "TOPIC":
        return f"*** {event.nick} set the topic of {event.room}: {event.text}"
    if kind == "NOTICE":
        return f"[{event.room}] -{event.nick}- {event.text}"
    if kind == "PRIVNOTICE":
        return f"-{event.nick}- {event.text}"
    if kind == "MODE":
        return f"*** {event.nick} sets mode {event.text} on {event.room}"
    if kind == "KICK":
        return f"*** {event.nick} kicked {event.target} from {event.room} ({event.text})"
    if kind == "INVITE":
        return f"*** {event.nick} invites you to {event.room}"
    return f"*** {kind} {event.text}"


class Terminal(LineReceiver):
    """
    Lines typed by the user, turned into commands.
    """

    delimiter = os.linesep.encode("ascii")

    def __init__(self, client: ChatClient, room: str | None) -> None:
        self.client = client
        self.room = room
        client.addListener(lambda event: self.show(describe(event)))

    def show(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode("utf-8", "replace") + b"\n")

    def connectionLost(self, reason=None) -> None:
        if not self.client.closed.called:
            self.client.quit("end of input")

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text:
            return
        d = self.run(text)
        if d is not None:
            d.addErrback(self.failed)

    def failed(self, failure) -> None:
        if failure.check(ChatReplyError):
            self.show(f"!! {failure.value.code} {failure.value.message}")
        else:
            self.show(f"!! {failure.getErrorMessage()}")

    def run(self, text: str) -> Deferred | None:
        client = self.client
        if not text.startswith("/"):
            if self.room is None:
                self.show("!! join a room first: /join room")
                return None
            return client.say(self.room, text)
        verb, _, rest = text[1:].partition(" ")
        verb = verb.lower()
        if verb == "join" and rest:
            room = rest.split()[0]

            def joined(history):
                self.room = room.lstrip("#").lower()
                self.show(f"*** you are in {self.room}")

            return client.join(room).addCallback(joined)
        if verb == "part":
            name = rest.split()[0] if rest else self.room
            return client.part(name or "").addCallback(lambda _: self.show(f"*** you left {name}"))
        if verb == "msg" and " " in rest:
            nick, message = rest.split(" ", 1)
            return client.msg(nick, message)
        if verb == "nick" and rest:
            return client.nick(*rest.split()[:2]).addCallback(
                lambda _: self.show(f"*** you are now {client.nickname}")
            )
        if verb == "who":
            name = rest.split()[0] if rest else self.room
            return client.who(name or "").addCallback(
                lambda nicks: self.show(f"*** in {name}: {' '.join(nicks)}")
            )
        if verb == "list":

            def listed(rooms: list[tuple[str, int, str]]) -> None:
                for n, c, t in rooms:
                    self.show(f"*** {n} ({c}) {t}".rstrip())

            return client.list().addCallback(listed)
        if verb == "topic" and self.room:
            return client.topic(self.room, rest or None).addCallback(
                lambda topic: self.show(f"*** topic of {self.room}: {topic}")
            )
        if verb == "quit":
            return client.quit(rest)
        self.show(USAGE)
        return None


async def session(reactor, args) -> int:
    password = os.environ.get(args.password_env) if args.password_env else None
    client = await connect(reactor, args.host, args.port, tls=args.tls, cafile=args.cafile)
    try:
        await client.nick(args.nick, password)
        if args.room:
            await client.join(args.room)
    except ChatReplyError as e:
        print(f"chat: {e.code} {e.message}", file=sys.stderr)
        await client.quit()
        return 1
    terminal = Terminal(client, args.room.lstrip("#").lower() if args.room else None)
    stdio.StandardIO(terminal, reactor=reactor)
    terminal.show(f"*** connected as {client.nickname}; /help for commands")
    await client.closed
    if client.closing is not None:
        print(f"chat: {client.closing.code} {client.closing.text}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat", description="Interactive course chat client.")
    parser.add_argument("host")
    parser.add_argument("nick")
    parser.add_argument("--port", type=int, help="default 6665, or 6666 with --tls")
    parser.add_argument("--room", help="room to join at once")
    parser.add_argument("--tls", action="store_true", help="use TLS and verify the server")
    parser.add_argument("--cafile", help="PEM certificates to trust (e.g. var/tls/cert.pem)")
    parser.add_argument("--password-env", metavar="VAR", help="read the nickname's password from VAR")
    args = parser.parse_args(argv)
    from twisted.internet.task import react

    status = []

    async def run(reactor):
        try:
            status.append(await session(reactor, args))
        except Exception as e:  # refused, unverified TLS, lost: say so and stop
            print(f"chat: {e}", file=sys.stderr)
            status.append(1)

    try:
        react(lambda r: Deferred.fromCoroutine(run(r)), [])
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
