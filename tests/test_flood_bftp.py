"""
BFTP against a client that sends commands and never reads the replies
(issue 9): the server's memory stays bounded, the client is cut off within
the documented deadline, and another user is still served promptly.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from coursenet.receiver import CommandReceiver
from tests.flood_support import floodWithoutReading, readUntil
from tests.test_bftp_integration import PASSWORD, USER, mode, root, startServer  # noqa: F401 (fixtures)

LOGIN = f"HELLO BFTP/1\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n".encode()


@pytest.fixture
def shortDeadline(monkeypatch):
    """Cut a non-reading client after 3 s instead of the default, so the test is quick."""
    monkeypatch.setattr(CommandReceiver, "drainTimeout", 3.0)
    return 3.0


def noop(sock):
    sock.sendall(b"NOOP\r\n")
    readUntil(sock, b"200 ")


@pytest.mark.parametrize("loggedIn", [False, True], ids=["before-login", "after-login"])
@pytest_twisted.ensureDeferred
async def test_floodWithoutReadingIsBounded(reactor, root, mode, devCert, shortDeadline, loggedIn):
    """100 MB of HELP without reading: RSS grows < 32 MiB, the client is cut within the deadline, NOOP p99 < 100 ms for another client."""
    server = await startServer(reactor, root, mode, devCert)
    try:
        # A password's first check costs 16 MiB (scrypt); later ones a hash.
        # Pay it before measuring, so the figure is the flood's alone.
        await (await server.client()).quit()
        result = await floodWithoutReading(
            server.portNumber,
            b"HELP\r\n",
            noop,
            preamble=LOGIN if loggedIn else b"HELLO BFTP/1\r\n",
            setup=lambda s: (s.sendall(LOGIN), readUntil(s, b"230 ")),
            cafile=server.cafile,
        )
    finally:
        await server.stop()
    result.assertBounded(f"{mode} {'after' if loggedIn else 'before'} login", shortDeadline)
