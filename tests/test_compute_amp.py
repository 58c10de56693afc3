"""
The AMP worker door: logins, refusals and garbage over real TLS sockets on
127.0.0.1, and fuzzed command arguments against a protocol with no socket.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from compute.jobs import BadResult, Scheduler
from compute.protocol import (
    Complete, Lease, Login, LoginFailed, NotLoggedIn, Progress, Refused, WorkerDoorFactory,
)
from compute.series import chunkBounds, leibnizChunk
from compute.store import MemoryJobStore
from compute.worker import WorkerProtocol
from coursenet.accounts import PasswordChecker
from coursenet.admission import Admission
from coursenet.tls import clientEndpoint, serverContextFactory


class RecordingWorker(WorkerProtocol):
    """
    A worker end that remembers the Refused reasons it got.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[str] = []
        self.lost: Deferred = Deferred()

    @Refused.responder
    def refused(self, reason: str) -> dict:
        self.refusals.append(reason)
        return {}

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


@pytest.fixture
def door(reactor, devCert):
    """
    A coordinator's worker door over TLS on 127.0.0.1 port 0 (account
    w1:tok-en), its scheduler, and a way to connect workers.
    """
    cert, key = devCert
    scheduler = Scheduler(MemoryJobStore(), reactor=reactor)
    factory = WorkerDoorFactory(scheduler, PasswordChecker(users=[("w1", "tok-en")], reactor=reactor),
                                reactor=reactor, admission=Admission(maxConnections=2))
    server = endpoints.SSL4ServerEndpoint(reactor, 0, serverContextFactory(cert, key), interface="127.0.0.1")
    port = pytest_twisted.blockon(server.listen(factory))
    clients: list = []

    async def connect() -> RecordingWorker:
        ep = clientEndpoint(reactor, "127.0.0.1", port.getHost().port, tls=True, cafile=cert)
        proto = await ep.connect(Factory.forProtocol(RecordingWorker))
        clients.append(proto)
        return proto

    yield scheduler, connect
    for proto in clients:
        if proto.transport is not None:
            proto.transport.loseConnection()
    for proto in clients:
        pytest_twisted.blockon(proto.lost)
    scheduler.stop()
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_commandsBeforeLoginAndWrongTokensAreRefused(door):
    """Lease before Login gets NOT_LOGGED_IN, a wrong token LOGIN_FAILED, each saying what to do; the right token then logs in on the same connection."""
    scheduler, connect = door
    worker = await connect()
    with pytest.raises(NotLoggedIn, match="log in first"):
        await worker.callRemote(Lease)
    with pytest.raises(LoginFailed, match="check the NAME:TOKEN"):
        await worker.callRemote(Login, name="w1", token="wrong")
    with pytest.raises(LoginFailed):
        await worker.callRemote(Login, name="nobody", token="tok-en")
    assert await worker.callRemote(Login, name="w1", token="tok-en") == {}
    job = await scheduler.submit("leibniz", 100, 100, 20)
    lease = await worker.callRemote(Lease)
    assert (lease["job"], lease["start"], lease["stop"]) == (job, 0, 100)


@pytest_twisted.ensureDeferred
async def test_garbageRefusedDuplicateDroppedOverTheWire(door):
    """Over AMP: an out-of-range value gets BAD_RESULT with the range, the right value is accepted, a second copy is dropped as a duplicate."""
    scheduler, connect = door
    worker = await connect()
    await worker.callRemote(Login, name="w1", token="tok-en")
    job = await scheduler.submit("leibniz", 400, 200, 30)
    lease = await worker.callRemote(Lease)
    good = leibnizChunk(lease["start"], lease["stop"], lease["digits"])
    args = dict(lease=lease["lease"], job=job, index=lease["index"])
    with pytest.raises(BadResult, match="must lie in"):
        await worker.callRemote(Complete, value=-good, **args)
    again = await worker.callRemote(Lease)
    assert again["index"] == lease["index"]
    assert await worker.callRemote(Complete, value=good, **dict(args, lease=again["lease"])) == \
        {"accepted": True, "reason": "accepted"}
    duplicate = await worker.callRemote(Complete, value=good, **args)
    assert not duplicate["accepted"] and duplicate["reason"].startswith("duplicate")
    assert scheduler.status(job)["chunks_done"] == 1


@pytest_twisted.ensureDeferred
async def test_connectionOverTheCapGetsRefusedBox(door):
    """A connection over --max-connections gets a Refused box saying the server is full, then the close."""
    scheduler, connect = door
    await connect()
    await connect()
    third = await connect()
    await third.lost
    assert third.refusals and "server full" in third.refusals[0]


# Fuzzing: raw AMP boxes with arbitrary argument values, no socket.

class _Checker:
    def requestAvatarId(self, credentials):
        if credentials.password == "good":
            return succeed(credentials.username)
        return fail(UnauthorizedLogin())


_values = st.one_of(
    st.binary(max_size=24),
    st.integers(-(2**80), 2**80).map(lambda i: str(i).encode()),
    st.sampled_from([b"", b"-0", b"1e5", b" 7", b"\xff\xfe", b"good", b"w1", b"True", b"0"]),
)
_boxes = st.lists(
    st.tuples(
        st.sampled_from([b"Login", b"Lease", b"Progress", b"Complete", b"Refused", b"Nope"]),
        st.dictionaries(
            st.sampled_from([b"name", b"token", b"lease", b"job", b"index", b"value", b"done", b"reason", b"x"]),
            _values, max_size=5,
        ),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(_boxes)
def test_fuzzedCommandsAlwaysGetAnAnswerAndKeepNoGarbage(boxes):
    """Any sequence of AMP boxes with any argument values: every command that is not a waiting Lease gets exactly one answer or error, the connection stays open, and no value out of its chunk's range is kept."""
    clock = Clock()
    scheduler = Scheduler(MemoryJobStore(), reactor=clock)
    job = scheduler.submit("leibniz", 300, 100, 20).result
    factory = WorkerDoorFactory(scheduler, _Checker(), reactor=clock, admission=Admission(maxConnections=8))
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    # Log in first half of the time, so the logged-in paths get fuzzed too.
    asks = 0
    waiting = 0
    if len(boxes) % 2:
        boxes = [(b"Login", {b"name": b"w1", b"token": b"good"})] + boxes
    for command, arguments in boxes:
        asks += command != b"Refused"
        box = amp.AmpBox(arguments)
        box[b"_command"] = command
        if command != b"Refused":
            box[b"_ask"] = str(asks).encode()
        before = len(amp.parseString(transport.value())) if transport.value() else 0
        proto.dataReceived(box.serialize())
        after = len(amp.parseString(transport.value())) if transport.value() else 0
        if command == b"Lease" and after == before:
            waiting += 1
    answers = amp.parseString(transport.value()) if transport.value() else []
    tags = [a.get(b"_answer", a.get(b"_error")) for a in answers]
    assert len(tags) == len(set(tags)) and None not in tags
    assert len(answers) + waiting == asks
    assert not transport.disconnecting
    current = scheduler.jobs[job]
    for index, kept in current.values.items():
        lo, hi = chunkBounds(*current.chunkRange(index), current.digits)
        assert lo <= kept <= hi
    proto.connectionLost(connectionDone)
    scheduler.stop()


def test_progressAnswersWantedForALiveLeaseOnly():
    """Progress over AMP says wanted for a live lease and not wanted for an unknown one (no socket)."""
    clock = Clock()
    scheduler = Scheduler(MemoryJobStore(), reactor=clock)
    scheduler.submit("leibniz", 100, 100, 20)
    lease = scheduler.lease("w").result
    factory = WorkerDoorFactory(scheduler, _Checker(), reactor=clock, admission=Admission(maxConnections=8))
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.name = "w1"
    assert proto.progress(lease.id, 10) == {"wanted": True}
    assert proto.progress(lease.id + 100, 10) == {"wanted": False}
    proto.connectionLost(connectionDone)
    assert Progress.commandName == b"Progress"
