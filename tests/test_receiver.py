"""
The shared command receiver (coursenet.receiver) and admission
(coursenet.admission), in memory: framing, pipelining, output
back-pressure and admission, whatever the client does.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject

from coursenet import admission as admissionModule
from coursenet.admission import Admission, AdmittingFactory, Busy
from coursenet.receiver import CommandReceiver, Outbox


class Echo(CommandReceiver):
    """
    Answers each line with C{ok <line>}; lines in C{self.pending} get a
    Deferred the test fires.
    """

    maxLineLength = 10
    rawAllowed = True

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.tooLong: list[bytes] = []
        self.bare: list[bytes] = []
        self.pending: dict[bytes, Deferred] = {}
        self.raw: list[bytes] = []

    @staticmethod
    def busyReply(text: str) -> bytes:
        return f"BUSY {text}\r\n".encode()

    def lineReceived(self, line: bytes):
        self.lines.append(line)
        self.transport.write(b"ok " + line + b"\r\n")
        if line == b"RAW" and self.rawAllowed:
            self.setRawMode()
        return self.pending.get(line)

    def rawDataReceived(self, data: bytes) -> None:
        self.raw.append(data)
        if b"." in data:
            i = data.index(b".")
            self.raw[-1] = data[:i]
            self.setLineMode(data[i + 1 :])

    def lineLengthExceeded(self, line: bytes) -> None:
        self.tooLong.append(line)
        self.transport.write(b"too long\r\n")

    def bareLineFeed(self, line: bytes):
        self.bare.append(line)


class EchoFactory(AdmittingFactory, Factory):
    protocol = Echo

    def __init__(self, clock, **kwargs) -> None:
        self.reactor = clock
        self.admission = Admission(**kwargs)


class BufferingTransport(StringTransport):
    """
    A transport that, like Twisted's TCP one, pauses its streaming
    producer once more than C{bufferSize} bytes wait, and resumes it when
    L{drain} empties the buffer.
    """

    bufferSize = 64

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.io.getvalue()) > self.bufferSize and self.streaming:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.producer is not None and self.streaming:
            self.producer.resumeProducing()
        return data


def connect(proto=None, transport=None, clock=None):
    proto = proto or Echo()
    proto.factory = EchoFactory(clock or Clock())
    transport = transport or BufferingTransport()
    proto.makeConnection(transport)
    return proto, transport


# -- framing ----------------------------------------------------------------------


def test_linesEndAtLFWithOrWithoutCR():
    """A line ends at LF; a CR before it is removed, so both endings give the same line."""
    p, t = connect()
    p.dataReceived(b"one\r\ntwo\nthree")
    assert p.lines == [b"one", b"two"]
    p.dataReceived(b"\r\n")
    assert p.lines == [b"one", b"two", b"three"]


def test_lineLimitCountsTheSameWithEitherEnding():
    """maxLineLength bytes pass with CRLF or LF; one more is refused with either ending."""
    p, t = connect()
    p.dataReceived(b"A" * 10 + b"\r\n" + b"B" * 10 + b"\n" + b"C" * 11 + b"\r\n" + b"D" * 11 + b"\n")
    assert p.lines == [b"A" * 10, b"B" * 10]
    assert p.tooLong == [b"C" * 10, b"D" * 10]


def test_overlongLineInPiecesReportedOnceThenSkipped():
    """An overlong line arriving in pieces is reported once, skipped to its LF, and the next line runs."""
    p, t = connect()
    for _ in range(5):
        p.dataReceived(b"x" * 7)
    p.dataReceived(b"tail\r\nNEXT\r\n")
    assert p.tooLong == [b"x" * 10]
    assert p.lines == [b"NEXT"]


def test_partialLineWithTrailingCRIsNotTooLong():
    """A line of exactly the limit whose CR arrived without its LF yet is still fine."""
    p, t = connect()
    p.dataReceived(b"A" * 10 + b"\r")
    assert p.tooLong == []
    p.dataReceived(b"\n")
    assert p.lines == [b"A" * 10]


def test_bareLineFeedGoesToItsHookWhenCRLFRequired():
    """With requireCRLF, a line ended by a bare LF goes to bareLineFeed, not lineReceived."""
    p = Echo()
    p.requireCRLF = True
    p, t = connect(p)
    p.dataReceived(b"bare\nok\r\n")
    assert p.bare == [b"bare"]
    assert p.lines == [b"ok"]


def test_rawModeAndBackToLines():
    """setRawMode hands bytes over as they are; setLineMode(rest) goes on with lines in the same read."""
    p, t = connect()
    p.dataReceived(b"RAW\r\nabc\r\ndef.NEXT\r\n")
    assert p.raw == [b"abc\r\ndef"]
    assert p.lines == [b"RAW", b"NEXT"]


@given(st.lists(st.binary(max_size=30), max_size=20))
def test_fuzzFramingDoesNotDependOnHowBytesAreSplit(chunks):
    """However the bytes are split into reads, the lines received and refused are those of a simple model."""
    p = Echo()
    p.rawAllowed = False
    p, t = connect(p)
    for c in chunks:
        p.dataReceived(c)
        t.clear()
    data = b"".join(chunks)
    expectedOK, expectedLong = [], []
    for raw in data.split(b"\n")[:-1]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        (expectedOK if len(line) <= 10 else expectedLong).append(line)
    assert p.lines == expectedOK
    # A last, unfinished line already too long is reported before its end.
    rest = data.split(b"\n")[-1]
    tail = [rest[:10]] if len(rest) - rest.endswith(b"\r") > 10 else []
    assert p.tooLong == [line[:10] for line in expectedLong] + tail


# -- pipelining -------------------------------------------------------------------


def test_pendingCommandHoldsTheNextLines():
    """While a command's Deferred is pending no later line runs, and reading is paused; they run in order after."""
    p, t = connect()
    d = p.pending[b"slow"] = Deferred()
    p.dataReceived(b"slow\r\nfast1\r\nfast2\r\n")
    assert p.lines == [b"slow"]
    assert p.readingPaused
    d.callback(None)
    assert p.lines == [b"slow", b"fast1", b"fast2"]
    assert not p.readingPaused


def test_chainedDeferredStillCountsAsPending():
    """A Deferred that has fired but waits on another it returned still holds the next lines."""
    p, t = connect()
    inner: Deferred = Deferred()
    outer = succeed(None).addCallback(lambda _: inner)
    assert outer.called  # fired, yet waiting on inner
    p.pending[b"chained"] = outer
    p.dataReceived(b"chained\r\nnext\r\n")
    assert p.lines == [b"chained"]
    inner.callback(None)
    assert p.lines == [b"chained", b"next"]


def test_alreadyFiredDeferredDoesNotPause():
    """A command that finished at once lets the next line run in the same read."""
    p, t = connect()
    p.pending[b"done"] = succeed(None)
    p.dataReceived(b"done\r\nnext\r\n")
    assert p.lines == [b"done", b"next"]
    assert not p.readingPaused


# -- output back-pressure ---------------------------------------------------------


def test_fullOutputStopsCommandsUntilItDrains():
    """Once the transport's buffer is full no more commands run; they run when it drains."""
    p, t = connect()
    p.dataReceived(b"".join(b"cmd%d\r\n" % i for i in range(50)))
    ran = len(p.lines)
    assert ran < 50
    assert t.producerState == "paused"  # reading from the client stopped
    t.drain()
    assert len(p.lines) > ran


def test_outputPastTheLimitCutsTheClientOff():
    """Bytes written while the output is full are counted; past outputLimit the connection is aborted."""
    clock = Clock()
    p = Echo()
    p.outputLimit = 100
    p, t = connect(p, clock=clock)
    p.transport.write(b"x" * 100)  # full now
    assert p.transport.full
    p.transport.write(b"y" * 100)
    assert not t.disconnecting
    p.transport.write(b"z")
    assert t.disconnecting and p.transport.cutOff


def test_outputFullPastTheDeadlineCutsTheClientOff():
    """Output that stays full for drainTimeout seconds aborts the connection; draining in time does not."""
    clock = Clock()
    p, t = connect(clock=clock)
    p.transport.write(b"x" * 100)
    clock.advance(p.drainTimeout - 1)
    t.drain()
    clock.advance(5)
    assert not t.disconnecting
    p.transport.write(b"x" * 100)
    clock.advance(p.drainTimeout)
    assert t.disconnecting


def test_closeOfAClientThatDoesNotReadIsAborted():
    """loseConnection gives a client closeTimeout seconds to take what is left, then aborts."""
    clock = Clock()
    p, t = connect(clock=clock)
    aborted = []
    t.abortConnection = lambda: aborted.append(True)
    p.transport.loseConnection()
    assert t.disconnecting and t.producer is None  # unregistered so the close can finish
    clock.advance(p.closeTimeout)
    assert aborted == [True]


def test_inputHeldWhilePausedIsBounded():
    """Input that keeps coming while reading is paused is cut off past inputLimit."""
    p = Echo()
    p.inputLimit = 1000
    p, t = connect(p)
    p.pending[b"slow"] = Deferred()
    p.dataReceived(b"slow\r\n")
    p.dataReceived(b"a\r\n" * 300)
    assert not t.disconnecting
    p.dataReceived(b"a\r\n" * 100)
    assert t.disconnecting


def test_protocolProducerTakesTheSlotAndGivesItBack():
    """A producer the protocol registers replaces the outbox at the transport, and the outbox returns after."""
    p, t = connect()
    outbox = p.transport
    assert t.producer is outbox

    class P:
        def pauseProducing(self): pass
        def resumeProducing(self): pass
        def stopProducing(self): pass

    mine = P()
    outbox.registerProducer(mine, False)
    assert t.producer.producer is mine and not t.streaming
    outbox.unregisterProducer()
    assert t.producer is outbox and t.streaming


def test_outboxProvidesWhatTheTransportProvidesNow():
    """The outbox provides the real transport's interfaces, including ones added later (startTLS)."""
    p, t = connect()
    assert verifyObject(IPushProducer, p.transport)
    assert not ISSLTransport.providedBy(p.transport)
    directlyProvides(t, ISSLTransport)
    assert ISSLTransport.providedBy(p.transport)


# -- admission ---------------------------------------------------------------------


class Addr:
    def __init__(self, host):
        self.host = host


def test_admissionCapsPerAddressAndInTotal():
    """Past the per-address or total cap the factory builds a Busy protocol with the service's busy reply."""
    clock = Clock()
    f = EchoFactory(clock, maxConnections=3, maxPerAddress=2)
    a1, a2 = f.buildProtocol(Addr("10.0.0.1")), f.buildProtocol(Addr("10.0.0.1"))
    assert isinstance(a1, Echo) and isinstance(a2, Echo)
    third = f.buildProtocol(Addr("10.0.0.1"))
    assert isinstance(third, Busy)
    t = StringTransport()
    third.makeConnection(t)
    assert t.value().startswith(b"BUSY too many connections from 10.0.0.1")
    assert isinstance(f.buildProtocol(Addr("10.0.0.2")), Echo)
    full = f.buildProtocol(Addr("10.0.0.3"))
    assert isinstance(full, Busy) and b"server full" in full.reply


def test_admissionReleasedWhenTheConnectionEnds():
    """An admitted connection's slot is given back when it is lost."""
    clock = Clock()
    f = EchoFactory(clock, maxConnections=1)
    p = f.buildProtocol(Addr("10.0.0.1"))
    p.makeConnection(BufferingTransport())
    assert isinstance(f.buildProtocol(Addr("10.0.0.2")), Busy)
    p.connectionLost(None)
    assert isinstance(f.buildProtocol(Addr("10.0.0.2")), Echo)


def test_busyClientThatDoesNotReadIsAborted():
    """The busy reply's close is aborted if the client does not take it within the close deadline."""
    clock = Clock()
    busy = Busy(b"BUSY\r\n", clock, closeTimeout=5)
    t = StringTransport()
    aborted = []
    t.abortConnection = lambda: aborted.append(True)
    busy.makeConnection(t)
    busy.dataReceived(b"ignored\r\n")
    clock.advance(5)
    assert aborted == [True]


def test_defaultCapFitsUnderTheDescriptorLimit(monkeypatch):
    """By default the total cap is what fits under RLIMIT_NOFILE, read at start; a larger asked cap is lowered."""
    monkeypatch.setattr(admissionModule, "descriptorLimit", lambda: 1064)
    assert Admission().maxConnections == 1000
    assert Admission(fdsPerConnection=2).maxConnections == 500
    assert Admission(maxConnections=5000).maxConnections == 1000
    assert Admission(maxConnections=10).maxPerAddress == 10


def test_outboxCutOffCallsTheProtocolHook():
    """A cut-off tells the protocol why (cutOff), once."""
    whys = []
    t = BufferingTransport()
    o = Outbox(t, Clock(), limit=10, drainTimeout=0, closeTimeout=1, onCutOff=whys.append)
    o.write(b"x" * 100)
    o.write(b"x" * 11)
    o.write(b"x" * 11)
    assert len(whys) == 1 and "waiting" in whys[0]


@pytest.mark.parametrize("n", [1, 3])
def test_severalReasonsToPauseAllMustEnd(n):
    """Reading resumes only once every reason to pause has ended."""
    p, t = connect()
    for i in range(n):
        p.pauseReading(f"r{i}")
    for i in range(n - 1):
        p.resumeReading(f"r{i}")
        assert t.producerState == "paused"
    p.resumeReading(f"r{n - 1}")
    assert t.producerState == "producing"


def test_manyLinesAtOnceRunATurnAtATime():
    """Of more lines than linesPerTurn in one read, a turn's worth run, the rest on the next turns of the reactor."""
    clock = Clock()
    p = Echo()
    p.linesPerTurn = 5
    p, t = connect(p, transport=StringTransport(), clock=clock)
    p.dataReceived(b"x\r\n" * 12)
    assert len(p.lines) == 5
    assert p.readingPaused
    clock.advance(0)  # Clock runs the later turns' calls too
    assert len(p.lines) == 12


def test_whenOutputDrainedWaitsForTheClient():
    """whenOutputDrained fires at once while the output is not full, else once the client has read it."""
    p, t = connect()
    fired = []
    p.whenOutputDrained().addCallback(fired.append)
    assert fired == [None]
    p.transport.write(b"x" * 100)
    d = p.whenOutputDrained()
    d.addCallback(fired.append)
    assert fired == [None]
    t.drain()
    assert fired == [None, None]


@pytest.mark.parametrize("streaming", [True, False])
def test_protocolProducerThatTheClientStopsTakingIsCut(streaming):
    """While a protocol's own producer runs, a client that takes nothing for drainTimeout seconds is still cut off."""
    clock = Clock()
    p, t = connect(clock=clock)

    class P:
        def pauseProducing(self): pass
        def resumeProducing(self): pass
        def stopProducing(self): pass

    p.transport.registerProducer(P(), streaming)
    watch = t.producer
    if streaming:
        clock.advance(p.drainTimeout * 2)
        assert not t.disconnecting  # producing freely: nothing waits
        watch.pauseProducing()      # the transport's buffer is full
    for _ in range(3):
        clock.advance(p.drainTimeout - 1)
        watch.resumeProducing()     # the client took some: progress
        if streaming:
            watch.pauseProducing()
    assert not t.disconnecting
    clock.advance(p.drainTimeout)
    assert t.disconnecting and p.transport.cutOff


def test_writesAfterACutOffAreDroppedAndCountingStopsOnDrain():
    """Once cut off nothing more reaches the transport; after a drain, writes are no longer counted."""
    p = Echo()
    p.outputLimit = 50
    p, t = connect(p)
    p.transport.write(b"x" * 100)          # full
    p.transport.write(b"y" * 40)           # counted: 40
    t.drain()
    assert p.transport.waiting == 0
    p.transport.write(b"z" * 10)           # not full: not counted
    assert p.transport.waiting == 0
    p.transport.write(b"x" * 100)          # full again
    p.transport.write(b"w" * 51)           # past the limit: cut off
    assert p.transport.cutOff
    sent = t.value()
    p.transport.write(b"dropped")
    assert t.value() == sent
