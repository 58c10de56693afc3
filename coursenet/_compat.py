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
