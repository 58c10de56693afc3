"""
The grades service on PostgreSQL: a real server started here (initdb as an
unprivileged user), two C{twistd grades} processes on one database seeing
each other's writes at once, concurrent writers losing no update, and the
store binding every value.
"""

from __future__ import annotations

import psycopg
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from grades.client import connect
from grades.wire import GradesError
from grades.store import PostgresStore
from tests.conftest import skipOrFail
from tests.grades_support import PASSWORD, Postgres, RunningGrades, writeAccounts
from tests.test_grades_integration import roleArgs
from tests.test_grades_server import INJECTIONS


@pytest.fixture(scope="module")
def postgres():
    try:
        server = Postgres()
    except (FileNotFoundError, RuntimeError) as e:
        skipOrFail(f"no PostgreSQL server: {e}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def twoServers(postgres, tmp_path_factory):
    """
    Two C{twistd grades} processes on the one database, demo data loaded.
    """
    d = tmp_path_factory.mktemp("grades-pg")
    passwd = writeAccounts(d)
    logs = [open(d / f"server{i}.log", "wb") for i in range(2)]
    servers = [RunningGrades(["--db", postgres.url(), "--public-demo", *roleArgs(passwd)], log) for log in logs]
    yield servers
    for server in servers:
        server.stop()
    for log in logs:
        log.close()


@pytest_twisted.ensureDeferred
async def test_seedAndWritesSeenAcrossServers(reactor, twoServers):
    """The seed's answers come from PostgreSQL, and a SET or IMPORT through one server is read through the other at once."""
    a = await connect(reactor, "127.0.0.1", twoServers[0].port, user="hal", password=PASSWORD)
    b = await connect(reactor, "127.0.0.1", twoServers[1].port, user="hal", password=PASSWORD)
    try:
        assert await gatherResults([b.name("051883261"), b.grade("HISTORY")]) == ["DAN HACKER", 93]
        assert await a.set("051883261", "HISTORY", "61") == "051883261 HISTORY 93 -> 61"
        assert await b.grade("HISTORY") == 61
        assert await b.importCSV(b"600000001,BARBARA LISKOV,NETWORKS,88\n") == "imported 1 rows, 1 grades changed"
        assert await a.name("600000001") == "BARBARA LISKOV"
        assert await a.grades() == {"NETWORKS": 88}
        assert await a.set("051883261", "HISTORY", "93") == "051883261 HISTORY 61 -> 93"
    finally:
        a.transport.loseConnection()
        b.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_concurrentWritersOnPostgres(reactor, twoServers, postgres):
    """Twenty clients on two servers each add +1 four times to one grade: exactly +80, and the audit rows chain old to new."""
    clients = await gatherResults([
        Deferred.fromCoroutine(connect(reactor, "127.0.0.1", twoServers[i % 2].port, user="mia", password=PASSWORD))
        for i in range(20)
    ])
    try:
        assert (await clients[0].set("200000002", "MATH", "5")).endswith("-> 5")

        async def adds(client) -> None:
            for _ in range(4):
                await client.set("200000002", "MATH", "+1")

        await gatherResults([Deferred.fromCoroutine(adds(c)) for c in clients])
        await clients[1].name("200000002")
        assert await clients[1].grade("MATH") == 85
    finally:
        for c in clients:
            c.transport.loseConnection()
    with psycopg.connect(postgres.url()) as conn:
        rows = conn.execute(
            "SELECT old, new FROM audit WHERE who = 'mia' AND student = '200000002' AND course = 'MATH' ORDER BY seq"
        ).fetchall()
    assert rows[-80:] == [(n, n + 1) for n in range(5, 85)]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_postgresStoreBindsValues(postgres, payload):
    """On PostgreSQL too a payload given to the store is a value: it matches nothing and is stored and read back verbatim."""
    from tests.bftp_support import FakeReactor

    fake = FakeReactor()
    store = PostgresStore(postgres.url(), fake, pool=fake.getThreadPool())
    try:
        store.setupNow({}, {}, demo=True)
        got: list = []
        store.name(payload).addCallback(got.append)
        store.setGrade("mia", "051883261", payload, 12, False).addCallback(got.append)
        store.grade("051883261", payload).addCallback(got.append)
        assert got == [None, (None, 12), 12]
        with psycopg.connect(postgres.url()) as conn:
            assert conn.execute("SELECT count(*) FROM students").fetchone()[0] >= 5
            conn.execute("DELETE FROM grades WHERE course = %s", (payload,))
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_serverSurvivesPostgresRestart(reactor, twoServers, postgres):
    """After PostgreSQL restarts, a server's reads reconnect (ERR 503 only while the database is down) and every later read answers."""
    client = await connect(reactor, "127.0.0.1", twoServers[0].port)
    try:
        assert await client.name("051883261") == "DAN HACKER"
        postgres.restart()
        refusals = []
        for _ in range(30):
            try:
                assert await client.name("051883261") == "DAN HACKER"
                break
            except GradesError as e:
                refusals.append((e.code, e.message))
        else:
            pytest.fail(f"no answer after the restart: {refusals}")
        assert set(refusals) <= {(503, "the database cannot be reached now; try again later")}
        # Every pool thread's stale connection is replaced: reads on all of them answer.
        assert await gatherResults([client.grade("MATH") for _ in range(40)]) == [87] * 40
    finally:
        client.transport.loseConnection()
