"""
The same Twisted protocols, run thread-per-connection or process-per-connection.

A service's L{Protocol} and L{Factory} hold its rules: parsing, commands,
limits.  This package runs them without a reactor, from blocking sockets,
so that the course can compare I/O models with one implementation of the
rules (docs/event-vs-threads.md):

  - L{reactor}: L{BlockingReactor} stands in for the reactor: its "thread
    pool" runs work at once in the calling thread, C{callFromThread} runs
    at once, and C{callLater} timers belong to the connection whose code
    set them and run in that connection's thread.
  - L{transport}: L{BlockingTransport} is the transport (C{write} never
    blocks; producers are honoured as a reactor would; the fast transfer
    path, L{coursenet.interfaces.IFastTransfer}, is there), and
    L{serveConnection} is one connection's life in its own thread or
    process: wait in C{poll()} for its socket (or a timer, or a wake-up
    from another thread), hand what arrives to the protocol.
  - L{servers}: L{ThreadedServer} and L{ForkingServer} are
    C{socketserver}'s C{ThreadingTCPServer} and C{ForkingTCPServer}
    calling it.
  - L{cli}: the twins' options and main (L{TwinOptionsMixin}, L{twinMain}).

The protocols were written for a cooperative world, where each callback
runs to its end before anything else happens.  Threads are preemptive, so
the reactor's one lock (L{BlockingReactor.lock}) gives that guarantee
back: a thread holds it while it runs protocol code and releases it for
every blocking call (C{poll}, thread-pool work such as scrypt or hashing).
No lock is ever held across a blocking socket operation.
"""

from coursenet.blocking.cli import TwinOptionsMixin, parseListen, raiseFileLimit, runServer, twinMain
from coursenet.blocking.reactor import BlockingReactor
from coursenet.blocking.servers import ForkingServer, ThreadedServer
from coursenet.blocking.transport import BlockingTransport, serveConnection

__all__ = [
    "BlockingReactor",
    "BlockingTransport",
    "ForkingServer",
    "ThreadedServer",
    "TwinOptionsMixin",
    "parseListen",
    "raiseFileLimit",
    "runServer",
    "serveConnection",
    "twinMain",
]
