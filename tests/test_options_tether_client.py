"""
The tether client stops on what retrying cannot cure (issue 13): a
refused token makes C{twistd tether client} exit non-zero, and a server
certificate that does not verify is given up at once with a line saying to
pass C{--cafile}, instead of being retried forever.
"""

from __future__ import annotations

import os
import sys

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import endpoints
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue

from tests.tether_support import ListTun, NullNetwork, makeServer
from tether.client import Backoff, DirectConnector, TetherClient
from tether.wire import Close

BIN = os.path.dirname(sys.executable)


def tunMissing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for its TUN device"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest_twisted.ensureDeferred
async def test_certificateFailureIsGivenUpAtOnce():
    """A certificate verification error stops the connector after one attempt, with a reason naming --cafile."""
    client = TetherClient("lap", "secret", NullNetwork(), reactor=Clock())
    client.tun = ListTun()
    stopped, attempts = [], []
    client.onFatal = stopped.append

    async def connect(reactor, url, link, **kw):
        attempts.append(url)
        raise SSL.Error([("SSL routines", "", "certificate verify failed")])

    connector = DirectConnector(client, "wss://vpn.example:8780/tether/v1", backoff=Backoff(rng=lambda: 0.0),
                                connect=connect)
    connector.start()
    await connector.done
    assert len(attempts) == 1
    assert [e.code for e in stopped] == [Close.GOING_AWAY]
    assert "cannot verify the certificate of wss://vpn.example:8780/tether/v1" in stopped[0].reason
    assert "--cafile" in stopped[0].reason


@pytest_twisted.ensureDeferred
async def test_otherConnectFailuresAreRetried():
    """A refused connection is not a certificate problem: the connector waits and tries again."""
    clock = Clock()
    client = TetherClient("lap", "secret", NullNetwork(), reactor=clock)
    attempts = []

    async def connect(reactor, url, link, **kw):
        attempts.append(url)
        raise ConnectionRefusedError("refused")

    connector = DirectConnector(client, "wss://vpn.example:8780/tether/v1", backoff=Backoff(1.0, 1.0, rng=lambda: 0.0),
                                connect=connect)
    connector.start()
    clock.advance(1.1)
    assert len(attempts) == 2 and client.fatal is None
    connector.stop()
    await connector.done


async def runClient(tmp_path, *args: str) -> tuple[int, str, str]:
    (tmp_path / "token").write_text("lap:wrong\n")
    out, err, code = await getProcessOutputAndValue(
        os.path.join(BIN, "twistd"),
        ["-n", "--pidfile=", "tether", "client", "--token-file", "token", "--tun", f"tgu{os.getpid() % 100000}", *args],
        env=dict(os.environ), path=str(tmp_path),
    )
    return code, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.skipif(tunMissing() is not None, reason=tunMissing() or "")
@pytest_twisted.ensureDeferred
async def test_wrongTokenExitsNonZero(reactor, tmp_path):
    """twistd tether client refused for its token exits 1, no traceback, the refusal naming --token-file its last line."""
    server = makeServer(reactor, allowPlain=True)
    port = reactor.listenTCP(0, server.site(), interface="127.0.0.1")
    try:
        url = f"ws://127.0.0.1:{port.getHost().port}/tether/v1"
        code, out, err = await runClient(tmp_path, "--server", url, "--allow-plain")
    finally:
        await port.stopListening()
    assert code == 1, out + err
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert last == ("tether client: refused by the server: authentication failed: wrong name or token;"
                    " check the NAME:TOKEN in --token-file"), out + err


@pytest.mark.skipif(tunMissing() is not None, reason=tunMissing() or "")
@pytest_twisted.ensureDeferred
async def test_untrustedCertificateExitsNonZero(reactor, tmp_path):
    """twistd tether client facing a certificate it cannot verify exits 1 after one attempt, its last line naming --cafile."""
    from coursenet.tls import ensureDevCertificate, tlsListenString

    cert, key = ensureDevCertificate(str(tmp_path / "tls"))
    endpoint = endpoints.serverFromString(reactor, tlsListenString(0, cert, key, "127.0.0.1"))
    port = await endpoint.listen(Factory.forProtocol(Protocol))
    try:
        url = f"wss://localhost:{port.getHost().port}/tether/v1"
        code, out, err = await runClient(tmp_path, "--server", url)
    finally:
        await port.stopListening()
    assert code == 1, out + err
    assert "Traceback" not in out + err
    assert "reconnecting" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tether client: cannot verify the certificate of {url}"), out + err
    assert "give --cafile" in last
