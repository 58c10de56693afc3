"""
Twisted's internals this project relies on, in one place.

Nothing here is declared by a Twisted interface.  C{tests/test_bftp_fastpath.py}
checks each against the installed Twisted, so an upgrade that changes one
fails there, loudly, rather than quietly slowing a transfer.
"""

from __future__ import annotations

from twisted.internet import tcp

#: The attribute of Twisted's C{FileDescriptor} that C{tcp.Connection.doRead}
#: passes to C{recv}; the same number is the write buffer size past which a
#: streaming producer is paused.
TCP_READ_SIZE = "bufferSize"


def setTCPReadSize(connection: tcp.Connection, size: int | None) -> None:
    """
    Make C{connection} receive up to C{size} bytes per read, or go back to
    Twisted's default with L{None}.  Set on the instance only: other
    connections keep the class's value.
    """
    if size is None:
        vars(connection).pop(TCP_READ_SIZE, None)
    else:
        setattr(connection, TCP_READ_SIZE, size)


#: The method of Twisted's C{FileDescriptor} the reactor calls when the
#: socket is readable (C{IReadDescriptor.doRead}); looked up on the
#: instance, so one connection can read its own way for a while.
TCP_DO_READ = "doRead"


def setTCPReader(connection: tcp.Connection, doRead) -> None:
    """
    Have the reactor call C{doRead} instead of C{connection}'s own
    C{doRead} when its socket is readable, or go back to Twisted's with
    L{None}.  C{doRead} returns what Twisted's does: L{None}, or the
    reason the connection ended.
    """
    if doRead is None:
        vars(connection).pop(TCP_DO_READ, None)
    else:
        setattr(connection, TCP_DO_READ, doRead)


#: What Twisted's C{FileDescriptor} sets on a connection only when it first
#: writes (its class has defaults until then).
TCP_WRITE_STATE = ("dataBuffer", "offset")


def sharedAttributeLayout(connection) -> None:
    """
    Set on C{connection} now, as the first connection of a process will
    have them too, the attributes Twisted sets only on its first write.

    CPython 3.11 keeps an instance's attributes in a small array laid out
    by keys shared by the whole class, as long as every attribute set is
    already one of those keys or fits; each new instance leaves less room
    to add one.  Connections accepted by the hundred before the first has
    written would each find C{dataBuffer} missing and full room, and get a
    dict of their own: 0.8 KiB each.  Set early, the first connection puts
    the keys in place for all the others.
    """
    for name in TCP_WRITE_STATE:
        if hasattr(connection, name):
            setattr(connection, name, getattr(connection, name))


#: The most plaintext one TLS record carries.
TLS_RECORD = 1 << 14
#: How much of the encrypted records L{tlsLargeWrites} reads at a time.
TLS_READ_BACK = 64 << 10
#: What of TLSMemoryBIOProtocol L{tlsLargeWrites} relies on: the instance's
#: C{write} (Twisted sets it to its small-write aggregator's), that
#: aggregator, the OpenSSL connection and the state that says whether it
#: may be written to now, and C{_write}, Twisted's 16 KiB loop.
TLS_PRIVATE = (
    "_aggregator", "_tlsConnection", "_handshakeDone", "_lostTLSConnection", "_appSendBuffer", "_producer", "_write",
    "_aborted", "_flushReceiveBIO", "_flushSendBIO",
)


#: The records of one large write read back at once (a 1 MiB chunk makes
#: 64 records, 1 MiB and 1.4 KiB).
TLS_RECORD_BUFFER = (1 << 20) + (64 << 10)


def _idle(transport) -> bool:
    """
    Whether C{transport} is a TCP connection, open (not closing, not
    aborted: Twisted's C{abortConnection} leaves the socket open until the
    next reactor turn), with nothing waiting in its buffer: a send to its
    socket then goes in order.
    """
    return (
        getattr(transport, "_tempDataLen", None) == 0
        and transport.offset == len(transport.dataBuffer)
        and transport.connected
        and not (transport.disconnecting or transport.disconnected or getattr(transport, "_aborting", True))
    )


def _bioRead():
    """
    OpenSSL's C{BIO_read} and cffi, from pyOpenSSL's bindings; L{None}
    where they are not there.
    """
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:  # pragma: no cover
        return None
    read = getattr(lib, "BIO_read", None)
    return None if read is None else (ffi, read)


def _bioReadInto(records, connection, buf: bytearray) -> int:
    """
    Read what OpenSSL has made for the wire (C{connection}'s memory BIO,
    pyOpenSSL's C{_from_ssl}) into C{buf}, as much as fits; how much.
    pyOpenSSL's C{bio_read} would allocate and copy a new buffer each time.
    """
    ffi, read = records
    filled = 0
    with ffi.from_buffer(buf, require_writable=True) as target:
        while filled < len(buf):
            n = read(connection._from_ssl, target + filled, len(buf) - filled)
            if n <= 0:
                break
            filled += n
    return filled


def tlsLargeWrites(tls) -> None:
    """
    Make a write of more than one record to the TLS layer C{tls} (a
    C{TLSMemoryBIOProtocol}) go to OpenSSL straight from the caller's
    buffer and on to the connection in one C{bio_read} and one C{write},
    instead of being copied twice by Twisted's small-write aggregator and
    then cut into a 16 KiB C{send}, C{bio_read} and C{write} per record:
    the same records, with one Python call per record instead of several.  Smaller writes go
    to the aggregator as before (flushed first, so the order holds).

    Whatever this path cannot take (the handshake not done, writes already
    waiting, an OpenSSL error) goes to Twisted's own path, as a copy, so a
    caller may reuse its buffer once C{write} returns.
    """
    from OpenSSL.SSL import Error, WantReadError

    if getattr(tls, "_largeWrites", False):
        return
    tls._largeWrites = True
    tls._recordBuffer = None
    records = _bioRead()
    small = tls.write

    def write(data) -> None:
        if len(data) <= TLS_RECORD:
            small(bytes(data))
            return
        if tls.disconnecting and tls._producer is None:
            return  # what Twisted's write does after loseConnection
        tls._aggregator.flush()
        if not tls._handshakeDone or tls._lostTLSConnection or tls._appSendBuffer:
            tls._write(bytes(data))
            return
        connection = tls._tlsConnection
        view = memoryview(data)
        sent = 0
        try:
            # pyOpenSSL asks for partial writes, so each SSL_write takes a
            # record or so: the records pile up in the memory BIO.
            while sent < len(view):
                sent += connection.send(view[sent:])
        except Error:
            # Twisted's path meets the same state and deals with it (after
            # the records already made, which go first).
            pass
        # When nothing waits in the connection's buffer, the records go
        # from OpenSSL into one buffer kept for that and from there to the
        # socket, now; what the socket does not take waits in the
        # connection's buffer, as a copy.
        below = tls.transport
        if records is not None and _idle(below):
            if tls._recordBuffer is None:
                tls._recordBuffer = bytearray(TLS_RECORD_BUFFER)
            buf = tls._recordBuffer
            filled = _bioReadInto(records, connection, buf)
            if filled:
                try:
                    went = below.socket.send(memoryview(buf)[:filled])
                except (BlockingIOError, InterruptedError):
                    went = 0
                except OSError:
                    # Twisted's write meets the error again and ends the
                    # connection its way.
                    went = 0
                if went < filled:
                    below.write(bytes(buf[went:filled]))
        # Read back in pieces that malloc serves from memory it has: one
        # fresh MiB per write costs more in page faults than the calls.
        out = []
        while True:
            try:
                out.append(connection.bio_read(TLS_READ_BACK))
            except WantReadError:
                break
        if out:
            tls.transport.writeSequence(out)
        if sent < len(view):
            tls._write(bytes(view[sent:]))

    tls.write = write


#: The most plaintext L{TLSReader.readInto} asks OpenSSL for at once (a
#: call returns one record; pyOpenSSL's public C{recv_into}, the fallback,
#: allocates that much for each call).
TLS_READ_INTO = 64 << 10


#: TLS 1.3 cipher suites in the order a bulk-transfer connection prefers
#: them: AES-128-GCM first (the suite RFC 8446 section 9.1 makes mandatory;
#: with pyOpenSSL here 0.85 s of CPU per GiB for both ends against 1.04 s
#: for OpenSSL's first choice, AES-256-GCM), the others still accepted.
TLS13_BULK_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def preferCiphersuites(endpoint, suites: bytes = TLS13_BULK_SUITES) -> bool:
    """
    Have the TLS server endpoint C{endpoint} (an C{SSL4ServerEndpoint}, as
    C{serverFromString} makes for C{ssl:}) choose TLS 1.3 cipher suites in
    the order C{suites} (Twisted makes the server's preference decide).
    Endpoint strings have no option for TLS 1.3 suites and OpenSSL copies
    them from the context into each connection when it is made, so this
    sets them on the endpoint's context (its C{_sslContextFactory}, which
    keeps one) before it listens.

    @return: whether C{endpoint} was such an endpoint.
    """
    options = getattr(endpoint, "_sslContextFactory", None)
    if options is None or not hasattr(options, "getContext"):
        return False
    options.getContext().set_tls13_ciphersuites(suites)
    return True


def _sslRead():
    """
    OpenSSL's C{SSL_read} and cffi, from pyOpenSSL's bindings, to decrypt
    straight into a caller's buffer; L{None} where they are not there.
    """
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:  # pragma: no cover
        return None
    read = getattr(lib, "SSL_read", None)
    return None if read is None else (ffi, read)


class TLSReader:
    """
    Decrypt what the connection under the TLS layer C{tls} (a
    C{TLSMemoryBIOProtocol}) received straight into a caller's buffer,
    instead of Twisted's path of a C{bytes} per record, each handed up
    through the protocol stack on its own.  For a reader installed with
    L{setTCPReader} while bulk data streams in:

        - L{ready}: whether the TLS state lets it (handshake done, nothing
          waiting to be written, not closing); if not, call Twisted's own
          C{doRead} instead;
        - L{feed} what was read from the socket, then L{readInto} until it
          returns 0;
        - L{handBack} when L{readInto} raised (the peer closed TLS, an
          error), or to let Twisted deliver what is left decrypted once
          the reader stops: Twisted's own path meets the same state and
          deals with it;
        - L{flush} after each read: what OpenSSL has to send back (a TLS
          1.3 key update) goes out.
    """

    def __init__(self, tls) -> None:
        from OpenSSL.SSL import WantReadError

        self._tls = tls
        self._connection = tls._tlsConnection
        self._wantRead = WantReadError
        self._sslRead = _sslRead()

    def ready(self) -> bool:
        tls = self._tls
        return tls._handshakeDone and not (tls._lostTLSConnection or tls._aborted or tls._appSendBuffer)

    def feed(self, data) -> None:
        self._connection.bio_write(data)

    def readInto(self, view: memoryview) -> int:
        """
        @return: how many bytes were decrypted into C{view}; 0 when more
            must be read from the socket first.
        @raise OpenSSL.SSL.Error: anything else: call L{handBack}.
        """
        connection = self._connection
        n = min(len(view), TLS_READ_INTO)
        try:
            if self._sslRead is None:
                return connection.recv_into(view, n)
            # What pyOpenSSL's recv_into does, but into the caller's
            # buffer instead of a fresh one copied from.
            ffi, read = self._sslRead
            with ffi.from_buffer(view, require_writable=True) as target:
                result = read(connection._ssl, target, n)
            connection._raise_ssl_error(connection._ssl, result)
            return result
        except self._wantRead:
            return 0

    def handBack(self) -> None:
        self._tls._flushReceiveBIO()

    def flush(self) -> None:
        self._tls._flushSendBIO()
