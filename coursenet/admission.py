"""
Admission: how many connections a server takes, in total and from one
address, for every service.

A refused connection never reaches the service's protocol: the factory
builds a L{Busy} protocol instead, which sends the service's own busy reply
(C{protocol.busyReply}) and closes.  Twisted's
C{policies.LimitTotalConnectionsFactory} does the same with its
C{overflowProtocol}.
"""

from __future__ import annotations

import collections
import resource
from typing import Any

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from coursenet.logs import LogBudget, peerName

#: Connections from one address by default: a class behind one NAT.
DEFAULT_PER_ADDRESS = 256
#: Descriptors kept back for the process itself: listeners, log files,
#: databases, thread pools.
_RESERVED_FDS = 64


def descriptorLimit() -> int:
    """
    The process's soft limit on open file descriptors.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def defaultMaxConnections(fdsPerConnection: int = 1) -> int:
    """
    The most connections that fit under the descriptor limit, read now,
    when each needs C{fdsPerConnection} descriptors.
    """
    return max(8, (descriptorLimit() - _RESERVED_FDS) // fdsPerConnection)


class Admission:
    """
    Counts of connections, in total and per address, with their caps.
    """

    def __init__(
        self,
        maxConnections: int | None = None,
        maxPerAddress: int | None = None,
        fdsPerConnection: int = 1,
    ) -> None:
        """
        @param maxConnections: connections at once; by default as many as
            fit under the process's descriptor limit.
        @param maxPerAddress: connections at once from one address; by
            default L{DEFAULT_PER_ADDRESS} (a class behind one NAT shares
            an address), or the total if that is lower.
        @param fdsPerConnection: descriptors a connection may hold (a
            socket, plus files being transferred), for the default.
        """
        fit = defaultMaxConnections(fdsPerConnection)
        if maxConnections is None:
            maxConnections = fit
        elif maxConnections > fit:
            Logger().warn(
                "{n} connections do not fit under the descriptor limit {limit};"
                " taking at most {fit}",
                n=maxConnections, limit=descriptorLimit(), fit=fit,
            )
            maxConnections = fit
        self.maxConnections = maxConnections
        if maxPerAddress is None:
            maxPerAddress = min(DEFAULT_PER_ADDRESS, maxConnections)
        self.maxPerAddress = maxPerAddress
        self.connections = 0
        self._perAddress: collections.Counter[str] = collections.Counter()

    def admit(self, address: str) -> str | None:
        """
        Count a new connection from C{address}, or say why it is refused.
        """
        if self.connections >= self.maxConnections:
            return f"server full ({self.maxConnections} connections); try again later"
        if self._perAddress[address] >= self.maxPerAddress:
            return f"too many connections from {address} (limit {self.maxPerAddress}); try again later"
        self._perAddress[address] += 1
        self.connections += 1
        return None

    def release(self, address: str) -> None:
        """
        A connection admitted from C{address} has ended.
        """
        self._perAddress[address] -= 1
        if self._perAddress[address] <= 0:
            del self._perAddress[address]
        self.connections -= 1

    def count(self, address: str) -> int:
        return self._perAddress[address]


class Busy(Protocol):
    """
    What a refused connection talks to: the busy reply, then the close,
    aborted if the client does not read it within C{closeTimeout} seconds.
    """

    # A stream listener's connection: TCP, or TLS over it (INegotiated).
    transport: ITCPTransport | None

    def __init__(self, reply: bytes, clock: Any, closeTimeout: float = 5.0, log: LogBudget | None = None) -> None:
        self.reply = reply
        self.clock = clock
        self.closeTimeout = closeTimeout
        self.log = log

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.log is not None:
            self.log.info("refused {peer}: {reply}", peer=peerName(self.transport.getPeer()), reply=self.reply.strip())
        self.transport.write(self.reply)
        self.transport.loseConnection()
        self._abort = self.clock.callLater(self.closeTimeout, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        if self._abort.active():
            self._abort.cancel()


class AdmittingFactory:
    """
    Mix in before a server factory whose protocol is a
    L{coursenet.receiver.CommandReceiver} with a C{busyReply(text)}
    static method.  The factory sets C{self.admission}.
    """

    admission: Admission
    protocol: Any
    _refusals: LogBudget | None = None
    _log = Logger()

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None) or str(addr)
        refusal = self.admission.admit(host)
        if refusal is not None:
            clock = getattr(self, "reactor", None)
            if clock is None:
                from twisted.internet import reactor as clock
            if self._refusals is None:
                # A connection flood must not become a flood of log lines.
                self._refusals = LogBudget(self._log, clock)
            busy = Busy(self.protocol.busyReply(refusal), clock, log=self._refusals)
            busy.factory = self
            return busy
        p = super().buildProtocol(addr)  # type: ignore[misc]
        if p is None:
            self.admission.release(host)
            return None
        p._admittedAs = host
        return p
