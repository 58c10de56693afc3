"""
The pluggable pieces shared by the services.
"""

from zope.interface import Interface


class IFastTransfer(Interface):
    """
    The shortcuts a bulk transfer may take on a connection's transport,
    beyond C{ITransport}: C{os.sendfile} straight to the socket, and large
    reads while data streams in.

    Twisted's TCP transport gets one by adaptation (L{bftp.transfer}); the
    blocking transport of the twins provides it
    (L{coursenet.blocking.transport.BlockingTransport}).
    """

    def sendfileSocket() -> int | None:
        """
        The descriptor of the socket to C{os.sendfile} to, bypassing the
        transport's write buffer; L{None} if bytes must go through C{write}
        (a TLS layer encrypts them).

        Only a pull producer may use it, and only while the transport's
        buffer is empty: the transport asks it for more once the buffer is
        flushed, so what was written before is on the wire first.
        """

    def startWriting() -> None:
        """
        Have the registered pull producer resumed once the socket is
        writable, even with nothing buffered: after C{os.sendfile} filled
        the socket or finished a piece.  Only called where L{sendfileSocket}
        gave a descriptor.
        """

    def setReadSize(size: int | None) -> None:
        """
        Read up to C{size} bytes per receive from now on; L{None} goes back
        to the transport's default.  Large reads cut the calls per byte of
        a big upload.
        """
