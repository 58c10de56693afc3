"""
The C{chat} terminal client (L{chat.cli}): Tab completion, and the console
script itself against a chat server on 127.0.0.1, from a pipe (no line
editing) and on a pseudo-terminal (prompt_toolkit).
"""

from __future__ import annotations

import os
import sys
import time

import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

from chat.cli import COMMANDS, complete
from chat.client import connect
from tests.chat_support import listenAll

BIN = os.path.dirname(sys.executable)


# -- completion ---------------------------------------------------------------


def test_complete_commands():
    """A word starting with / at the start of the line completes to the commands it begins."""
    assert complete("/p", ["pat"], ["lab"]) == ["/part"]
    assert complete("/", [], []) == COMMANDS
    assert complete("/J", [], []) == ["/join"]
    assert complete("/x", [], []) == []


def test_complete_rooms_after_room_commands():
    """After /join, /part and /who the word completes to a joined room, # or not."""
    assert complete("/part l", ["lou"], ["lab", "lounge", "attic"]) == ["lab", "lounge"]
    assert complete("/who #a", [], ["lab", "attic"]) == ["attic"]


def test_complete_nicks():
    """Elsewhere a word completes to nicknames, case-insensitively; the first word of a line gets ': '."""
    nicks = ["bob", "Bea", "carol"]
    assert complete("b", nicks, []) == ["Bea: ", "bob: "]
    assert complete("hi B", nicks, []) == ["Bea", "bob"]
    assert complete("/msg ca", nicks, []) == ["carol"]
    assert complete("hi ", nicks, []) == []


# -- the console script ---------------------------------------------------------


class _Chat(ProcessProtocol):
    """
    The chat console script in a subprocess: its output and exit status.
    """

    def __init__(self) -> None:
        self.out = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def write(self, line: str) -> None:
        self.transport.write(line.encode("utf-8"))

    def kill(self) -> None:
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess("KILL")


def spawn(reactor, port: int, *args: str, pty: bool = False) -> _Chat:
    proto = _Chat()
    env = dict(os.environ, TERM="xterm", COLUMNS="200", LINES="50", PROMPT_TOOLKIT_NO_CPR="1")
    reactor.spawnProcess(
        proto, os.path.join(BIN, "chat"), ["chat", "127.0.0.1", "ada", "--port", str(port), *args],
        env=env, usePTY=pty,
    )
    return proto


async def until(reactor, predicate, chat: _Chat, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting; the client wrote {chat.text!r}"
        await deferLater(reactor, 0.05)


async def bobInLab(reactor, port: int):
    bob = await connect(reactor, "127.0.0.1", port)
    await bob.nick("bob")
    await bob.join("lab")
    said: list[str] = []
    bob.addListener(lambda e: said.append(e.text) if e.kind == "MESSAGE" else None)
    return bob, said


@pytest_twisted.ensureDeferred
async def test_room_option_shows_history_and_members(reactor):
    """`chat HOST NICK --room lab` shows the room's earlier messages, then that you are in it and who is there."""
    listening = await listenAll(reactor)
    bob, _ = await bobInLab(reactor, listening.chatPort)
    await bob.say("lab", "earlier words")
    chat = spawn(reactor, listening.chatPort, "--room", "lab")
    try:
        await until(reactor, lambda: "you are in lab" in chat.text, chat)
        history = chat.text.index("<bob> earlier words")
        joined = chat.text.index("*** you are in lab with bob, ada")
        assert history < joined
        chat.transport.closeStdin()
        assert await chat.ended == 0
    finally:
        chat.kill()
        await bob.quit()
        await listening.stop()


@pytest_twisted.ensureDeferred
async def test_part_leaves_no_room(reactor):
    """After /part, typed lines go to no room (the user is told) until the next /join."""
    listening = await listenAll(reactor)
    bob, said = await bobInLab(reactor, listening.chatPort)
    chat = spawn(reactor, listening.chatPort, "--room", "lab")
    try:
        await until(reactor, lambda: "you are in lab" in chat.text, chat)
        chat.write("before part\n/part\nafter part\n/join lab\nback again\n/quit\n")
        assert await chat.ended == 0
        await bob.ping()  # every line of ada's was run before her QUIT
        assert said == ["before part", "back again"]
        assert "you left lab; you are in no room now" in chat.text
        assert "you are in no room, so that was not sent" in chat.text
    finally:
        chat.kill()
        await bob.quit()
        await listening.stop()


@pytest_twisted.ensureDeferred
async def test_server_gone_exits_nonzero(reactor):
    """When the connection drops the client says so on its last line and exits 1, not 0."""
    listening = await listenAll(reactor)
    chat = spawn(reactor, listening.chatPort, "--room", "lab")
    try:
        await until(reactor, lambda: "you are in lab" in chat.text, chat)
        listening.server.find("ada").door.transport.abortConnection()
        assert await chat.ended == 1
        assert chat.text.strip().splitlines()[-1] == "chat: connection to the chat server lost"
    finally:
        chat.kill()
        await listening.stop()


@pytest_twisted.ensureDeferred
async def test_server_closing_reported(reactor):
    """A server that closes the connection with a 421 has its reason printed and the client exits 1."""
    listening = await listenAll(reactor)
    chat = spawn(reactor, listening.chatPort)
    try:
        await until(reactor, lambda: "connected as ada" in chat.text, chat)
        listening.server.find("ada").door.close("server shutting down")
        assert await chat.ended == 1
        last = chat.text.strip().splitlines()[-1]
        assert last.startswith("chat: the server closed the connection: 421") and "server shutting down" in last
    finally:
        chat.kill()
        await listening.stop()


@pytest_twisted.ensureDeferred
async def test_terminal_line_not_split_by_incoming_text(reactor):
    """On a terminal, a message arriving while a line is half typed is shown and the whole line is still sent; Tab completes a nick; the prompt names the room (none after /part); Ctrl-D quits with 0."""
    listening = await listenAll(reactor)
    bob, said = await bobInLab(reactor, listening.chatPort)
    chat = spawn(reactor, listening.chatPort, "--room", "lab", pty=True)
    try:
        await until(reactor, lambda: "you are in lab" in chat.text and "[lab]" in chat.text, chat)
        chat.write("hello b")
        await until(reactor, lambda: "hello b" in chat.text, chat)
        await bob.say("lab", "interrupting")
        await until(reactor, lambda: "<bob> interrupting" in chat.text, chat)
        typed = len(chat.out)
        chat.write("\t")
        await until(reactor, lambda: b"ob" in chat.out[typed:], chat)
        chat.write(", how are you\r")
        await until(reactor, lambda: said != [], chat)
        assert said == ["hello bob, how are you"]
        chat.write("/part\r")
        await until(reactor, lambda: "[no room]" in chat.text, chat)
        chat.write("\x04")
        assert await chat.ended == 0
    finally:
        chat.kill()
        await bob.quit()
        await listening.stop()


@pytest_twisted.ensureDeferred
async def test_terminal_server_gone_exits_nonzero(reactor):
    """On a terminal too, a dropped connection ends the prompt with a message and exit status 1."""
    listening = await listenAll(reactor)
    chat = spawn(reactor, listening.chatPort, "--room", "lab", pty=True)
    try:
        await until(reactor, lambda: "you are in lab" in chat.text and "[lab]" in chat.text, chat)
        listening.server.find("ada").door.transport.abortConnection()
        assert await chat.ended == 1
        assert "chat: connection to the chat server lost" in chat.text
    finally:
        chat.kill()
        await listening.stop()


@pytest_twisted.ensureDeferred
async def test_no_server_one_line_and_status_1(reactor):
    """With nothing listening the client prints one line naming the host and port, no traceback, and exits 1."""
    listening = await listenAll(reactor)
    await listening.stop()
    chat = spawn(reactor, listening.chatPort)
    try:
        assert await chat.ended == 1
        assert chat.text.strip() == (
            f"chat: cannot connect to 127.0.0.1 port {listening.chatPort}: "
            "Connection was refused by other side: 111: Connection refused; is the server running?"
        )
    finally:
        chat.kill()
