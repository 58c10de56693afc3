"""
The BFTP server and client in memory: iosim joins them, a Clock drives
time, and no socket or global reactor is involved.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from bftp.client import BFTPClient, BFTPError
from bftp.fs import PARTIAL_PREFIX
from bftp.wire import Code
from coursenet.throttle import GuessRule
from coursenet.tls import clientTLSOptions, serverContextFactory
from tests.bftp_support import LOGIN, PASSWORD, USER, FakeReactor, Raw, connected, makeFactory, negotiatedDigest, result


@pytest.fixture
def fake():
    return FakeReactor()


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    (r / "a.txt").write_bytes(b"hello world\n")
    (r / "docs").mkdir()
    return r


def session(root, fake, login=True, **kwargs):
    factory = makeFactory(root, fake, **kwargs)
    client, server, pump = connected(factory, fake)
    result(client.hello(), pump)
    if login:
        result(client.login(USER, PASSWORD), pump)
    return client, server, pump


def raw(root, fake, *sends, **kwargs):
    """
    Send C{sends} one by one to a fresh server; return each reply line.
    """
    factory = makeFactory(root, fake, **kwargs)
    client, server, pump = connected(factory, fake, Raw)
    for s in sends:
        client.transport.write(s)
        pump.flush()
    return client.lines(), server, pump, client


def codes(lines):
    return [int(line[:3]) for line in lines]


def test_greetingAndVersion(root, fake):
    """The server greets with 220 and its version, and refuses an unknown version with 505."""
    lines, *_ = raw(root, fake, b"HELLO BFTP/9\r\n", b"HELLO BFTP/9 BFTP/1\r\n")
    assert lines[0].startswith("220 BFTP/1")
    assert codes(lines[1:]) == [505, 200]


def test_helloFirst(root, fake):
    """Commands other than HELLO, HELP, NOOP, QUIT before HELLO get 503."""
    lines, *_ = raw(root, fake, b"USER x\r\n", b"NOOP\r\n")
    assert codes(lines[1:]) == [503, 200]


def test_loginBeforeData(root, fake):
    """Every file command before login gets 530 and touches nothing."""
    sends = [b"HELLO BFTP/1\r\n"] + [c + b"\r\n" for c in (b"LIST", b"GET a.txt", b"PUT b", b"DELETE a.txt", b"STAT a.txt", b"PWD")]
    lines, *_ = raw(root, fake, *sends)
    assert codes(lines[2:]) == [530] * 6
    assert (root / "a.txt").exists() and not (root / "b").exists()


def test_wrongPassword(root, fake):
    """A wrong password is 530; after three the server says 421 and hangs up."""
    bad = [b"USER alice\r\n", b"PASS nope\r\n"] * 3
    lines, server, pump, client = raw(root, fake, b"HELLO BFTP/1\r\n", *bad)
    assert codes(lines[2:]) == [331, 530, 331, 530, 331, 421]
    assert client.transport.disconnected or server.transport.disconnecting


def test_loginDelay(root, fake):
    """A failed login is answered only after the login delay."""
    factory = makeFactory(root, fake, loginDelay=2)
    client, server, pump = connected(factory, fake, Raw)
    client.transport.write(b"HELLO BFTP/1\r\nUSER alice\r\nPASS x\r\n")
    pump.flush()
    assert codes(client.lines()) == [220, 200, 331]
    fake.advance(2)
    pump.flush()
    assert codes(client.lines())[-1] == 530


def test_anonymousReadOnly(root, fake):
    """With anonymous access on, anonymous can read but every write is 534."""
    lines, *_ = raw(
        root, fake, b"HELLO BFTP/1\r\n", b"USER anonymous\r\n", b"PASS me@x\r\n",
        b"STAT a.txt\r\n", b"PUT b.txt\r\n", b"DELETE a.txt\r\n", b"MKDIR d\r\n",
        anonymous=True,
    )
    assert codes(lines[2:]) == [331, 230, 211, 534, 534, 534]


def test_anonymousOffByDefault(root, fake):
    """Without --anonymous, anonymous is just a wrong login."""
    lines, *_ = raw(root, fake, b"HELLO BFTP/1\r\n", b"USER anonymous\r\n", b"PASS me@x\r\n")
    assert codes(lines[2:]) == [331, 530]


def test_overlongLineKeepsConnection(root, fake):
    """A line over the limit gets 500 and the next command still works."""
    lines, server, *_ = raw(root, fake, b"X" * 5000 + b"\r\n", b"NOOP\r\n")
    fake.advance(0)
    assert codes(lines[1:]) == [500, 200]
    assert "too long" in lines[1]


def test_overlongLineInPieces(root, fake):
    """An overlong line sent in many pieces gets one 500, and its tail is not run as a command."""
    pieces = [b"Y" * 700] * 6 + [b"QUIT\r\n", b"NOOP\r\n"]
    lines, *_ = raw(root, fake, *pieces)
    assert codes(lines[1:]) == [500, 200]


def test_unknownCommand(root, fake):
    """An unknown verb gets 500 naming it."""
    lines, *_ = raw(root, fake, b"FROB x\r\n")
    assert lines[1].startswith("500 unknown command FROB")


def test_idleTimeout(root, fake):
    """An idle connection gets 421 and is closed after the idle timeout."""
    lines, server, pump, client = raw(root, fake, idleTimeout=10)
    fake.advance(11)
    pump.flush()
    assert codes(client.lines()) == [220, 421]
    assert server.transport.disconnecting


def test_perAddressLimit(root, fake):
    """A connection over the per-address limit gets 421 and is closed; one slot freed lets the next in."""
    factory = makeFactory(root, fake, maxPerAddress=2)
    pairs = [connected(factory, fake, Raw) for _ in range(3)]
    assert codes(pairs[2][0].lines()) == [421]
    assert "too many connections" in pairs[2][0].lines()[0]
    pairs[0][1].transport.loseConnection()
    pairs[0][2].flush()
    client, _, _ = connected(factory, fake, Raw)
    assert codes(client.lines()) == [220]


def test_listAndStat(root, fake):
    """LIST gives type, size, time and name; STAT says whether a path exists."""
    client, server, pump = session(root, fake)
    entries = result(client.list("/"), pump)
    assert [(e.name, e.kind) for e in entries] == [("a.txt", "file"), ("docs", "dir")]
    assert entries[0].size == 12
    st = result(client.stat("a.txt"), pump)
    assert st.exists and st.size == 12 and st.kind == "file"
    assert not result(client.stat("nope"), pump).exists


def test_cdAndPwd(root, fake):
    """CD moves the current directory, relative paths follow it, and .. stops at the root."""
    client, server, pump = session(root, fake)
    assert result(client.cd("docs"), pump) == "/docs"
    assert result(client.pwd(), pump) == "/docs"
    assert result(client.stat("../a.txt"), pump).exists
    with pytest.raises(BFTPError) as e:
        result(client.cd("../.."), pump)
    assert e.value.code == Code.BAD_NAME


def test_getAndHash(root, fake, tmp_path):
    """GET writes the file and returns its digest by the negotiated algorithm, which HASH agrees with; plain HASH is SHA-256."""
    client, server, pump = session(root, fake)
    local = tmp_path / "copy"
    digest = result(client.get("/a.txt", str(local)), pump)
    assert local.read_bytes() == b"hello world\n"
    assert digest == negotiatedDigest(b"hello world\n")
    assert result(client.hash("a.txt", client.digest), pump) == digest
    assert result(client.hash("a.txt"), pump) == hashlib.sha256(b"hello world\n").hexdigest()


def test_getResume(root, fake, tmp_path):
    """GET continues from the local .bftp-part file, and the digest covers the whole file."""
    data = os.urandom(3_000_000)
    (root / "big").write_bytes(data)
    client, server, pump = session(root, fake)
    local = tmp_path / "big"
    (tmp_path / "big.bftp-part").write_bytes(data[:1_234_567])
    starts = []
    digest = result(client.get("/big", str(local), onStart=lambda size, at: starts.append(at)), pump)
    assert starts == [1_234_567]
    assert local.read_bytes() == data
    assert digest == negotiatedDigest(data)


def test_putAndReplaceAtomically(root, fake, tmp_path):
    """PUT stores a new file under its name and leaves no partial behind."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2_500_000))
    client, server, pump = session(root, fake)
    digest = result(client.put(str(src), "/a.txt"), pump)
    assert (root / "a.txt").read_bytes() == src.read_bytes()
    assert digest == negotiatedDigest(src.read_bytes())
    assert sorted(os.listdir(root)) == ["a.txt", "docs"]


def test_putDigestMismatch(root, fake):
    """A PUT whose digest line does not match gets 554, and the old file is kept."""
    lines, *_ = raw(
        root, fake, LOGIN,
        b"PUT a.txt\r\n", b"00000003new00000000" + b"0" * 64 + b"\r\n", b"NOOP\r\n",
    )
    assert codes(lines[4:]) == [350, 554, 200]
    assert (root / "a.txt").read_bytes() == b"hello world\n"
    assert sorted(os.listdir(root)) == ["a.txt", "docs"]


@pytest.mark.parametrize("header", [b"zzzzzzzz", b"-0000001", b"ffffffff"])
def test_putBadChunkHeader(root, fake, header):
    """A bogus, negative or huge chunk header mid-PUT gets a 5xx reply, the connection is closed, the old file is intact."""
    lines, server, pump, client = raw(
        root, fake, LOGIN,
        b"PUT a.txt\r\n", header + b"rest",
    )
    assert codes(lines[4:5]) == [350]
    assert 500 <= codes(lines[5:6])[0] < 600
    assert server.transport.disconnecting or client.transport.disconnected
    assert (root / "a.txt").read_bytes() == b"hello world\n"


def test_putBadChunkHeaderKeepsChunksBeforeIt(root, fake):
    """The chunks received whole before a bad chunk header, even in the same read, are kept for resume."""
    data = os.urandom(50_000)
    lines, server, pump, client = raw(
        root, fake, LOGIN,
        b"PUT f\r\n", b"%08x" % len(data) + data + b"zzzzzzzz",
    )
    assert codes(lines[4:]) == [350, 500]
    assert (root / (PARTIAL_PREFIX + "f")).read_bytes() == data


def test_putSizeLimit(root, fake):
    """A file over --max-file-size gets 552 after its data, nothing is stored, and the connection goes on."""
    data = b"x" * 100
    digest = hashlib.sha256(data).hexdigest().encode()
    lines, *_ = raw(
        root, fake, LOGIN,
        b"PUT big\r\n", b"00000064" + data + b"00000000" + digest + b"\r\n", b"NOOP\r\n",
        maxFileSize=50,
    )
    assert codes(lines[4:]) == [350, 552, 200]
    assert not (root / "big").exists()
    assert sorted(os.listdir(root)) == ["a.txt", "docs"]


def test_putCutAndResume(root, fake, tmp_path):
    """A PUT cut mid-way keeps the old file, STAT reports the bytes kept, and a resumed PUT completes it."""
    data = os.urandom(300_000)
    factory = makeFactory(root, fake)
    client, server, pump = connected(factory, fake, Raw)
    client.transport.write(LOGIN + b"PUT a.txt\r\n")
    pump.flush()
    client.transport.write(b"%08x" % 100_000 + data[:100_000] + b"%08x" % 50_000 + data[100_000:120_000])
    pump.flush()
    client.transport.loseConnection()
    pump.flush()
    assert (root / "a.txt").read_bytes() == b"hello world\n"
    assert not factory.uploads and not server._openFiles
    src = tmp_path / "src"
    src.write_bytes(data)
    c2, s2, p2 = session(root, fake)
    assert result(c2.stat("a.txt"), p2).partial == 120_000
    starts = []
    result(c2.put(str(src), "a.txt", resume=True, onStart=lambda size, at: starts.append(at)), p2)
    assert starts == [120_000]
    assert (root / "a.txt").read_bytes() == data
    assert not any(n.startswith(PARTIAL_PREFIX) for n in os.listdir(root))


def test_resumePastReceived(root, fake):
    """Resuming a PUT past what the server kept gets 501 naming the offset to use."""
    (root / (PARTIAL_PREFIX + "f")).write_bytes(b"12345")
    lines, *_ = raw(root, fake, LOGIN, b"PUT f 9\r\n", b"PUT g 3\r\n")
    assert codes(lines[4:]) == [501, 550]
    assert "resume from 5" in lines[4]


def whileUploading(root, fake, put: bytes, others: bytes):
    """
    One client starts C{PUT put}; a second, logged in, then sends
    C{others}.  Return the uploader's client and pump, and the second
    client's replies after its login.
    """
    factory = makeFactory(root, fake)
    c1, s1, p1 = connected(factory, fake, Raw)
    c1.transport.write(LOGIN + b"PUT " + put + b"\r\n")
    p1.flush()
    c2, s2, p2 = connected(factory, fake, Raw)
    c2.transport.write(LOGIN + others)
    p2.flush()
    return c1, p1, c2.lines()[4:]


def test_concurrentPutSamePath(root, fake):
    """A second PUT to a path being uploaded gets 450; the first is not disturbed."""
    c1, p1, replies = whileUploading(root, fake, b"f", b"PUT f\r\nDELETE f\r\n")
    assert codes(replies) == [450, 450]
    data = b"abc"
    c1.transport.write(b"00000003abc00000000" + hashlib.sha256(data).hexdigest().encode() + b"\r\n")
    p1.flush()
    assert codes(c1.lines()[4:]) == [350, 226]
    assert (root / "f").read_bytes() == b"abc"


def test_directoryCommands(root, fake):
    """MKDIR, RENAME, DELETE and RMDIR do what they say and refuse what they must."""
    client, server, pump = session(root, fake)
    result(client.mkdir("new"), pump)
    assert (root / "new").is_dir()
    result(client.rename("a.txt", "new/b.txt"), pump)
    assert (root / "new" / "b.txt").exists()
    with pytest.raises(BFTPError) as e:
        result(client.rmdir("new"), pump)
    assert "not empty" in e.value.message
    with pytest.raises(BFTPError) as e:
        result(client.delete("new"), pump)
    assert "RMDIR" in e.value.message
    result(client.delete("new/b.txt"), pump)
    result(client.rmdir("new"), pump)
    assert not (root / "new").exists()
    with pytest.raises(BFTPError) as e:
        result(client.delete("new/b.txt"), pump)
    assert e.value.code == Code.NOT_FOUND
    with pytest.raises(BFTPError) as e:
        result(client.rmdir("/"), pump)
    assert e.value.code == Code.BAD_NAME


def test_renameRefusesOverwrite(root, fake):
    """RENAME onto an existing name is refused and both files are kept."""
    (root / "b.txt").write_bytes(b"b")
    client, server, pump = session(root, fake)
    with pytest.raises(BFTPError) as e:
        result(client.rename("a.txt", "b.txt"), pump)
    assert "already exists" in e.value.message
    assert (root / "b.txt").read_bytes() == b"b"


def test_help(root, fake):
    """HELP lists every command."""
    client, server, pump = session(root, fake)
    text = "\n".join(result(client.help(), pump))
    for verb in ["HELLO", "USER", "PASS", "PWD", "CD", "LIST", "STAT", "GET", "PUT", "HASH", "DELETE", "MKDIR", "RMDIR", "RENAME", "QUIT"]:
        assert verb in text


def test_pipelinedCommandsAnsweredInOrder(root, fake):
    """Commands sent together, a GET among them, are answered one after another in order."""
    data = b"hello world\n"
    lines, *_ = raw(
        root, fake,
        LOGIN + b"GET a.txt\r\nSTAT a.txt\r\nNOOP\r\n",
    )
    blob = "\r\n".join(lines)
    digest = hashlib.sha256(data).hexdigest()
    order = [blob.index(x) for x in ("150 12 0", f"226 {digest}", "211 path=/a.txt", "200 ok")]
    assert order == sorted(order)


def test_getOverTLSInMemory(root, fake, tmp_path, devCert):
    """A GET works through TLS in memory, the client verifying the server's certificate for localhost."""
    cert, key = devCert
    factory = makeFactory(root, fake)
    serverTLS = TLSMemoryBIOFactory(serverContextFactory(cert, key), False, factory, clock=fake)
    clientTLS = TLSMemoryBIOFactory(clientTLSOptions("localhost", cert), True, _ClientFactory(fake), clock=fake)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: serverTLS.buildProtocol(None), lambda: clientTLS.buildProtocol(None), clock=fake
    )
    bftp = client.wrappedProtocol
    result(bftp.hello(), pump)
    result(bftp.login(USER, PASSWORD), pump)
    local = tmp_path / "copy"
    result(bftp.get("/a.txt", str(local)), pump)
    assert local.read_bytes() == b"hello world\n"


def test_tlsWrongHostnameRefused(root, fake, devCert):
    """A client verifying a different hostname refuses the certificate: no greeting gets through."""
    cert, key = devCert
    factory = makeFactory(root, fake)
    serverTLS = TLSMemoryBIOFactory(serverContextFactory(cert, key), False, factory, clock=fake)
    clientTLS = TLSMemoryBIOFactory(clientTLSOptions("example.com", cert), True, _ClientFactory(fake), clock=fake)
    tlsClient = clientTLS.buildProtocol(None)
    bftp = tlsClient.wrappedProtocol
    failures = []
    bftp.greeting.addErrback(failures.append)
    iosim.connectedServerAndClient(lambda: serverTLS.buildProtocol(None), lambda: tlsClient, clock=fake)
    assert len(failures) == 1
    assert failures[0].check(ConnectionError)
    assert "DNSMismatch" in str(failures[0].value)


class _ClientFactory:
    def __init__(self, reactor):
        self.reactor = reactor

    def buildProtocol(self, addr):
        return BFTPClient(self.reactor)

    def doStart(self):
        pass

    def doStop(self):
        pass


def test_stringTransportGreeting(root, fake):
    """Over a bare StringTransport the greeting is exactly one CRLF line."""
    factory = makeFactory(root, fake)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"220 BFTP/1 server ready; send HELLO BFTP/1\r\n"


def test_bareLineFeedGetsDiagnostic(root, fake):
    """A command ended by a bare LF is answered with a 500 that says lines end with CRLF, not silence."""
    lines, *_ = raw(root, fake, b"NOOP\n", b"NOOP\r\n")
    assert codes(lines[1:]) == [500, 200]
    assert "CRLF" in lines[1]


def test_overlongLineSplitBetweenCRAndLF(root, fake):
    """An overlong line whose CR and LF arrive in different reads does not swallow the next command."""
    lines, *_ = raw(root, fake, b"Z" * 5000 + b"\r", b"\nNOOP\r\n")
    fake.advance(0)
    assert codes(lines[1:]) == [500, 200]


def test_digestLineWithTrailingGarbageRefused(root, fake):
    """A digest line with anything after the 64 hex digits is a 501, and the upload is kept for resume."""
    data = b"abc"
    digest = hashlib.sha256(data).hexdigest().encode()
    lines, *_ = raw(
        root, fake, LOGIN,
        b"PUT f\r\n", b"00000003abc00000000" + digest + b"x\r\n",
    )
    assert codes(lines[4:]) == [350, 501]
    assert (root / (PARTIAL_PREFIX + "f")).read_bytes() == b"abc"


def test_overlongDigestLineRefusedAndKept(root, fake):
    """An overlong line where the digest is expected gets the bad-digest 501, the upload is kept and the connection goes on."""
    lines, *_ = raw(
        root, fake, LOGIN,
        b"PUT f\r\n", b"00000003abc00000000" + b"X" * 5000 + b"\r\n", b"NOOP\r\n",
    )
    fake.advance(0)
    assert codes(lines[4:]) == [350, 501, 200]
    assert "upload kept for resume" in lines[5]
    assert (root / (PARTIAL_PREFIX + "f")).read_bytes() == b"abc"


def test_fifoRefusedWithoutBlocking(root, fake):
    """GET and HASH of a FIFO answer 555 at once instead of blocking the server on open()."""
    os.mkfifo(root / "pipe")
    lines, *_ = raw(root, fake, LOGIN, b"GET pipe\r\n", b"HASH pipe\r\n")
    assert codes(lines[4:]) == [555, 555]


def test_listHidesLinksLeadingOut(root, fake, tmp_path):
    """LIST shows nothing of a symbolic link that leads outside the root, but lists links that stay inside."""
    (tmp_path / "secret").write_bytes(b"x" * 1234)
    os.symlink(tmp_path / "secret", root / "out")
    os.symlink("a.txt", root / "in")
    client, server, pump = session(root, fake)
    names = [e.name for e in result(client.list("/"), pump)]
    assert names == ["a.txt", "docs", "in"]


def test_rmdirKeepsHiddenEntries(root, fake):
    """RMDIR of a directory holding entries clients cannot see refuses with 555 and deletes nothing."""
    (root / "docs" / b"\xffhidden".decode("utf-8", "surrogateescape")).write_bytes(b"keep")
    client, server, pump = session(root, fake)
    with pytest.raises(BFTPError) as e:
        result(client.rmdir("docs"), pump)
    assert e.value.code == Code.WRONG_TYPE
    assert len(os.listdir(root / "docs")) == 1


def test_rmdirTakesUnfinishedUploads(root, fake):
    """RMDIR of a directory holding only unfinished uploads removes them with it."""
    (root / "docs" / (PARTIAL_PREFIX + "x")).write_bytes(b"part")
    client, server, pump = session(root, fake)
    result(client.rmdir("docs"), pump)
    assert not (root / "docs").exists()


def test_deleteDirectoryKeepsPartial(root, fake):
    """DELETE of a directory is refused before it touches anything, an unfinished upload of that name included."""
    (root / (PARTIAL_PREFIX + "docs")).write_bytes(b"part")
    client, server, pump = session(root, fake)
    with pytest.raises(BFTPError) as e:
        result(client.delete("docs"), pump)
    assert e.value.code == Code.WRONG_TYPE
    assert (root / (PARTIAL_PREFIX + "docs")).exists()


def test_renameRefusedDuringUpload(root, fake):
    """RENAME of a directory with an upload running inside it gets 450."""
    c1, p1, replies = whileUploading(root, fake, b"docs/f", b"RENAME docs d2\r\nRMDIR docs\r\n")
    assert codes(replies) == [450, 450]
    assert (root / "docs").is_dir()


def test_mkdirAndRenameOntoUploadRefused(root, fake):
    """MKDIR of a path being uploaded, and RENAME onto it, get the 450 that DELETE gets, and the upload still completes."""
    c1, p1, replies = whileUploading(root, fake, b"new", b"MKDIR new\r\nRENAME docs new\r\n")
    assert codes(replies) == [450, 450]
    assert replies == ["450 /new: an upload is in progress", "450 an upload to that path is in progress; try later"]
    assert not (root / "new").exists()
    digest = hashlib.sha256(b"abc").hexdigest().encode()
    c1.transport.write(b"00000003abc00000000" + digest + b"\r\n")
    p1.flush()
    fake.advance(0)
    p1.flush()
    assert codes(c1.lines()[4:]) == [350, 226]
    assert (root / "new").read_bytes() == b"abc"


def test_loginDeadline(root, fake):
    """A connection that does not log in within the login timeout gets 421 and is closed, even if it keeps sending NOOP."""
    lines, server, pump, client = raw(root, fake, loginTimeout=30)
    for _ in range(4):
        fake.advance(10)
        client.transport.write(b"NOOP\r\n")
        pump.flush()
    assert codes(client.lines())[-1] == 421
    assert "not logged in" in client.lines()[-1]


def test_failedLoginsDelayTheNextCheckNeverRefuseIt(root, fake):
    """After the free failed logins, the right password waits for the throttle's delay, then logs in: no lockout."""
    factory = makeFactory(root, fake, maxLoginFailures=10)
    for _ in range(2):
        client, _, pump = connected(factory, fake, Raw)
        client.transport.write(b"HELLO BFTP/1\r\n" + b"USER alice\r\nPASS bad\r\n" * 2)
        pump.flush()
    client, _, pump = connected(factory, fake, Raw)
    client.transport.write(LOGIN)
    pump.flush()
    assert codes(client.lines()) == [220, 200, 331]
    fake.advance(0.9)
    pump.flush()
    assert codes(client.lines()) == [220, 200, 331]
    fake.advance(0.1)
    pump.flush()
    assert codes(client.lines()) == [220, 200, 331, 230]


def test_helloAdvertisesLimits(root, fake):
    """HELLO's reply names the line, chunk and file size limits, and the client refuses a file over the limit before sending it."""
    client, server, pump = session(root, fake, maxFileSize=10)
    assert "max-file-size=10" in client.serverInfo
    with pytest.raises(BFTPError) as e:
        result(client.put(str(root / "a.txt"), "/b.txt"), pump)
    assert e.value.code == 552
    assert not (root / "b.txt").exists()


def test_refusedGetLeavesNoPartFile(root, fake, tmp_path):
    """A GET the server refuses leaves no empty .bftp-part file behind."""
    client, server, pump = session(root, fake)
    with pytest.raises(BFTPError):
        result(client.get("/nope", str(tmp_path / "x")), pump)
    assert os.listdir(tmp_path) == ["root"]


def test_getRestartsWhenRemoteShrank(root, fake, tmp_path):
    """A resumed GET whose part file is longer than the remote file starts over and still ends with the right file."""
    (tmp_path / "a.txt.bftp-part").write_bytes(b"x" * 100)
    client, server, pump = session(root, fake)
    result(client.get("/a.txt", str(tmp_path / "a.txt")), pump)
    assert (tmp_path / "a.txt").read_bytes() == b"hello world\n"


def test_emptyPartialNotKept(root, fake):
    """A PUT cut before any data leaves no partial upload behind."""
    factory = makeFactory(root, fake)
    client, server, pump = connected(factory, fake, Raw)
    client.transport.write(LOGIN + b"PUT f\r\n")
    pump.flush()
    client.transport.loseConnection()
    pump.flush()
    assert sorted(os.listdir(root)) == ["a.txt", "docs"]


def test_pathTooLongOnceResolved(root, fake):
    """CD cannot build a current directory longer than the path limit: a clear 553, not a cut reply."""
    client, server, pump = session(root, fake)
    name = "d" * 200
    with pytest.raises(BFTPError) as e:
        for _ in range(10):
            result(client.mkdir(name), pump)
            result(client.cd(name), pump)
    assert e.value.code == Code.BAD_NAME
    assert len(result(client.pwd(), pump)) <= 1024


def test_lineOfExactlyMaxLength(root, fake):
    """A command line of exactly the announced max-line bytes (CRLF excluded) is accepted; one byte more is refused."""
    from bftp.wire import MAX_LINE

    ok = b"NOOP " + b"x" * (MAX_LINE - 5)
    lines, *_ = raw(root, fake, ok + b"\r\n", ok + b"x\r\n", b"NOOP\r\n")
    fake.advance(0)
    assert codes(lines[1:]) == [200, 500, 200]


def test_noCommandRunAfterLossFollowingLongLine(root, fake):
    """Commands queued behind an overlong line are not run once the connection is gone: no upload lock is left behind."""
    factory = makeFactory(root, fake)
    client, server, pump = connected(factory, fake, Raw)
    client.transport.write(LOGIN)
    pump.flush()
    client.transport.write(b"Q" * 5000 + b"\r\nPUT x.txt\r\n")
    pump.flush()
    client.transport.loseConnection()
    pump.flush()
    fake.advance(1)
    assert not factory.uploads
    assert not (root / (PARTIAL_PREFIX + "x.txt")).exists()


def test_symlinkToDirectory(root, fake):
    """RMDIR refuses a symbolic link to a directory without touching the target; DELETE removes the link only."""
    (root / "docs" / (PARTIAL_PREFIX + "p")).write_bytes(b"part")
    os.symlink("docs", root / "alias")
    client, server, pump = session(root, fake)
    with pytest.raises(BFTPError) as e:
        result(client.rmdir("alias"), pump)
    assert e.value.code == Code.WRONG_TYPE
    assert (root / "docs" / (PARTIAL_PREFIX + "p")).exists()
    result(client.delete("alias"), pump)
    assert not os.path.lexists(root / "alias")
    assert (root / "docs").is_dir()


def test_idleClientThatStopsReadingIsCut(root, fake):
    """A client idle past the timeout whose connection does not close cleanly is aborted 5 seconds later; one that closed is left alone."""
    lines, server, pump, client = raw(root, fake, idleTimeout=10)
    real = server.transport.wrappedTransport
    real.loseConnection = lambda: None  # a peer that never lets the close finish
    fake.advance(11)
    assert not real.disconnecting
    fake.advance(5)
    assert real.disconnecting


def test_idleTimeoutDuringGetAbortsWithoutReply(root, fake):
    """An idle timeout while a GET's chunks are held back writes no 421 into the data: the connection is aborted and logged."""
    # Data with no digits, so that a "421" on the wire can only be a reply
    # (random bytes hold one in about 6% of MiBs).
    (root / "big").write_bytes(b"z" * 5_000_000)
    factory = makeFactory(root, fake, idleTimeout=10, sendfile=False)
    client, server, pump = connected(factory, fake, Raw)
    client.transport.write(LOGIN)
    pump.flush()
    outbox = server.transport
    real = outbox.wrappedTransport

    def write(data):
        # The socket fills up after the first chunk: the client reads no more.
        real.write(data)
        if len(data) > 1000 and real.producer is not None:
            real.producer.pauseProducing()

    outbox.__dict__["write"] = write
    client.transport.write(b"GET big\r\n")
    pump.pump()
    assert pump.serverIO.stream[0].startswith(b"150 ")
    assert len(pump.serverIO.stream) == 2, "one chunk is sent, then the sender waits"
    aborted = []
    real.abortConnection = lambda: aborted.append(True)
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        fake.advance(11)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert aborted
    assert not any(b"421" in data for data in pump.serverIO.stream)
    assert any("aborting" in e.get("log_format", "") for e in observer)


def test_tapOptionsReachTheFactory(tmp_path):
    """The twistd options for the login deadline and the guess throttle reach the factory and its checker."""
    from bftp import tap

    options = tap.Options()
    options.parseOptions([
        "--root", str(tmp_path), "--user", "a:b", "--login-timeout", "7",
        "--guess-free", "1", "--guess-delay", "0.5", "--guess-max-delay", "30",
        "--guess-budget", "4", "--guess-forget", "600",
    ])
    factory = tap.makeFactory(options, FakeReactor())
    checker = factory.portal.checkers[IUsernamePassword]
    assert factory.loginTimeout == 7
    assert checker.throttle.store.rule == GuessRule(free=1, delay=0.5, maxDelay=30, budget=4, forget=600)
