"""
C{socketserver}'s threading and forking TCP servers, each connection run by
L{serveConnection}: L{ThreadedServer} gives it a thread, L{ForkingServer}
a process.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import socketserver

from twisted.logger import Logger

from coursenet.admission import defaultMaxConnections
from coursenet.blocking.reactor import BlockingReactor
from coursenet.blocking.transport import serveConnection

_log = Logger()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _ServerMixin)
        server.serveRequest(self.request)


class _ServerMixin:
    """
    What the threaded and the forking servers share.
    """

    allow_reuse_address = True
    request_queue_size = 1024
    factory = None
    reactor: BlockingReactor

    def serveRequest(self, sock: socket.socket) -> None:
        serveConnection(sock, self.factory, self.reactor)

    def handle_error(self, request, client_address) -> None:
        _log.failure("request from {addr} failed", addr=client_address)


class ThreadedServer(_ServerMixin, socketserver.ThreadingTCPServer):
    """
    One thread per connection.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, factory, reactor: BlockingReactor) -> None:
        self.factory, self.reactor = factory, reactor
        super().__init__(address, _Handler)


class ForkingServer(_ServerMixin, socketserver.ForkingTCPServer):
    """
    One process per connection.  Children share nothing with each other
    but what they inherit at the fork.
    """

    block_on_close = False

    def __init__(self, address, factory, reactor: BlockingReactor, maxChildren: int | None = None) -> None:
        """
        @param maxChildren: connections served at once; the server waits
            for a child to end before it takes another.  By default as
            many as fit under the descriptor limit, as for the services'
            own C{--max-connections}.
        """
        self.factory, self.reactor = factory, reactor
        self.max_children = defaultMaxConnections() if maxChildren is None else maxChildren
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        self.beforeFork(request)
        # Without this the child's garbage collector writes to every object
        # it inherited, and copy-on-write copies the parent's whole heap
        # into every child.
        gc.freeze()
        super().process_request(request, client_address)
        self.afterForkInParent(request)

    def beforeFork(self, request) -> None:
        """
        In the parent, before each fork.
        """

    def afterForkInParent(self, request) -> None:
        """
        In the parent, after each fork.
        """

    def finish_request(self, request, client_address) -> None:
        # Only the child runs this.
        self.reactor.afterFork()
        self.socket.close()
        self.afterForkInChild(request)
        super().finish_request(request, client_address)

    def afterForkInChild(self, request) -> None:
        """
        In the child, before it serves its connection.
        """

    def server_close(self) -> None:
        """
        Stop listening, and end the children: the server goes with them.
        """
        for pid in list(self.active_children or ()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        super().server_close()
