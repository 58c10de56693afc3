"""
The tether client: a TUN device whose packets cross a WebSocket to the
server, opened either directly or through a relay page in a browser that
this client serves and that connects back to it.
"""

from __future__ import annotations

import os
import random
import secrets

from twisted.application import service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.pair.tuntap import TuntapPort
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.static import Data, File

from tether import _compat
from tether.netconf import CommandFailed
from tether.protocol import (
    OUTPUT_FULL,
    LogBudget,
    TetherLink,
    TetherResource,
    connectWebSocket,
    describePeer,
    openTun,
)
from tether.offload import OffloadError, TunDevice, VnetDevice, writeTun
from tether.wire import (
    EXTENSIONS,
    GSO,
    MAX_MESSAGE,
    VNET_HDR_LEN,
    Close,
    Counters,
    Hello,
    ProtocolError,
    Welcome,
    encodeControl,
    parseWelcome,
)

STATIC = os.path.join(os.path.dirname(__file__), "static")

#: Refusals that a retry cannot cure: the client stops on them.
FATAL = (Close.AUTH, Close.PLAIN, Close.VERSION)


class Backoff:
    """
    Reconnect delays: doubling from C{initial} to C{maximum}, with up to 25%
    random jitter so that many clients do not retry in step.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, rng=random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self._next = initial

    def delay(self) -> float:
        value = self._next
        self._next = min(self.maximum, self._next * 2)
        return value * (1 + 0.25 * self._rng())

    def reset(self) -> None:
        self._next = self.initial


class ClientLink(TetherLink):
    """
    The client's end of a tether WebSocket, direct to the server or to a
    relay page: hello first, then packets both ways once welcomed.
    """

    def __init__(self, client: TetherClient, server: str | None = None) -> None:
        super().__init__(client.reactor)
        self.client = client
        self.server = server
        self.welcomed = False
        self.lost: Deferred = Deferred()

    def linkMade(self) -> None:
        self.binary = self.client.binary
        self.sendControl(self.client.hello().encode())

    def controlReceived(self, message: dict) -> None:
        if message["type"] != "welcome" or self.welcomed:
            raise ProtocolError(Close.BAD_MESSAGE, f"unexpected control message {message['type']!r}")
        welcome = parseWelcome(message)
        self.welcomed = True
        self.offload = GSO in welcome.offload
        self.startKeepalive(welcome.keepalive, welcome.timeout)
        self.client.welcomed(self, welcome)

    def packetReceived(self, packet: bytes) -> None:
        if not self.welcomed:
            raise ProtocolError(Close.BAD_MESSAGE, "data before welcome")
        self.client.fromLink(packet, self.offload)

    def linkLost(self, reason: Failure) -> None:
        self.client.linkLost(self, reason)
        self.lost.callback(self.closeReason)


class TetherClient:
    """
    The TUN device and the one link that carries its packets.

    @param network: a L{tether.netconf.ClientNetwork} for the device.
    """

    _log = Logger()

    def __init__(self, name: str, token: str, network, *, binary: bool = True, offload: bool = True,
                 reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.name = name
        self.token = token
        self.network = network
        self.binary = binary
        #: The extensions a hello offers.
        self.extensions = EXTENSIONS if offload else ()
        self.tun: TunDevice | None = None
        self.link: ClientLink | None = None
        self.session: str | None = None
        self.config: tuple | None = None
        self.counters = Counters()
        self.fatal: ProtocolError | None = None
        self.onFatal = lambda error: None
        self._configuring: Deferred | None = None

    def hello(self) -> Hello:
        return Hello(self.name, self.token, self.session, self.binary, self.extensions)

    def attach(self, link: ClientLink) -> None:
        """
        Make C{link} the one that carries packets, closing any other.
        """
        old, self.link = self.link, link
        if old is not None and old is not link:
            old.refuse(ProtocolError(Close.REPLACED, "replaced by a newer link"))

    def welcomed(self, link: ClientLink, welcome: Welcome) -> None:
        self.session = welcome.session
        tun = self.tun
        if isinstance(tun, VnetDevice) and tun.offload != link.offload:
            tun.setOffload(link.offload)
        self._log.info("tunnel up: address {address}/{prefix}, mtu {mtu}, routes {routes}, offload {offload}",
                       address=welcome.address, prefix=welcome.prefix, mtu=welcome.mtu,
                       routes=" ".join(welcome.routes), offload=" ".join(welcome.offload) or "none")
        config = (welcome.address, welcome.prefix, welcome.mtu, welcome.routes)
        if config != self.config:
            self.config = config
            self._configuring = Deferred.fromCoroutine(
                self.network.apply(*config, server=link.server)
            ).addErrback(self._configFailed)

    def _configFailed(self, failure: Failure) -> None:
        failure.trap(CommandFailed)
        self._log.error("cannot configure the tunnel: {error}", error=str(failure.value))
        self.config = None

    def fromTun(self, data: bytes) -> None:
        vnet = getattr(self.tun, "vnet", False)
        start = VNET_HDR_LEN if vnet else 0
        if len(data) <= start or data[start] >> 4 != 4:
            # The kernel's own IPv6 chatter (router solicitations): v1 is IPv4.
            self.counters.drop("not IPv4")
            return
        link = self.link
        if link is None or not link.welcomed or not link.connected:
            self.counters.drop("link down")
            return
        refusal = link.sendFromTun(data, vnet, self.counters)
        if refusal is not None and self.counters.drop(refusal) and refusal == OUTPUT_FULL:
            self._log.warn("dropping packets to the server: the link's output is full (not read fast enough);"
                           " further drops are only counted")

    def fromLink(self, message: bytes, offload: bool = False) -> None:
        self.counters.packetsIn += 1
        self.counters.bytesIn += len(message)
        try:
            writeTun(self.tun, message, offload)
        except (OSError, OffloadError) as e:
            if self.counters.drop("TUN write failed"):
                self._log.warn("cannot write to the TUN device: {error}", error=str(e))

    def linkLost(self, link: ClientLink, reason: Failure) -> None:
        if self.link is link:
            self.link = None
        error = link.closeReason
        why = f"{int(error.code)} {error.reason}" if error else reason.getErrorMessage()
        self._log.info("link lost ({why}); {counters}", why=why, counters=self.counters.summary())
        if error is not None and error.code in FATAL and link.welcomed is False:
            hint = "; check the NAME:TOKEN in --token-file" if error.code == Close.AUTH else ""
            self.giveUp(ProtocolError(error.code, f"refused by the server: {error.reason}{hint}"))

    def giveUp(self, error: ProtocolError) -> None:
        """
        Stop for good: C{error} says why retrying cannot help (a refused
        token, a certificate that does not verify).
        """
        self.fatal = error
        self._log.error("{reason}", reason=error.reason)
        self.onFatal(error)

    async def stop(self) -> None:
        link = self.link
        if link is not None and link.connected:
            link.sendControl(encodeControl({"type": "bye"}))
            link.refuse(ProtocolError(Close.NORMAL, "client stopping"))
        if self._configuring is not None:
            await self._configuring
        await self.network.restore()


class DirectConnector:
    """
    Keep one WebSocket open to the server, reconnecting with backoff.
    """

    _log = Logger()

    def __init__(self, client: TetherClient, url: str, *, cafile: str | None = None,
                 backoff: Backoff | None = None, connect=connectWebSocket) -> None:
        self.client = client
        self.url = url
        self.cafile = cafile
        self.backoff = backoff or Backoff()
        self._connect = connect
        self._running = False
        self._sleep: Deferred | None = None
        self.done: Deferred | None = None

    def start(self) -> None:
        self._running = True
        self.done = Deferred.fromCoroutine(self._loop())

    async def _loop(self) -> None:
        reactor = self.client.reactor
        while self._running and self.client.fatal is None:
            link = ClientLink(self.client)
            try:
                await self._connect(reactor, self.url, link, cafile=self.cafile, maxMessage=MAX_MESSAGE)
            except Exception as e:
                problem = certificateProblem(e)
                if problem is not None:
                    # A certificate does not start verifying by itself: retrying is no use.
                    self.client.giveUp(ProtocolError(
                        Close.GOING_AWAY,
                        f"cannot verify the certificate of {self.url} ({problem}): give --cafile with the"
                        " certificate that signed it (make run's is var/tls/cert.pem)",
                    ))
                    break
                self._log.warn("cannot reach {url}: {error}", url=self.url, error=str(e) or repr(e))
            else:
                # Connected: the link has its WebSocket, on a TCP (or TLS) connection.
                assert link.transport is not None
                peer = _compat.connectionUnder(link.transport).getPeer()
                assert isinstance(peer, (IPv4Address, IPv6Address))
                link.server = peer.host
                self.client.attach(link)
                await link.lost
                if link.welcomed:
                    self.backoff.reset()
            if not self._running or self.client.fatal is not None:
                break
            delay = self.backoff.delay()
            self._log.info("reconnecting in {delay:.1f} s", delay=delay)
            self._sleep = deferLater(reactor, delay, lambda: None)
            try:
                await self._sleep
            except CancelledError:
                break
            finally:
                self._sleep = None

    def stop(self) -> None:
        self._running = False
        if self._sleep is not None:
            self._sleep.cancel()


def certificateProblem(error: Exception) -> str | None:
    """
    What is wrong with the server's certificate, if C{error} (from
    connecting) is a failed verification; L{None} for any other failure.
    """
    from OpenSSL import SSL
    from service_identity import VerificationError

    if isinstance(error, VerificationError):
        return f"not valid for this host name: {error}"
    if isinstance(error, SSL.Error) and "certificate verify failed" in str(error):
        return "certificate verify failed: not signed by a trusted authority"
    return None


class RelayLinks:
    """
    The WebSocket endpoint the relay page opens on this client: each new
    page connection becomes the link, after the key in its URL is checked.
    """

    _log = Logger()

    def __init__(self, client: TetherClient, key: str) -> None:
        self.client = client
        self.key = key.encode()
        self.logBudget = LogBudget(self._log, client.reactor)

    def refusal(self, request) -> str | None:
        if secrets.compare_digest(request.args.get(b"key", [b""])[0], self.key):
            return None
        self.logBudget.emit("refusals", LogLevel.warn, "refused a relay page from {peer}: wrong key",
                            peer=describePeer(request.getClientAddress()))
        return "wrong relay key: open the URL this client printed"

    def buildProtocol(self, request) -> ClientLink:
        link = ClientLink(self.client)
        self._log.info("relay page connected from {peer}", peer=describePeer(request.getClientAddress()))
        self.client.attach(link)
        return link


def relayResource(client: TetherClient, serverURL: str, key: str) -> Resource:
    """
    The relay site: the page and its script, C{config.json} (where the
    server is), and the WebSocket endpoint at C{/tether/v1}.
    """
    root = File(STATIC)
    root.indexNames = ["relay.html"]
    config = encodeControl({"server": serverURL, "path": "/tether/v1"}).encode()
    root.putChild(b"config.json", Data(config, "application/json"))
    tether = Resource()
    root.putChild(b"tether", tether)
    tether.putChild(b"v1", TetherResource(RelayLinks(client, key), clock=client.reactor))
    return root


class ClientService(service.MultiService):
    """
    Open the TUN device, then connect (direct) or start the relay listener
    (the children); on stop, say bye, restore routes and close the device.
    """

    _log = Logger()

    def __init__(self, client: TetherClient, tunName: str, *, connector: DirectConnector | None = None,
                 system=None) -> None:
        super().__init__()
        self.client = client
        self._tunName = tunName
        self._connector = connector
        self._system = system
        self._port: TuntapPort | None = None

    def startService(self) -> None:
        port = self._port = openTun(self._tunName, self.client.fromTun, self.client.reactor, self._system,
                                    vnet=bool(self.client.extensions))
        self.client.tun = port
        self.client.network.device = port.interface.decode()
        super().startService()
        if self._connector is not None:
            self._connector.start()

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._connector is not None:
            self._connector.stop()
        await self.client.stop()
        for child in self:
            await maybeDeferred(child.stopService)
        if self._port is not None:
            port, self._port = self._port, None
            await port.stopListening()
