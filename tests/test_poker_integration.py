"""
C{twistd poker} as users run it, on 127.0.0.1: a hand played over raw
sockets by docs/poker.md, the done-when run of C{poker-bot}, and the async
client with a reconnection on the real reactor.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import pytest_twisted

from coursenet.procs import freePort, stopProcess, waitForPort
from poker.client import PokerClient
from poker.shuffle import verify
from poker.store import audit

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """
    C{twistd poker --guests} with its two demo tables and no pause between
    hands: C{(port, db path)}.
    """
    tmp = tmp_path_factory.mktemp("poker")
    port = freePort()
    db = str(tmp / "poker.sqlite")
    proc = subprocess.Popen(
        [
            os.path.join(BIN, "twistd"), "-n", "--pidfile=", "-l", str(tmp / "log"), "poker", "--guests",
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--db", db, "--pause", "0",
        ],
        cwd=str(tmp),
    )
    try:
        waitForPort(port, proc)
        yield port, db
    finally:
        stopProcess(proc)
    minted, held = audit(db)
    assert minted == held, "chips made or lost across the server's stop"


class Raw:
    """
    A raw socket, as nc would be: lines in, lines out.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, "server closed"
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("ascii")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("ascii") + b"\r\n")

    def until(self, prefix: str) -> list[str]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(prefix):
                return lines


def test_handOverRawSocketsBySpec(server):
    """Two raw-socket clients log in, sit heads-up, play a hand by calling and checking, and see the commitment verify and the chips add up."""
    port, _ = server
    a, b = Raw(port), Raw(port)
    assert a.line().startswith("220 POKER/1")
    assert b.line().startswith("220 POKER/1")
    a.send("TABLES")
    tables = a.until("210 ")
    assert any(t.startswith("210-demo2 seats=2") for t in tables)
    a.send("LOGIN rawann")
    assert a.until("230 ")[-1].startswith("230 rawann logged in; balance=1000 token=")
    b.send("LOGIN rawbob")
    b.until("230 ")
    a.send("SIT demo2 1 200")
    assert a.until("250 ")[-1] == "250 seated at demo2 seat 1 with 200"
    b.send("SIT demo2 2 200")
    b.until("250 ")
    players = {1: a, 2: b}
    seen: list[str] = []
    commit = None
    while True:
        line = a.line()
        seen.append(line)
        words = line.split()
        if words[0] == "HAND":
            commit = line.split("commit=")[1]
        elif words[0] == "TURN":
            seat, call = int(words[2]), int(words[3].split("=")[1])
            players[seat].send("ACT CALL" if call else "ACT CHECK")
        elif words[0] == "REVEAL":
            deck, secret = words[3].split("=")[1], words[4].split("=")[1]
            assert commit is not None and verify(commit, deck, secret) is None
        elif words[0] == "STACKS":
            assert sum(int(w.split(":")[1]) for w in words[2:]) == 400
        elif words[0] == "END":
            break
    assert [w for w in seen if w.startswith("DEAL")] and all(len(w.split()) == 4 for w in seen if w.startswith("DEAL"))
    assert any(w.startswith("WIN demo2") for w in seen)
    for p in (a, b):
        p.send("QUIT")
        assert p.until("221 ")[-1] == "221 bye"
        p.sock.close()


def test_pokerBotDoneWhen(server):
    """poker-bot --bots 12 --tables 2 --hands 200 finishes with every commitment verified and the chips conserved in every hand."""
    port, _ = server
    result = subprocess.run(
        [os.path.join(BIN, "poker-bot"), f"127.0.0.1:{port}", "--bots", "12", "--tables", "2", "--hands", "200",
         "--strategy", "random", "--timeout", "240"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.splitlines()[0]
    assert summary.startswith("OK: hands=")
    hands = int(summary.split("hands=")[1].split()[0])
    verified = int(summary.split("commitments verified=")[1].split(";")[0])
    conserved = int(summary.split("chips conserved in ")[1].split()[0])
    assert hands >= 200 and verified >= 200 and conserved >= 200


@pytest_twisted.ensureDeferred
async def test_clientReconnectsWithToken(server, reactor):
    """The async client logs in, sits, drops its connection, and a new connection with the guest token is back in the same seat."""
    port, _ = server
    first = await PokerClient.connect(reactor, "127.0.0.1", port)
    await first.login("clara")
    assert first.token
    await first.sit("demo1", 6, 100)
    await first.disconnect()
    again = await PokerClient.connect(reactor, "127.0.0.1", port)
    reply = await again.login("clara", first.token)
    assert "back at demo1 seat 6" in reply.text
    balance = await again.balance()
    assert balance == 900
    left = await again.leave()
    assert left.code == 251
    await again.quit()


def test_threadedTwinPlaysTheSameGame(tmp_path):
    """poker-threaded, one thread per connection over the same table code, plays 60 bot hands with every check passing and no chip made or lost in its file."""
    port = freePort()
    db = str(tmp_path / "threaded.sqlite")
    proc = subprocess.Popen(
        [os.path.join(BIN, "poker-threaded"), "--listen", f"127.0.0.1:{port}", "--guests", "--db", db, "--pause", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        waitForPort(port, proc)
        result = subprocess.run(
            [os.path.join(BIN, "poker-bot"), f"127.0.0.1:{port}", "--bots", "12", "--tables", "2", "--hands", "60",
             "--timeout", "120"],
            capture_output=True, text=True, timeout=180,
        )
    finally:
        stopProcess(proc)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: hands=")
    minted, held = audit(db)
    assert minted == held > 0
