"""
The tether's hello deadline against the guess throttle, on real sockets on
127.0.0.1 with the real password checker: once a hello is in, its token
check may take as long as the throttle holds it (docs/tether.md, section
4, step 3).
"""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import defer

from coursenet.accounts import PasswordChecker
from coursenet.throttle import GuessRule
from tests.tether_support import POOL, ListTun, NullNetwork
from tether.client import ClientLink, TetherClient
from tether.protocol import connectWebSocket
from tether.server import TetherServer
from tether.wire import Close

HELLO_TIMEOUT = 0.3


async def hello(reactor, url: str, token: str) -> tuple[object, float]:
    """
    Connect and say hello as C{lap} with C{token}: the welcome (or the
    close reason) and the seconds it took.
    """
    client = TetherClient("lap", token, NullNetwork(), reactor=reactor)
    answer: defer.Deferred = defer.Deferred()
    client.welcomed = lambda link, welcome: answer.callback(welcome)
    start = time.monotonic()
    link = await connectWebSocket(reactor, url, ClientLink(client))
    link.lost.addCallback(lambda reason: answer.called or answer.callback(reason))
    result = await answer
    elapsed = time.monotonic() - start
    if link.connected:
        link.transport.loseConnection()
        await link.lost
    return result, elapsed


@pytest_twisted.ensureDeferred
async def test_helloHeldByTheThrottleIsNotCutOffByTheHelloTimeout(reactor):
    """After wrong-token hellos from its address, a right token whose check the guess throttle holds well past the hello timeout is welcomed, and the wrong ones get 4401, none 4408."""
    checker = PasswordChecker(users=[("lap", "secret")], reactor=reactor,
                              rule=GuessRule(free=0, delay=0.3, maxDelay=0.6))
    server = TetherServer(checker, POOL, helloTimeout=HELLO_TIMEOUT, allowPlain=True, grace=0, reactor=reactor)
    server.tun = ListTun()
    port = reactor.listenTCP(0, server.site(), interface="127.0.0.1")
    url = f"ws://127.0.0.1:{port.getHost().port}/tether/v1"
    try:
        wrong = [defer.Deferred.fromCoroutine(hello(reactor, url, f"guess{i}")) for i in range(3)]
        # Each connect takes a round trip: the wrong checks are reserved first.
        await defer.Deferred.fromCoroutine(_pause(reactor, 0.2))
        welcome, waited = await hello(reactor, url, "secret")
        refusals = await defer.gatherResults(wrong)
        assert getattr(welcome, "address", None) == "198.18.100.2", welcome
        assert waited > 3 * HELLO_TIMEOUT
        assert [r.code for r, _ in refusals] == [Close.AUTH] * 3
    finally:
        server.stop()
        await port.stopListening()


async def _pause(reactor, seconds: float) -> None:
    from twisted.internet.task import deferLater
    await deferLater(reactor, seconds, lambda: None)
