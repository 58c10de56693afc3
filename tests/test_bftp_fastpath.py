"""
The fast transfer path (L{coursenet.interfaces.IFastTransfer}): its adapters
for Twisted's TCP and TLS transports, the twins' blocking transport, the
lookup through transport wrappers, and the one Twisted internal it relies
on (L{coursenet._compat}).  No sockets: the connections run over a stand-in
socket and a memory reactor.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import abstract, ssl, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface.verify import verifyObject

from bftp.transfer import fastTransfer, setReadSize
from coursenet._compat import TCP_DO_READ, TCP_READ_SIZE, TLS_PRIVATE, setTCPReader, setTCPReadSize, tlsLargeWrites
from coursenet.blocking import BlockingReactor, BlockingTransport
from coursenet.blocking.transport import READ_SIZE
from coursenet.interfaces import IFastTransfer

FD = 1234


class FakeSocket:
    """
    What C{tcp.Connection} and L{BlockingTransport} ask of a socket;
    remembers how much each C{recv} asked for.
    """

    def __init__(self) -> None:
        self.asked: list[int] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return FD

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        return b"x"

    def getsockname(self):
        return ("127.0.0.1", 9021)

    def getpeername(self):
        return ("127.0.0.1", 40000)


class Owner:
    """
    The connection loop a L{BlockingTransport} wakes.
    """

    def __init__(self) -> None:
        self.woken = 0

    def isCurrent(self) -> bool:
        return False

    def wake(self) -> None:
        self.woken += 1


class Wrapper:
    """
    A transport proxy like L{coursenet.receiver}'s: it keeps the real
    transport as C{wrappedTransport} and forwards everything else to it.
    """

    def __init__(self, transport) -> None:
        self.wrappedTransport = transport

    def __getattr__(self, name):
        return getattr(self.wrappedTransport, name)


def tcpConnection() -> tuple[tcp.Connection, FakeSocket]:
    sock = FakeSocket()
    return tcp.Connection(sock, Protocol(), MemoryReactor()), sock


def tlsOver(connection: tcp.Connection):
    """
    A client TLS layer (what C{wrapClientTLS} makes) connected over
    C{connection}.
    """
    factory = TLSMemoryBIOFactory(ssl.optionsForClientTLS("localhost"), True, Factory.forProtocol(Protocol))
    tls = factory.buildProtocol(None)
    tls.makeConnection(connection)
    return tls


def readSizeOf(connection: tcp.Connection, sock: FakeSocket) -> int:
    """
    How many bytes C{connection} asks the kernel for on its next read.
    """
    connection.doRead()
    return sock.asked[-1]


# -- the compat module ------------------------------------------------------------


def test_compatTCPReadSizeIsWhatDoReadAsksFor():
    """Twisted's TCP transport reads as many bytes as the compat module's attribute says, and goes back to the class default after None."""
    connection, sock = tcpConnection()
    default = vars(abstract.FileDescriptor)[TCP_READ_SIZE]
    assert isinstance(default, int) and readSizeOf(connection, sock) == default
    setTCPReadSize(connection, 2**20)
    assert readSizeOf(connection, sock) == 2**20
    other, otherSock = tcpConnection()
    assert readSizeOf(other, otherSock) == default
    setTCPReadSize(connection, None)
    assert readSizeOf(connection, sock) == default
    assert TCP_READ_SIZE not in vars(connection)


def test_compatReaderReplacesDoReadOnOneConnection():
    """The reactor's doRead of one connection can be replaced and restored, leaving the class and other connections alone."""
    connection, sock = tcpConnection()
    assert callable(getattr(tcp.Connection, TCP_DO_READ))
    calls = []
    setTCPReader(connection, lambda: calls.append(1))
    connection.doRead()
    assert calls == [1] and sock.asked == []
    other, otherSock = tcpConnection()
    other.doRead()
    assert otherSock.asked
    setTCPReader(connection, None)
    connection.doRead()
    assert calls == [1] and sock.asked and TCP_DO_READ not in vars(connection)


def test_compatTLSPrivatesAreThere():
    """TLSMemoryBIOProtocol still has every private name tlsLargeWrites relies on, and write is an instance attribute it can wrap."""
    connection, _ = tcpConnection()
    tls = tlsOver(connection)
    for name in TLS_PRIVATE:
        assert hasattr(tls, name), name
    assert "write" in vars(tls)
    tlsLargeWrites(tls)
    assert vars(tls)["write"].__name__ == "write" and tls._largeWrites


def test_compatPyOpenSSLPrivatesAreThere():
    """pyOpenSSL still has what TLSReader and tlsLargeWrites call directly: SSL_read and BIO_read in its cffi bindings, a connection's _ssl and _from_ssl, and _raise_ssl_error."""
    from OpenSSL import SSL

    from coursenet._compat import _bioRead, _sslRead

    assert _sslRead() is not None and _bioRead() is not None
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    for name in ("_ssl", "_from_ssl", "_raise_ssl_error"):
        assert hasattr(connection, name), name


def test_tlsLargeWritesCarryTheSameBytes():
    """Through a TLS pair in memory, a 3 MiB write from a reused buffer arrives exact, with small writes before and after it in order."""
    from twisted.internet.ssl import CertificateOptions, PrivateCertificate
    from twisted.test.iosim import connectedServerAndClient

    import tempfile

    from twisted.internet.task import Clock

    from coursenet.tls import ensureDevCertificate

    cert, key = ensureDevCertificate(tempfile.mkdtemp())
    with open(cert) as c, open(key) as k:
        pem = PrivateCertificate.loadPEM(c.read() + k.read())
    received = []

    class Sink(Protocol):
        def dataReceived(self, data):
            received.append(data)

    clock = Clock()
    serverTLS = TLSMemoryBIOFactory(pem.options(), False, Factory.forProtocol(Sink), clock)
    clientOptions = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(open(cert).read()))
    clientTLS = TLSMemoryBIOFactory(clientOptions, True, Factory.forProtocol(Protocol), clock)
    client, server, pump = connectedServerAndClient(
        lambda: serverTLS.buildProtocol(None), lambda: clientTLS.buildProtocol(None)
    )
    pump.flush()
    tlsLargeWrites(client)
    buf = bytearray(os.urandom(3 << 20))
    expected = b"before" + bytes(buf) + b"after"
    client.write(b"before")
    client.write(memoryview(buf))
    buf[:] = bytes(len(buf))  # reused at once: what was written must not change
    client.write(b"after")
    clock.advance(0)  # Twisted's aggregator sends small writes a turn later
    pump.flush()
    assert b"".join(received) == expected


# -- Twisted's TCP transport ------------------------------------------------------------


def test_tcpAdapterProvidesIFastTransfer():
    """Twisted's TCP transport adapts to IFastTransfer, every method declared."""
    connection, _ = tcpConnection()
    assert verifyObject(IFastTransfer, fastTransfer(connection))


def test_tcpSendfileToTheConnectionsSocket():
    """A plain TCP connection offers its socket for sendfile; one that started TLS in place does not."""
    connection, _ = tcpConnection()
    assert fastTransfer(connection).sendfileSocket() == FD
    connection.TLS = True
    assert fastTransfer(connection).sendfileSocket() is None


def test_tcpStartWritingWaitsForTheSocket():
    """startWriting asks the reactor to say when the connection's socket is writable."""
    connection, _ = tcpConnection()
    fastTransfer(connection).startWriting()
    assert connection in connection.reactor.getWriters()


def test_tcpSetReadSize():
    """setReadSize on Twisted's TCP transport changes how much each read asks for, and None restores the default."""
    connection, sock = tcpConnection()
    default = readSizeOf(connection, sock)
    setReadSize(connection, 3 * default)
    assert readSizeOf(connection, sock) == 3 * default
    setReadSize(connection, None)
    assert readSizeOf(connection, sock) == default


# -- TLS -------------------------------------------------------------------------------


def test_tlsAdapterProvidesIFastTransfer():
    """A TLS layer adapts to IFastTransfer, every method declared."""
    connection, _ = tcpConnection()
    assert verifyObject(IFastTransfer, fastTransfer(tlsOver(connection)))


def test_tlsGetsNoSendfile():
    """A TLS layer over TCP (which declares what the TCP transport provides) never offers the socket for sendfile."""
    connection, _ = tcpConnection()
    fast = fastTransfer(tlsOver(connection))
    assert fast.sendfileSocket() is None
    with pytest.raises(RuntimeError):
        fast.startWriting()


def test_tlsReadSizeReachesTheConnection():
    """The read size set through a TLS layer is the TCP connection's below it."""
    connection, sock = tcpConnection()
    tls = tlsOver(connection)
    default = readSizeOf(connection, sock)
    setReadSize(tls, 2**20)
    assert readSizeOf(connection, sock) == 2**20
    setReadSize(tls, None)
    assert readSizeOf(connection, sock) == default


# -- wrappers and other transports ---------------------------------------------------------


def test_wrappedTransportsAreUnwrapped():
    """Through wrappers that keep the real transport as wrappedTransport, the fast path is the real transport's."""
    connection, sock = tcpConnection()
    fast = fastTransfer(Wrapper(Wrapper(connection)))
    assert fast.sendfileSocket() == FD
    setReadSize(Wrapper(connection), 2**20)
    assert readSizeOf(connection, sock) == 2**20
    assert fastTransfer(Wrapper(tlsOver(connection))).sendfileSocket() is None


def test_noFastPathOnOtherTransports():
    """A transport with no fast path has none, and setting its read size does nothing."""
    transport = StringTransport()
    assert fastTransfer(transport) is None
    setReadSize(transport, 2**20)
    assert fastTransfer(Wrapper(transport)) is None


# -- the twins' blocking transport ---------------------------------------------------------


def blockingTransport() -> tuple[BlockingTransport, Owner]:
    owner = Owner()
    return BlockingTransport(FakeSocket(), BlockingReactor(), owner), owner


def test_blockingTransportProvidesIFastTransfer():
    """The twins' blocking transport provides IFastTransfer itself, every method declared."""
    transport, _ = blockingTransport()
    assert verifyObject(IFastTransfer, transport)
    assert fastTransfer(Wrapper(transport)) is transport


def test_blockingTransportFastPath():
    """The blocking transport offers its socket for sendfile, wakes its loop to wait for writability, and reads the size asked."""
    transport, owner = blockingTransport()
    assert transport.sendfileSocket() == FD
    transport.startWriting()
    assert transport.wantWrite and owner.woken == 1
    setReadSize(transport, 2**20)
    assert transport.readSize == 2**20
    setReadSize(transport, None)
    assert transport.readSize == READ_SIZE
