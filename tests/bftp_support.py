"""
Test support for BFTP: an in-memory reactor whose thread pool runs work at
once, and a server and client joined by iosim, with no sockets at all.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from bftp.auth import makePortal
from bftp.client import BFTPClient
from bftp.protocol import BFTPFactory
from coursenet.accounts import PasswordChecker

USER, PASSWORD = "alice", "correct horse"
#: What a raw client sends to say hello and log in as USER.
LOGIN = f"HELLO BFTP/1\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n".encode()


class SyncThreadPool:
    """
    A thread pool that runs each call at once, in the calling thread.
    """

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class FakeReactor(MemoryReactorClock):
    """
    A memory reactor with a clock whose "threads" run synchronously.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pool = SyncThreadPool()

    def getThreadPool(self):
        return self._pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def makeFactory(root, reactor, anonymous: bool = False, **kwargs) -> BFTPFactory:
    """
    A BFTP server factory over C{root} with the account USER/PASSWORD.
    """
    checker = PasswordChecker(users=[(USER, PASSWORD)], reactor=reactor)
    kwargs.setdefault("loginDelay", 0)
    return BFTPFactory(
        str(root), makePortal(checker, anonymous), anonymous=anonymous, reactor=reactor, **kwargs
    )


def connected(factory: BFTPFactory, reactor, clientFactory=None):
    """
    A server protocol from C{factory} and a protocol from C{clientFactory}
    (a L{BFTPClient} by default) joined in memory.

    @return: C{(client, server, pump)}.
    """
    if clientFactory is None:
        clientFactory = lambda: BFTPClient(reactor)  # noqa: E731

    def server():
        p = factory.buildProtocol(None)
        return p

    return iosim.connectedServerAndClient(server, clientFactory, clock=reactor)


def result(d, pump):
    """
    Pump until C{d} fires; return its result or raise its failure.
    """
    pump.flush()
    assert d.called, "the Deferred did not fire"
    out = []
    d.addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class Raw(Protocol):
    """
    A client that records what the server says, to send it raw bytes.
    """

    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data

    def lines(self):
        return self.data.decode("utf-8").split("\r\n")[:-1]


def negotiatedDigest(data: bytes) -> str:
    """
    The hex digest of C{data} by the algorithm a client and server of this
    installation agree on (BLAKE3 where the package is there), as the
    Twisted client's get and put return it.
    """
    from bftp import digests

    h = digests.new(digests.AVAILABLE[0])
    h.update(data)
    return h.hexdigest()
