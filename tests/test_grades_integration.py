"""
The grades service over real sockets on 127.0.0.1: the seed's dialogue
through nc and a raw socket against C{twistd grades}, its threaded and
forking twins, the C{grades} console script, the async client (pipelining,
IMPORT, STARTTLS), and concurrent writers through two server processes on
one SQLite file.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from grades.client import connect
from grades.wire import GradesError
from tests.grades_support import (
    INSTRUCTORS,
    PASSWORD,
    SEED,
    SEED_REPLY,
    STUDENTS,
    Raw,
    RunningGrades,
    writeAccounts,
)

BIN = os.path.dirname(sys.executable)


def roleArgs(passwd: str) -> list[str]:
    args = ["--passwd", passwd]
    for account, sid in STUDENTS.items():
        args += ["--student", f"{account}:{sid}"]
    for account, courses in INSTRUCTORS.items():
        args += ["--instructor", f"{account}:{','.join(courses)}"]
    return args


@pytest.fixture(scope="module")
def demoServer(tmp_path_factory):
    """
    C{twistd grades --public-demo} on a fresh SQLite file, with the test
    accounts.
    """
    d = tmp_path_factory.mktemp("grades")
    log = open(d / "server.log", "wb")
    server = RunningGrades(["--public-demo", "--db", f"sqlite:{d / 'g.sqlite'}", *roleArgs(writeAccounts(d))], log)
    yield server
    server.stop()
    log.close()


def test_doneWhenThroughNetcat(demoServer):
    """The issue's Done-when command, printf ... | nc 127.0.0.1 PORT, prints exactly READY, DAN HACKER, 87, 93, BYE, one per line."""
    nc = shutil.which("nc")
    assert nc is not None, "nc is missing: the Makefile's APT_PACKAGES installs netcat-openbsd"
    out = subprocess.run(
        f"printf 'HELLO\\nNAME 051883261\\nGRADE MATH\\nGRADE HISTORY\\nEND\\n' | {nc} 127.0.0.1 {demoServer.port}",
        shell=True, capture_output=True, timeout=30, check=True,
    )
    assert out.stdout == b"READY\nDAN HACKER\n87\n93\nBYE\n"
    assert out.stdout.decode().splitlines() == ["READY", "DAN HACKER", "87", "93", "BYE"]


def test_seedDialogueOverRawSocket(demoServer):
    """The seed's dialogue one line at a time over a raw socket: each answer as the seed shows it, then the close."""
    raw = Raw(demoServer.port)
    try:
        assert raw.ask("HELLO") == "READY"
        assert raw.ask("NAME 051883261") == "DAN HACKER"
        assert raw.ask("GRADE MATH") == "87"
        assert raw.ask("GRADE HISTORY") == "93"
        raw.send(b"END\n")
        assert raw.rest() == b"BYE\n"
    finally:
        raw.close()


def test_consoleScript(demoServer, tmp_path):
    """`grades HOST:PORT name ID COURSE...` prints the name and grades; `grades ... import file.csv` imports as an instructor (password from GRADES_PASSWORD)."""
    script = os.path.join(BIN, "grades")
    where = f"127.0.0.1:{demoServer.port}"
    out = subprocess.run([script, where, "name", "051883261", "MATH", "HISTORY"],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "DAN HACKER\n87\n93\n"), out.stderr
    csv = tmp_path / "marks.csv"
    csv.write_text("id,name,course,grade\n400000001,BARBARA LISKOV,MATH,91\n")
    env = {**os.environ, "GRADES_PASSWORD": PASSWORD}
    out = subprocess.run([script, where, "--user", "mia", "--no-progress", "import", str(csv)],
                         capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert (out.returncode, out.stdout) == (0, "imported 1 rows, 1 grades changed\n"), out.stderr
    out = subprocess.run([script, where, "name", "400000001", "HISTORY"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (1, "BARBARA LISKOV\n")
    assert out.stderr == "grades: 404 no grade in HISTORY for 400000001\n"


@pytest.mark.parametrize("implementation", ["threaded", "forking"])
def test_twinsAnswerTheSeed(implementation, tmp_path):
    """The thread-per-connection and process-per-connection twins answer the seed's dialogue byte for byte, and enforce logins."""
    log = open(tmp_path / "server.log", "wb")
    server = RunningGrades(["--public-demo", "--db", f"sqlite:{tmp_path / 'g.sqlite'}", *roleArgs(writeAccounts(tmp_path))],
                           log, implementation)
    try:
        raw = Raw(server.port)
        raw.send(SEED)
        assert raw.rest() == SEED_REPLY
        raw.close()
        raw = Raw(server.port)
        raw.send(f"HELLO GRADES/2\nUSER dan\nPASS {PASSWORD}\nNAME 200000001\nGRADES\n".encode())
        assert [raw.line() for _ in range(6)][1:] == [
            "OK send PASS for dan", "OK logged in as dan (student 051883261)",
            "ERR 403 you may see only your own record", "LIST 2", "HISTORY 93",
        ]
        raw.close()
    finally:
        server.stop()
        log.close()


@pytest_twisted.ensureDeferred
async def test_clientPipelinesAndImports(reactor, demoServer):
    """The async client pipelines calls (answers matched in order, a refusal failing only its own) and IMPORTs a block."""
    client = await connect(reactor, "127.0.0.1", demoServer.port)
    try:
        results = await gatherResults([
            client.name("051883261"), client.grade("MATH"), client.grade("HISTORY"), client.grades(), client.rank("MATH"),
        ])
        assert results[:3] == ["DAN HACKER", 87, 93]
        assert results[3] == {"HISTORY": 93, "MATH": 87}
        assert results[4][1] >= 4
        with pytest.raises(GradesError) as e:
            await client.grade("NETWORKS")
        assert e.value.code == 404
        await client.login("hal", PASSWORD)
        sent: list[int] = []
        data = "".join(f"5{i:08d},STUDENT NUMBER,NETWORKS,{i % 101}\n" for i in range(3000)).encode()
        assert await client.importCSV(data, sent.append) == "imported 3000 rows, 3000 grades changed"
        assert sum(sent) == len(data) and len(sent) > 1
        csv = await client.export("NETWORKS")
        assert "500000100,STUDENT NUMBER,NETWORKS,100\n" in csv
        assert await client.end() == "BYE"
    finally:
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_starttlsThenLogin(reactor, tmp_path, devCert):
    """With --tls-cert, a client logs in after STARTTLS (certificate verified); without it, USER is refused with 431."""
    cert, key = devCert
    log = open(tmp_path / "server.log", "wb")
    server = RunningGrades(["--public-demo", "--db", f"sqlite:{tmp_path / 'g.sqlite'}", "--tls-cert", cert, "--tls-key", key,
                            "--tls-port", "0", *roleArgs(writeAccounts(tmp_path))], log)
    try:
        plain = await connect(reactor, "127.0.0.1", server.port)
        with pytest.raises(GradesError) as e:
            await plain.login("dan", PASSWORD)
        assert e.value.code == 431
        plain.transport.loseConnection()
        client = await connect(reactor, "127.0.0.1", server.port, starttls=True, cafile=cert,
                               user="dan", password=PASSWORD)
        assert client.transport.getHandle().get_cipher_name()
        assert await client.name("051883261") == "DAN HACKER"
        assert await client.grades() == {"HISTORY": 93, "MATH": 87}
        await client.end()
    finally:
        server.stop()
        log.close()


@pytest_twisted.ensureDeferred
async def test_concurrentWritersLoseNoUpdate(reactor, tmp_path):
    """Twenty clients on two server processes sharing one SQLite file each add +1 four times: the grade rises by exactly 80, one audit row each."""
    db = tmp_path / "g.sqlite"
    passwd = writeAccounts(tmp_path)
    logs = [open(tmp_path / f"server{i}.log", "wb") for i in range(2)]
    servers = [RunningGrades(["--db", f"sqlite:{db}", "--public-demo", *roleArgs(passwd)], log) for log in logs]
    try:
        clients = await gatherResults([
            Deferred.fromCoroutine(connect(reactor, "127.0.0.1", servers[i % 2].port, user="mia", password=PASSWORD))
            for i in range(20)
        ])
        assert await clients[0].set("051883261", "MATH", "10") == "051883261 MATH 87 -> 10"

        async def adds(client) -> None:
            for _ in range(4):
                await client.set("051883261", "MATH", "+1")

        await gatherResults([Deferred.fromCoroutine(adds(c)) for c in clients])
        for server in servers:
            check = await connect(reactor, "127.0.0.1", server.port, user="mia", password=PASSWORD)
            await check.name("051883261")
            assert await check.grade("MATH") == 90
            await check.end()
        for c in clients:
            c.transport.loseConnection()
    finally:
        for server in servers:
            server.stop()
        for log in logs:
            log.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT old, new FROM audit WHERE who = 'mia' AND course = 'MATH' AND student = '051883261' ORDER BY seq"
        ).fetchall()
    assert rows[0] == (87, 10)
    assert rows[1:] == [(n, n + 1) for n in range(10, 90)]
