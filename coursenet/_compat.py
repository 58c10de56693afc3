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
