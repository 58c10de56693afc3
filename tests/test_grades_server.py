"""
The grades server's rules with no socket (tests/grades_support.py): the
seed's dialogue, the extended level, privacy from both sides, writes and
their audit, IMPORT blocks, SQL injection in every field, limits.
"""

from __future__ import annotations

import pytest
from twisted.cred.portal import IRealm
from zope.interface.verify import verifyObject

from grades.auth import GradesRealm
from grades.interfaces import IGradesUser, IGradeStore
from grades.store import Role
from tests.bftp_support import FakeReactor
from tests.grades_support import PASSWORD, SEED, SEED_REPLY, World


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


@pytest.fixture
def demo(tmp_path):
    w = World(tmp_path, publicDemo=True)
    yield w
    w.close()


def importBlock(csv: str) -> bytes:
    data = csv.encode("utf-8")
    return f"IMPORT {len(data)}\n".encode() + data


# -- the seed's dialogue --------------------------------------------------------


def test_seedDialogueByteForByte(demo):
    """In --public-demo mode the seed's dialogue, sent at once, is answered with exactly its bytes, and the connection closes."""
    peer = demo.connect()
    peer.send(SEED)
    assert peer.output() == SEED_REPLY
    assert peer.transport.disconnecting


def test_seedDialogueWithCRLF(demo):
    """A client that ends its lines with CRLF (telnet) gets the same answers."""
    peer = demo.connect()
    peer.send(SEED.replace(b"\n", b"\r\n"))
    assert peer.output() == SEED_REPLY


def test_baseLevelErrorsAreErrLines(demo):
    """At the base level a refusal is one line ERR <code> <text>: unknown student, no grade, GRADE before NAME, before HELLO."""
    peer = demo.connect()
    assert peer.ask("NAME 051883261") == ["ERR 409 say HELLO first"]
    assert peer.ask("HELLO") == ["READY"]
    assert peer.ask("GRADE MATH") == ["ERR 409 no student selected: NAME id first"]
    assert peer.ask("NAME 999") == ["ERR 404 no student 999"]
    assert peer.ask("NAME 051883261") == ["DAN HACKER"]
    assert peer.ask("GRADE NETWORKS") == ["ERR 404 no grade in NETWORKS for 051883261"]
    assert peer.ask("COURSES") == ["ERR 409 COURSES is an extended command: start with HELLO GRADES/2"]


def test_withoutDemoTheSeedNeedsALogin(world):
    """Without --public-demo, NAME before a login is refused with 401, and the student's own dialogue works after USER/PASS."""
    peer = world.connect()
    assert peer.ask("HELLO") == ["READY"]
    assert peer.ask("NAME 051883261") == ["ERR 401 log in first: USER name, then PASS password"]
    assert peer.ask("USER dan") == ["OK send PASS for dan"]
    assert peer.ask(f"PASS {PASSWORD}") == ["OK logged in as dan (student 051883261)"]
    peer.send(b"NAME 051883261\nGRADE MATH\nGRADE HISTORY\nEND\n")
    assert peer.output() == b"DAN HACKER\n87\n93\nBYE\n"


def test_wrongPasswordThenClose(world):
    """A wrong password gets ERR 430; the third closes the connection with ERR 421."""
    peer = world.connect()
    peer.send("HELLO")
    peer.lines()
    for _ in range(2):
        assert peer.ask("USER dan")[0].startswith("OK")
        assert peer.ask("PASS wrong") == ["ERR 430 login incorrect"]
    peer.send("USER dan")
    assert peer.ask("PASS wrong")[-1] == "ERR 421 too many failed logins; closing"
    assert peer.transport.disconnecting


# -- the extended level -----------------------------------------------------------


def test_helloNegotiatesTheExtendedLevel(world):
    """HELLO GRADES/2 answers READY GRADES/2 with the limits; replies then carry OK; an unknown level gets 505."""
    peer = world.connect()
    assert peer.ask("HELLO GRADES/9") == [
        "ERR 505 GRADES/9 is not spoken here: HELLO for the base level, or HELLO GRADES/2"
    ]
    assert peer.ask("HELLO grades/2") == ["READY GRADES/2 max-line=512 max-import=1048576 starttls=no"]
    peer.send(f"USER dan\nPASS {PASSWORD}")
    peer.lines()
    assert peer.ask("NAME 051883261") == ["OK DAN HACKER"]
    assert peer.ask("GRADE math") == ["OK 87"]
    assert peer.ask("HELLO") == ["ERR 409 HELLO was already said"]


def test_studentQueries(world):
    """A student's GRADES, COURSES, AVG, RANK and WHOAMI answer about their own record."""
    peer = world.extended("dan")
    assert peer.ask("WHOAMI") == ["OK dan student 051883261"]
    assert peer.ask("GRADES") == ["LIST 2", "HISTORY 93", "MATH 87"]
    assert peer.ask("COURSES") == ["LIST 2", "HISTORY", "MATH"]
    # MATH: 87, 98, 95, 100 in the demo data.
    assert peer.ask("AVG MATH") == ["OK 95.00"]
    assert peer.ask("RANK MATH") == ["OK 4 of 4"]
    assert peer.ask("RANK HISTORY") == ["OK 1 of 3"]


def test_pipelinedCommandsAnsweredInOrder(world):
    """Many commands in one read are answered in the order sent, one answer each."""
    peer = world.extended("dan")
    peer.send(b"GRADE MATH\nNOPE\nGRADE HISTORY\nNAME 051883261\nGRADES\nRANK MATH\n" * 3)
    assert peer.lines() == [
        "OK 87", "ERR 400 unknown command NOPE; try HELP", "OK 93", "OK DAN HACKER",
        "LIST 2", "HISTORY 93", "MATH 87", "OK 4 of 4",
    ] * 3


def test_overlappedLookupsAnsweredInOrder(tmp_path):
    """Pipelined NAME and GRADE lookups run at once; when the database answers them in reverse, the replies still come in command order."""
    from tests.grades_support import HeldPool

    pool = HeldPool()
    w = World(tmp_path, pool=pool)
    peer = w.extended("mia")
    pool.holding = True
    peer.send(b"NAME 051883261\nNAME 200000001\nNAME 999\nGRADE MATH\nBAD\nGRADE MATH\n")
    assert peer.lines() == []
    assert len(pool.calls) == 3  # the three NAMEs; GRADE waits for the selection
    while pool.calls:
        pool.run(reversed)
    assert peer.lines() == [
        "OK DAN HACKER", "OK ADA LOVELACE", "ERR 404 no student 999 in your courses", "OK 98",
        "ERR 400 unknown command BAD; try HELP", "OK 98",
    ]
    # A refusal known before any query (HISTORY is not mia's) waits its turn too.
    peer.send(b"GRADE MATH\nGRADE HISTORY\nGRADE MATH\nNOOP\n")
    assert len(pool.calls) == 2 and peer.lines() == []
    pool.run(reversed)
    assert peer.lines() == ["OK 98", "ERR 403 you do not teach HISTORY", "OK 98", "OK nothing done"]
    # An IMPORT block behind a pending lookup is read as its block, not as commands.
    peer.send(b"NAME 051883261\n" + importBlock("300000001,LINUS TORVALDS,MATH,64\n") + b"NOOP\n")
    while pool.calls:
        pool.run(list)
    assert peer.lines() == ["OK DAN HACKER", "OK imported 1 rows, 1 grades changed", "OK nothing done"]
    w.close()


def test_instructorStatisticsAndExport(world):
    """An instructor's STATS gives count, mean, median and a histogram line; EXPORT the CSV of their courses only."""
    peer = world.extended("mia")
    assert peer.ask("COURSES") == ["LIST 1", "MATH"]
    assert peer.ask("STATS MATH") == [
        "LIST 2",
        "count 4 mean 95.00 median 96.5",
        "histogram 0-9:0 10-19:0 20-29:0 30-39:0 40-49:0 50-59:0 60-69:0 70-79:0 80-89:1 90-100:3",
    ]
    assert peer.ask("EXPORT") == [
        "LIST 5", "id,name,course,grade",
        "051883261,DAN HACKER,MATH,87", "200000001,ADA LOVELACE,MATH,98",
        "200000002,ALAN TURING,MATH,95", "200000004,EDSGER DIJKSTRA,MATH,100",
    ]


# -- privacy, from both sides ---------------------------------------------------------


def test_studentSeesOnlyTheirOwnRecord(world):
    """A student is refused another student's record (403, existing or not) and the course statistics."""
    peer = world.extended("dan")
    assert peer.ask("NAME 200000001") == ["ERR 403 you may see only your own record"]
    assert peer.ask("NAME 999999") == ["ERR 403 you may see only your own record"]
    assert peer.ask("STATS MATH") == ["ERR 403 you do not teach MATH"]
    assert peer.ask("AVG NETWORKS") == ["ERR 403 you do not take NETWORKS"]
    assert peer.ask("EXPORT") == ["ERR 403 EXPORT is for instructors"]
    assert peer.ask("SET 051883261 MATH 100") == ["ERR 403 you do not teach MATH"]
    assert peer.ask("GRADE MATH") == ["OK 87"]


def test_instructorSeesOnlyTheirCourses(world):
    """An instructor finds only students of their courses, their grades in those courses only, and may change only those."""
    peer = world.extended("mia")
    # GRACE HOPPER takes NETWORKS and HISTORY, not MATH.
    assert peer.ask("NAME 200000003") == ["ERR 404 no student 200000003 in your courses"]
    assert peer.ask("NAME 051883261") == ["OK DAN HACKER"]
    assert peer.ask("GRADES") == ["LIST 1", "MATH 87"]
    assert peer.ask("GRADE HISTORY") == ["ERR 403 you do not teach HISTORY"]
    assert peer.ask("STATS HISTORY") == ["ERR 403 you do not teach HISTORY"]
    assert peer.ask("EXPORT HISTORY") == ["ERR 403 you do not teach HISTORY"]
    assert peer.ask("SET 051883261 HISTORY 10") == ["ERR 403 you do not teach HISTORY"]
    # Ids outside mia's courses, existing or not, look the same, for NAME and for SET.
    assert peer.ask("NAME 999999") == ["ERR 404 no student 999999 in your courses"]
    assert peer.ask("SET 200000003 MATH 50") == ["ERR 404 no student 200000003 in your courses"]
    assert peer.ask("SET 999999 MATH 50") == ["ERR 404 no student 999999 in your courses"]


def test_accountWithoutRoleSeesNothing(world):
    """An account that is neither student nor instructor logs in but sees no record."""
    peer = world.extended("zed")
    assert peer.ask("WHOAMI") == ["OK zed none"]
    assert peer.ask("NAME 051883261") == ["ERR 403 you may see only your own record"]
    assert peer.ask("GRADES") == ["ERR 409 no student selected: NAME id first"]


def test_demoGuestCannotWrite(demo):
    """In --public-demo mode a guest reads everything but SET and IMPORT need an instructor's login (401)."""
    peer = demo.extended()
    assert peer.ask("WHOAMI") == ["OK guest"]
    assert peer.ask("SET 051883261 MATH 1") == ["ERR 401 log in as an instructor first: USER name, then PASS password"]
    peer.send(importBlock("1,A B,MATH,1\n"))
    assert peer.lines() == ["ERR 401 IMPORT is for instructors; log in as one"]
    assert peer.ask("NAME 051883261") == ["OK DAN HACKER"]
    assert peer.ask("GRADE MATH") == ["OK 87"]


# -- writes and the audit trail -------------------------------------------------------------


def test_setWritesAnAuditRow(world):
    """SET answers old -> new, a change (+N) adds to the grade, and each write leaves an audit row (who, old, new)."""
    peer = world.extended("mia")
    assert peer.ask("SET 051883261 MATH 90") == ["OK 051883261 MATH 87 -> 90"]
    assert peer.ask("SET 051883261 MATH +5") == ["OK 051883261 MATH 90 -> 95"]
    assert peer.ask("SET 051883261 MATH +6") == ["ERR 400 that makes 101; a grade is 0 to 100"]
    assert peer.ask("SET 999 MATH 5") == ["ERR 404 no student 999 in your courses"]
    rows = world.store.audit(10)
    got = []
    rows.addCallback(got.append)
    assert [(who, sid, course, old, new) for _, who, sid, course, old, new in got[0][:2]] == [
        ("mia", "051883261", "MATH", 90, 95), ("mia", "051883261", "MATH", 87, 90),
    ]
    student = world.extended("dan")
    assert student.ask("GRADE MATH") == ["OK 95"]


def test_importAndExportRoundTrip(world):
    """IMPORT reads a length-prefixed CSV block (header optional), adds students and grades, and the command after it runs."""
    peer = world.extended("mia")
    csv = "id,name,course,grade\n300000001,LINUS TORVALDS,MATH,64\n051883261,DAN HACKER,MATH,88\r\n"
    peer.send(importBlock(csv) + b"NAME 300000001\nGRADE MATH\n")
    assert peer.lines() == ["OK imported 2 rows, 2 grades changed", "OK LINUS TORVALDS", "OK 64"]


def test_importIsAllOrNothing(world):
    """A bad line, or a course not taught, refuses the whole IMPORT naming the line, and nothing is changed."""
    peer = world.extended("mia")
    peer.send(importBlock("300000001,LINUS TORVALDS,MATH,64\n300000002,X,MATH,101\n"))
    assert peer.lines() == ["ERR 400 CSV line 2: a grade is 0 to 100, not 101"]
    peer.send(importBlock("300000001,LINUS TORVALDS,MATH,64\n300000002,KEN THOMPSON,HISTORY,70\n"))
    assert peer.lines() == ["ERR 403 CSV row 2: you do not teach HISTORY; nothing imported"]
    peer.send(importBlock("300000001,LINUS TORVALDS,MATH,64\n051883261,DANIEL HACKER,MATH,70\n"))
    assert peer.lines() == [
        "ERR 409 CSV row 2: student 051883261 is on record under another name than DANIEL HACKER; nothing imported"
    ]
    assert peer.ask("NAME 300000001") == ["ERR 404 no student 300000001 in your courses"]


def test_refusedImportBlockIsSkipped(world):
    """An IMPORT refused (a student's, or over --max-import) still consumes its block: the next line is a command again."""
    peer = world.extended("dan")
    peer.send(importBlock("GRADE MATH\n") + b"GRADE MATH\n")
    assert peer.lines() == ["ERR 403 IMPORT is for instructors; log in as one", "OK 87"]


def test_importOverTheLimit(tmp_path):
    """A block over --max-import is refused with 413 and skipped without being kept."""
    w = World(tmp_path, maxImport=10)
    peer = w.extended("mia")
    peer.send(importBlock("300000001,LINUS TORVALDS,MATH,64\n") + b"NOOP\n")
    assert peer.lines() == ["ERR 413 33 bytes is over the IMPORT limit of 10; block skipped", "OK nothing done"]
    w.close()


# -- SQL injection in every field -----------------------------------------------------------

INJECTIONS = [
    "1' OR '1'='1",
    "051883261'; DROP TABLE grades;--",
    "MATH' UNION SELECT name FROM students--",
    "\"; DELETE FROM students; --",
    "1; UPDATE grades SET grade=100",
    "%s%s%s",
    "?",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injectionInEveryCommandField(world, payload):
    """Injection payloads in NAME, GRADE, SET, RANK, AVG, STATS, EXPORT, USER, PASS and IMPORT fields are refused and change nothing."""
    peer = world.extended("mia")
    for line in (f"NAME {payload}", f"GRADE {payload}", f"SET {payload} MATH 1", f"SET 051883261 {payload} 1",
                 f"SET 051883261 MATH {payload}", f"AVG {payload}", f"STATS {payload}", f"EXPORT {payload}",
                 f"RANK {payload}"):
        (reply,) = peer.ask(line)
        assert reply.startswith("ERR 400 "), (line, reply)
    for csv in (f"{payload},A B,MATH,1", f"1,{payload},MATH,1", f"1,A B,{payload},1", f"1,A B,MATH,{payload}"):
        peer.send(importBlock(csv))
        (reply,) = peer.lines()
        assert reply.startswith("ERR 400 CSV line 1"), (csv, reply)
    other = world.connect()
    other.send(f"HELLO GRADES/2\nUSER {payload}\nPASS {payload}\n".encode())
    _, user, password = other.lines()
    assert (user, password) in [
        (f"OK send PASS for {payload}", "ERR 430 login incorrect"),
        ("ERR 400 usage: USER name", "ERR 409 send USER first"),
    ]
    student = world.extended("dan")
    assert student.ask("GRADES") == ["LIST 2", "HISTORY 93", "MATH 87"]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_storeTakesInjectionAsData(world, payload):
    """Below the parser, the store's queries bind values: a payload is a value that matches nothing and is stored verbatim."""
    got: list = []
    world.store.name(payload).addCallback(got.append)
    world.store.grade("051883261", payload).addCallback(got.append)
    world.store.role(payload).addCallback(got.append)
    assert got[:2] == [None, None] and got[2] == Role(payload)
    world.store.setGrade("mia", "051883261", payload, 12, False).addCallback(got.append)
    world.store.grades("051883261").addCallback(got.append)
    assert got[3] == (None, 12)
    assert got[4] == sorted([("HISTORY", 93), ("MATH", 87), (payload, 12)])


# -- limits and interfaces --------------------------------------------------------------------


def test_lineTooLong(world):
    """A line over 512 bytes gets ERR 413 and is skipped; the next line is read as usual."""
    peer = world.extended("dan")
    peer.send(b"NAME " + b"1" * 600 + b"\nGRADE MATH\n")
    assert peer.lines() == ["ERR 413 line too long: the limit is 512 bytes; line ignored", "OK 87"]


def test_badBytesAreRefused(world):
    """A line that is not UTF-8 or carries control characters gets ERR 400, and the connection goes on."""
    peer = world.extended("dan")
    peer.send(b"NAME \xff\xfe\nGRADE \x01MATH\nGRADE MATH\n")
    assert peer.lines() == [
        "ERR 400 the line is not UTF-8 text",
        "ERR 400 control characters are not allowed in a command",
        "OK 87",
    ]


def test_idleTimeout(tmp_path):
    """A connection silent for --idle-timeout seconds is told ERR 421 and closed."""
    w = World(tmp_path, idleTimeout=30)
    peer = w.extended()
    w.reactor.advance(31)
    assert peer.lines() == ["ERR 421 idle for 30 seconds; closing"]
    assert peer.transport.disconnecting
    w.close()


def test_admissionPerAddress(tmp_path):
    """Past --max-per-address the server answers ERR 421 with the reason and closes."""
    w = World(tmp_path, maxPerAddress=1)
    w.connect()
    peer = w.connect()
    assert peer.lines() == ["ERR 421 too many connections from 127.0.0.1 (limit 1); try again later"]
    w.close()


def test_starttlsRequiredForLogin(tmp_path, devCert):
    """With TLS configured, USER on a plain connection gets 431, and STARTTLS drops what was pipelined after it."""
    from coursenet.tls import serverContextFactory

    w = World(tmp_path, tls=serverContextFactory(*devCert))
    peer = w.connect()
    assert peer.ask("HELLO GRADES/2")[0].endswith("starttls=yes")
    assert peer.ask("USER dan") == ["ERR 431 log in over TLS: STARTTLS first"]
    peer.proto.transport.startTLS = lambda ctx: setattr(peer, "tls", ctx)
    peer.send(b"STARTTLS\nUSER injected\n")
    assert peer.lines() == ["OK begin TLS"]
    assert peer.tls is w.factory.tls
    w.close()


def test_interfaces(world):
    """The SQLite store provides IGradeStore, a Role IGradesUser, the realm IRealm, with every declared method."""
    assert verifyObject(IGradeStore, world.store)
    assert verifyObject(IGradesUser, Role("a", "1", frozenset({"MATH"})))
    assert verifyObject(IRealm, GradesRealm(world.store))


def test_loginsAndWritesAreLoggedWithoutPasswords(world):
    """A login ('127.0.0.1:PORT [mia] logged in'), a failed login and a SET are logged (who, what), and no log event carries a password or an address repr."""
    from twisted.internet.testing import EventLoggingObserver
    from twisted.logger import formatEvent, globalLogPublisher

    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        peer = world.connect()
        port = peer.transport.getPeer().port
        peer.send(b"HELLO GRADES/2\nUSER mia\nPASS wrong-secret-1\nUSER mia\n")
        peer.send(f"PASS {PASSWORD}\nSET 051883261 MATH 91\n".encode())
        assert peer.lines()[-1] == "OK 051883261 MATH 87 -> 91"
    finally:
        globalLogPublisher.removeObserver(observer)
    texts = [formatEvent(e) for e in observer]
    assert f"127.0.0.1:{port} [mia] logged in (instructor)" in texts, texts
    assert not any("IPv4Address" in t for t in texts)
    assert any("mia set 051883261 MATH 87 -> 91" in t for t in texts), texts
    assert any("failed login for mia" in t for t in texts), texts
    assert not any("wrong-secret-1" in t or PASSWORD in t for t in texts)
    assert not any("wrong-secret-1" in repr(e) or PASSWORD in repr(e) for e in observer)


def test_tapOptions(tmp_path):
    """twistd grades' options reach the store (roles, demo data) and the factory (limits, demo mode); bad values are usage errors."""
    from twisted.python import usage

    from grades import tap

    options = tap.Options()
    options.parseOptions([
        "--db", f"sqlite:{tmp_path / 'g.sqlite'}", "--public-demo", "--user", "ann:pw", "--student", "ann:051883261",
        "--instructor", "bob:math,cs-101", "--instructor", "bob:HISTORY", "--idle-timeout", "9", "--max-import", "100",
        "--max-per-address", "3",
    ])
    fake = FakeReactor()
    store = tap.makeStore(options, reactor=fake, pool=fake.getThreadPool())
    got: list = []
    store.role("bob").addCallback(got.append)
    store.role("ann").addCallback(got.append)
    store.name("051883261").addCallback(got.append)
    assert got == [Role("bob", None, frozenset({"MATH", "CS-101", "HISTORY"})), Role("ann", "051883261"), "DAN HACKER"]
    factory = tap.makeFactory(options, store, reactor=fake)
    assert (factory.publicDemo, factory.idleTimeout, factory.maxImport, factory.admission.maxPerAddress) == (
        True, 9, 100, 3)
    store.close()
    for bad in (["--student", "ann"], ["--student", "ann:12x"], ["--instructor", "bob:"], ["--db", "mysql://x"]):
        options = tap.Options()
        with pytest.raises(usage.UsageError):
            options.parseOptions(bad)
            tap.makeStore(options, pool=object())


def test_workerPoolRunsCallsInItsThreadsAndStops():
    """The store's WorkerPool runs each call in one of its threads, hands back results and failures, and stop() ends every thread."""
    import queue
    import threading

    from grades.store import WorkerPool

    pool = WorkerPool(3, "test")
    pool.start()
    results: queue.SimpleQueue = queue.SimpleQueue()
    pool.callInThreadWithCallback(lambda ok, r: results.put((ok, r)), threading.current_thread)
    pool.callInThreadWithCallback(lambda ok, r: results.put((ok, r)), int, "x")
    got = [results.get(timeout=10), results.get(timeout=10)]
    threads = [r for ok, r in got if ok]
    failures = [r for ok, r in got if not ok]
    assert len(threads) == 1 and threads[0].name.startswith("test-") and threads[0] is not threading.current_thread()
    assert len(failures) == 1 and failures[0].check(ValueError)
    workers = list(pool._threads)
    pool.stop()
    assert not pool.started and not any(t.is_alive() for t in workers)
