"""
The tether's hello on real sockets on 127.0.0.1 with the real password
checker: once a hello is in, its token check may take as long as the
guess throttle holds it (docs/tether.md, section 4, step 3), and one name
holds at most so many addresses, whoever else wants one (step 4).
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


async def hello(reactor, url: str, token: str, name: str = "lap", keep: list | None = None) -> tuple[object, float]:
    """
    Connect and say hello as C{name} with C{token}: the welcome (or the
    close reason) and the seconds it took.  The link is closed after, or
    appended to C{keep} if given.
    """
    client = TetherClient(name, token, NullNetwork(), reactor=reactor)
    answer: defer.Deferred = defer.Deferred()
    client.welcomed = lambda link, welcome: answer.callback(welcome)
    start = time.monotonic()
    link = await connectWebSocket(reactor, url, ClientLink(client))
    link.lost.addCallback(lambda reason: answer.called or answer.callback(reason))
    result = await answer
    elapsed = time.monotonic() - start
    if keep is not None and link.connected:
        keep.append(link)
    elif link.connected:
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


@pytest_twisted.ensureDeferred
async def test_oneNameTakesOneAddressOfASmallPool(reactor):
    """On a pool of five client addresses, six sessions of one name get one address and 4429 five times; another name is welcomed, also while the first name's lost session is kept for the grace period, and the first name's next session takes that address over."""
    checker = PasswordChecker(users=[("lap", "secret"), ("other", "pw"), ("third", "pw3")], reactor=reactor)
    server = TetherServer(checker, "198.18.100.0/29", allowPlain=True, grace=60, reactor=reactor)
    server.tun = ListTun()
    port = reactor.listenTCP(0, server.site(), interface="127.0.0.1")
    url = f"ws://127.0.0.1:{port.getHost().port}/tether/v1"
    links: list = []
    try:
        answers = [(await hello(reactor, url, "secret", keep=links))[0] for _ in range(6)]
        assert getattr(answers[0], "address", None) == "198.18.100.2"
        assert [getattr(a, "code", None) for a in answers[1:]] == [Close.NAME_LIMIT] * 5
        assert "lap already holds 1 address" in answers[1].reason
        other, _ = await hello(reactor, url, "pw", name="other", keep=links)
        assert getattr(other, "address", None) == "198.18.100.3"
        first = links.pop(0)
        first.transport.loseConnection()
        await first.lost
        third, _ = await hello(reactor, url, "pw3", name="third", keep=links)
        assert getattr(third, "address", None) == "198.18.100.4"
        again, _ = await hello(reactor, url, "secret", keep=links)
        assert getattr(again, "address", None) == "198.18.100.2"
    finally:
        for link in links:
            link.transport.loseConnection()
        await defer.DeferredList([link.lost for link in links])
        server.stop()
        await port.stopListening()
