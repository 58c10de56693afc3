"""
C{chat}: an interactive terminal client.

    chat localhost ada --room lab   # then type; /help lists the commands
    chat --tls --cafile var/tls/cert.pem localhost ada --room lab

A line not starting with C{/} is said in the current room; after C{/part}
there is none until the next C{/join}.  On a terminal the line is edited
with prompt_toolkit (history, Tab completes commands, nicks and rooms, and
incoming text is printed above the line being typed); from a pipe lines
are read as they come.  The password of a registered nickname comes from
C{--password-env VAR}, never from the command line.  The exit status is 0
after C{/quit} or the end of input, 1 when the server refused or went away.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from twisted.internet import stdio
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from chat.client import DEFAULT_PORT, DEFAULT_TLS_PORT, ChatClient, ChatReplyError, connect
from chat.wire import ServerEvent

USAGE = """\
/join room        enter a room (it becomes the current room)
/part [room]      leave a room (the current one: then you are in no room)
/msg nick text    private message
/nick name        change nickname
/who [room]       who is in a room
/list             rooms
/topic [text]     show or set the current room's topic
/help             this list
/quit [reason]    leave (Ctrl-D too)
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


COMMANDS = ["/help", "/join", "/list", "/msg", "/nick", "/part", "/quit", "/topic", "/who"]


def roomName(name: str) -> str:
    """
    A room's name as the server reports it (no C{#}, lower case).
    """
    return name.lstrip("#").lower()


def complete(line: str, nicks: list[str], rooms: list[str]) -> list[str]:
    """
    What Tab may put in place of the last word of C{line} (the text before
    the cursor): a command for the first word after C{/}, a room after
    C{/join}, C{/part}, C{/who}, otherwise a nickname (with C{": "} after
    it at the start of a line, as chat users address each other).
    """
    words = line.split(" ")
    word = words[-1]
    if len(words) == 1 and word.startswith("/"):
        return [c for c in COMMANDS if c.startswith(word.lower())]
    if len(words) == 2 and words[0].lower() in ("/join", "/part", "/who"):
        return [r for r in sorted(rooms) if r.startswith(roomName(word))]
    if not word:
        return []
    found = [n for n in sorted(nicks, key=str.lower) if n.lower().startswith(word.lower())]
    if len(words) == 1:
        return [n + ": " for n in found]
    return found


class Console:
    """
    The user's side of a chat session, whatever the terminal: runs typed
    lines as commands, keeps the current room and who is in each joined
    room (for completion), and shows every event through C{show}.

    @ivar room: the current room, or None (before the first join and after
        leaving the current room).
    @ivar members: for each joined room, the nicknames in it.
    @ivar quitting: the user asked to leave (C{/quit}, end of input), so
        the connection closing is no failure.
    """

    def __init__(self, client: ChatClient, show: Callable[[str], None]) -> None:
        self.client = client
        self.show = show
        self.room: str | None = None
        self.members: dict[str, list[str]] = {}
        self.quitting = False
        self._done: Deferred[None] = succeed(None)
        client.addListener(self.event)

    def nicks(self) -> list[str]:
        """
        Everyone in the rooms joined, for completion.
        """
        seen = {n for names in self.members.values() for n in names}
        seen.discard(self.client.nickname or "")
        return sorted(seen, key=str.lower)

    def event(self, event: ServerEvent) -> None:
        mine = (event.nick or "").lower() == (self.client.nickname or "").lower()
        room = event.room
        if event.kind == "JOIN" and room in self.members and event.nick not in self.members[room]:
            self.members[room].append(event.nick)
        elif event.kind == "PART" and room in self.members:
            if mine:
                self._left(room)
            elif event.nick in self.members[room]:
                self.members[room].remove(event.nick)
        elif event.kind == "KICK" and room in self.members:
            if (event.target or "").lower() == (self.client.nickname or "").lower():
                self._left(room)
            elif event.target in self.members[room]:
                self.members[room].remove(event.target)
        elif event.kind == "QUIT":
            for names in self.members.values():
                if event.nick in names:
                    names.remove(event.nick)
        elif event.kind == "NICK":
            for names in self.members.values():
                names[:] = [event.text if n == event.nick else n for n in names]
        self.show(describe(event))

    def _left(self, room: str) -> None:
        self.members.pop(room, None)
        if self.room == room:
            self.room = None

    def failed(self, failure: Failure) -> None:
        if failure.check(ChatReplyError):
            self.show(f"!! {failure.value.code} {failure.value.message}")
        else:
            self.show(f"!! {failure.getErrorMessage()}")

    def join(self, name: str) -> Deferred:
        """
        Enter C{name} and make it the current room; the history the server
        replays is shown as it arrives, then who is there.
        """
        room = roomName(name)

        def joined(history: list[ServerEvent]) -> Deferred:
            self.room = room
            return self.client.who(room).addCallback(listed)

        def listed(nicks: list[str]) -> None:
            self.members[room] = list(nicks)
            earlier = "no earlier messages" if not self.client.history.get(room) else "history above"
            self.show(f"*** you are in {room} with {', '.join(nicks)} ({earlier})")

        return self.client.join(name).addCallback(joined)

    def part(self, name: str | None) -> Deferred | None:
        if name is None:
            self.show("!! you are in no room: /part room")
            return None
        room = roomName(name)

        def left(_) -> None:
            current = self.room == room
            self._left(room)
            if current:
                self.show(f"*** you left {room}; you are in no room now: /join room to talk")
            else:
                self.show(f"*** you left {room}")

        return self.client.part(room).addCallback(left)

    def quit(self, reason: str = "") -> Deferred:
        self.quitting = True
        return self.client.quit(reason)

    def line(self, text: str) -> Deferred[None]:
        """
        Run one typed line once the lines before it are done (so that a
        line after C{/part} already finds no room); a refusal is shown,
        never raised.  Fires when this line is done.
        """
        text = text.rstrip("\r\n")
        if text.strip():
            self._done.addCallback(lambda _: self.run(text)).addErrback(self.failed)
        # A copy, so that a caller waiting on it adds nothing to the chain.
        copy: Deferred[None] = Deferred()

        def done(result):
            copy.callback(None)
            return result

        self._done.addBoth(done)
        return copy

    def run(self, text: str) -> Deferred | None:
        client = self.client
        if not text.startswith("/"):
            if self.room is None:
                self.show("!! you are in no room, so that was not sent: /join room first")
                return None
            return client.say(self.room, text)
        verb, _, rest = text[1:].partition(" ")
        verb = verb.lower()
        args = rest.split()
        if verb == "join" and args:
            return self.join(args[0])
        if verb == "part":
            return self.part(args[0] if args else self.room)
        if verb == "msg" and len(args) >= 2:
            nick, message = rest.lstrip().split(" ", 1)
            return client.msg(nick, message)
        if verb == "nick" and args:
            return client.nick(*args[:2]).addCallback(lambda _: self.show(f"*** you are now {client.nickname}"))
        if verb == "who" and (args or self.room):
            name = roomName(args[0]) if args else self.room
            return client.who(name or "").addCallback(lambda nicks: self.show(f"*** in {name}: {' '.join(nicks)}"))
        if verb == "list":

            def listed(rooms: list[tuple[str, int, str]]) -> None:
                for n, c, t in rooms:
                    self.show(f"*** {n} ({c}) {t}".rstrip())
                if not rooms:
                    self.show("*** no rooms yet: /join room makes one")

            return client.list().addCallback(listed)
        if verb == "topic" and self.room:
            room = self.room
            return client.topic(room, rest or None).addCallback(lambda topic: self.show(f"*** topic of {room}: {topic}"))
        if verb == "quit":
            if client.closed.called:
                return None
            return self.quit(rest)
        if verb in ("help", "?"):
            self.show(USAGE)
        elif "/" + verb in COMMANDS:
            self.show(f"!! /{verb} needs more: see /help")
        else:
            self.show(f"!! unknown command /{verb}: /help lists them")
        return None


class Pipe(LineReceiver):
    """
    Lines from a pipe or file on Twisted's stdio; the end of input quits.
    (Output goes through L{_printed}, as on a terminal, so that it keeps its
    order whichever way it is written.)
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self) -> None:
        self.console: Console | None = None

    def lineReceived(self, line: bytes) -> None:
        assert self.console is not None
        self.console.line(line.decode("utf-8", "replace"))

    def lineLengthExceeded(self, line: bytes) -> None:
        _printed(f"!! line longer than {self.MAX_LENGTH} bytes not sent")

    def connectionLost(self, reason=None) -> None:
        if self.console is not None:
            self.console.line("/quit end of input")


async def _prompt(console: Console) -> None:
    """
    Read lines with prompt_toolkit until the user quits or the server goes
    away: history (up and down), Tab completion, and incoming text printed
    above the line being typed (patch_stdout), which it never splits.
    """
    import asyncio

    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.patch_stdout import patch_stdout

    class Completing(Completer):
        def get_completions(self, document, complete_event):
            before = document.text_before_cursor
            word = before.split(" ")[-1]
            for choice in complete(before, console.nicks(), list(console.members)):
                yield Completion(choice, start_position=-len(word))

    prompt: PromptSession[str] = PromptSession(completer=Completing(), complete_while_typing=False)

    def closed(_) -> None:
        if prompt.app.is_running:
            prompt.app.exit(exception=EOFError())

    console.client.closed.addCallback(closed)
    with patch_stdout(raw=True):
        while not console.client.closed.called:
            try:
                # Redrawn with each line printed, so it follows /join and /part.
                future = asyncio.ensure_future(prompt.prompt_async(lambda: f"[{console.room or 'no room'}] "))
                text = await Deferred.fromFuture(future)
            except EOFError:
                break
            except KeyboardInterrupt:
                continue
            console.line(text)
    if not console.client.closed.called:
        await console.quit("end of input")


def _printed(text: str) -> None:
    print(text, flush=True)


async def session(reactor, args) -> int:
    password = os.environ.get(args.password_env) if args.password_env else None
    try:
        client = await connect(reactor, args.host, args.port, tls=args.tls, cafile=args.cafile)
    except ConnectError as e:
        port = args.port or (DEFAULT_TLS_PORT if args.tls else DEFAULT_PORT)
        print(f"chat: cannot connect to {args.host} port {port}: {str(e).rstrip('.')}; is the server running?", file=sys.stderr)
        return 1
    interactive = _interactive(reactor)
    pipe = Pipe()
    console = Console(client, _printed)
    pipe.console = console
    try:
        await client.nick(args.nick, password)
        console.show(f"*** connected as {client.nickname}; /help for commands")
        if args.room:
            await console.join(args.room)
    except ChatReplyError as e:
        print(f"chat: {e.code} {e.message}", file=sys.stderr)
        console.quitting = True
        await client.quit()
        return 1
    # Typed lines are read once the --room join is done, so that the first
    # of them already goes to that room.
    if interactive:
        await Deferred.fromCoroutine(_prompt(console))
    else:
        stdio.StandardIO(pipe, reactor=reactor)
    await client.closed
    if console.quitting:
        return 0
    if client.closing is not None:
        print(f"chat: the server closed the connection: {client.closing.code} {client.closing.text}", file=sys.stderr)
    else:
        print("chat: connection to the chat server lost", file=sys.stderr)
    return 1


def _interactive(reactor) -> bool:
    """
    Line editing needs a terminal on both ends and the asyncio reactor
    (prompt_toolkit runs on asyncio).
    """
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return sys.stdin.isatty() and sys.stdout.isatty() and isinstance(reactor, AsyncioSelectorReactor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat", description="Interactive course chat client.")
    parser.add_argument("host")
    parser.add_argument("nick")
    parser.add_argument("--port", type=int, help="default 6665, or 6666 with --tls")
    parser.add_argument("--room", help="room to join at once (its history and members are shown)")
    parser.add_argument("--tls", action="store_true", help="use TLS and verify the server")
    parser.add_argument("--cafile", help="PEM certificates to trust (e.g. var/tls/cert.pem)")
    parser.add_argument("--password-env", metavar="VAR", help="read the nickname's password from VAR")
    args = parser.parse_args(argv)
    if args.cafile and not os.path.isfile(args.cafile):
        parser.error(f"--cafile {args.cafile}: no such file")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: must be a TCP port, 1 to 65535")
    if "twisted.internet.reactor" not in sys.modules:
        import asyncio

        from twisted.internet import asyncioreactor

        asyncioreactor.install(asyncio.new_event_loop())
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
