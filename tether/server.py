"""
The tether server: authenticated clients get an address from a pool; their
packets go to a TUN device after anti-spoofing, isolation and egress
checks, and packets the kernel routes to the TUN go back to their client.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import deque
from dataclasses import dataclass, field

from twisted.application import service
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.pair.tuntap import TuntapPort
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from coursenet.accounts import PasswordFrom
from coursenet.admission import Admission
from tether.netconf import ServerNetwork
from tether.offload import PLAIN_HDR, OffloadError, TunDevice, VnetHeader, checkHeader, writeTun
from tether.protocol import (
    OUTPUT_FULL,
    LogBudget,
    OffloadTunPort,
    OutputLimits,
    TetherLink,
    TetherResource,
    TetherSite,
    checkKeepalive,
    describePeer,
    openTun,
)
from tether.wire import (
    EXTENSIONS,
    GSO,
    MAX_MESSAGE,
    MAX_PACKET,
    VNET_HDR_LEN,
    Close,
    Counters,
    Hello,
    ProtocolError,
    Welcome,
    agree,
    ipv4Addresses,
    parseHello,
)

#: Destinations no client may reach, whatever the options: the server's
#: loopback, "this network", link-local, multicast and broadcast.
ALWAYS_DENIED = ("127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32")


@dataclass(eq=False)
class Lease:
    """
    One client's address, kept for a grace period after its link is lost so
    that a reconnect with the same session gets it back.
    """

    name: str
    session: str
    address: ipaddress.IPv4Address
    counters: Counters = field(default_factory=Counters)
    link: ServerLink | None = None
    #: The call that releases the address once the grace period is over.
    expiry: IDelayedCall | None = None

    @property
    def packed(self) -> bytes:
        return self.address.packed


class AddressPool:
    """
    The client addresses of a network: every host address but the first,
    which is the server's own (the gateway).
    """

    def __init__(self, network: str) -> None:
        self.network = ipaddress.IPv4Network(network)
        if self.network.num_addresses < 4:
            raise ValueError(f"pool {network} is too small: use a /30 or larger")
        hosts = self.network.hosts()
        self.gateway = next(hosts)
        self._free = deque(hosts)

    def take(self) -> ipaddress.IPv4Address | None:
        return self._free.popleft() if self._free else None

    def __len__(self) -> int:
        return len(self._free)

    def give(self, address: ipaddress.IPv4Address) -> None:
        self._free.append(address)


def _netmask(network: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(network)
    return int(n.network_address), int(n.netmask)


class TetherServer:
    """
    Sessions, addresses and the packet path between links and the TUN.

    @param checker: an L{ICredentialsChecker} for C{UsernamePassword}: the
        client's name and token.
    @param limits: how much may wait to be sent to each client.
    @param admission: how many connections the site takes, in total and
        from one address (L{TetherSite}'s defaults if L{None}).
    @param maxLeasesPerName: how many addresses one name (one token) may
        hold at once, its sessions kept for the grace period included.
    @ivar tun: where packets from clients go (C{write(bytes)}), set once the
        TUN device is open.
    @ivar logBudget: the lines clients cause before their hello, and the
        site's access log, go through it.

    @raise ValueError: unless 0 < C{keepalive} < C{timeout}.
    """

    _log = Logger()

    def __init__(self, checker, pool: str, *, mtu: int = 1400, routes=("0.0.0.0/0",),
                 deny=(), isolate: bool = True, keepalive: float = 15.0, timeout: float = 45.0,
                 grace: float = 60.0, helloTimeout: float = 10.0, allowPlain: bool = False,
                 maxMessage: int = MAX_MESSAGE, offload: bool = True, limits: OutputLimits = OutputLimits(),
                 admission: Admission | None = None, maxLeasesPerName: int = 1, reactor=None) -> None:
        checkKeepalive(keepalive, timeout)
        if maxLeasesPerName < 1:
            raise ValueError(f"maxLeasesPerName must be at least 1, not {maxLeasesPerName}")
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.checker = checker
        self.pool = AddressPool(pool)
        self.mtu = mtu
        self.routes = tuple(str(ipaddress.IPv4Network(r)) for r in routes)
        self.isolate = isolate
        self.keepalive = keepalive
        self.timeout = timeout
        self.grace = grace
        self.helloTimeout = helloTimeout
        self.allowPlain = allowPlain
        self.maxMessage = maxMessage
        self.limits = limits
        self.admission = admission
        self.maxLeasesPerName = maxLeasesPerName
        self.logBudget = LogBudget(self._log, reactor)
        #: The extensions a welcome may accept.
        self.extensions = EXTENSIONS if offload else ()
        self.tun: TunDevice | None = None
        self.counters = Counters()
        self._denied = [_netmask(n) for n in (*ALWAYS_DENIED, *deny)]
        self._poolNet = _netmask(str(self.pool.network))
        self._leases: dict[str, Lease] = {}
        self._byAddress: dict[bytes, Lease] = {}
        #: Each name's leases, oldest first.
        self._byName: dict[str, list[Lease]] = {}
        self._stats: LoopingCall | None = None

    # WebSocketServerFactory

    def refusal(self, request) -> None:
        """
        Anyone may try: the hello authenticates.
        """
        return None

    def buildProtocol(self, request) -> ServerLink:
        return ServerLink(self, request.isSecure(), describePeer(request.getClientAddress()), self.reactor)

    def resource(self) -> Resource:
        """
        The web tree: the WebSocket endpoint at C{/tether/v1}.
        """
        root, tether = Resource(), Resource()
        root.putChild(b"tether", tether)
        tether.putChild(b"v1", TetherResource(self, self.maxMessage, self.limits, self.reactor))
        return root

    def site(self) -> TetherSite:
        """
        The web site to listen with: L{resource}, its access log kept
        quiet (L{TetherSite}) within L{logBudget}, its connections capped
        by L{admission}.
        """
        return TetherSite(self.resource(), reactor=self.reactor, budget=self.logBudget, admission=self.admission)

    # Sessions

    async def admit(self, link: ServerLink, hello: Hello) -> Lease:
        """
        Authenticate C{hello} and give its link a lease: the session's own
        if it names one still held for this client, else a fresh address.

        @raise ProtocolError: for a wrong token, a closed link or an empty pool.
        """
        # The checker throttles guessing by name and by the client's host,
        # the part of "HOST:PORT" (describePeer) before the last colon.
        host = link.peer.rpartition(":")[0].strip("[]") or None
        try:
            name = await self.checker.requestAvatarId(
                PasswordFrom(hello.name.encode("utf-8"), hello.token.encode("utf-8"), host)
            )
        except UnauthorizedLogin:
            raise ProtocolError(Close.AUTH, "authentication failed: wrong name or token")
        if isinstance(name, bytes):
            name = name.decode("utf-8")
        if not link.connected:
            raise ProtocolError(Close.NORMAL, "link closed during authentication")
        lease = self._leases.get(hello.session) if hello.session else None
        if lease is not None and lease.name == name:
            if lease.expiry is not None and lease.expiry.active():
                lease.expiry.cancel()
            lease.expiry = None
            old, lease.link = lease.link, None
            if old is not None:
                old.refuse(ProtocolError(Close.REPLACED, "replaced by a newer connection of this session"))
        else:
            lease = Lease(name, secrets.token_urlsafe(18), self._address(name))
            self._leases[lease.session] = lease
            self._byAddress[lease.packed] = lease
            self._byName.setdefault(name, []).append(lease)
        lease.link = link
        return lease

    def _address(self, name: str) -> ipaddress.IPv4Address:
        """
        An address for a new session of C{name}: a free one while the name
        holds fewer than L{maxLeasesPerName}, else the one its oldest
        session without a link was keeping for the grace period (a client
        restarted without its session takes its own address back).

        @raise ProtocolError: 4429 when every lease of the name has a live
            link, 4503 when the pool is empty.
        """
        held = self._byName.get(name, [])
        if len(held) >= self.maxLeasesPerName:
            away = next((lease for lease in held if lease.link is None), None)
            if away is None:
                raise ProtocolError(
                    Close.NAME_LIMIT, f"{name} already holds {len(held)} address"
                    f"{'es' if len(held) > 1 else ''} (limit {self.maxLeasesPerName} a name): close"
                    " another connection of it or resume its session, or ask for a higher"
                    " --max-leases-per-token",
                )
            self._log.info("{name}: address {address} of an earlier session taken over by a new one",
                           name=name, address=str(away.address))
            self._forget(away)
            return away.address
        address = self.pool.take()
        if address is None:
            raise ProtocolError(Close.POOL, "address pool exhausted: try again later")
        return address

    def welcome(self, lease: Lease, hello: Hello) -> Welcome:
        return Welcome(
            address=str(lease.address), prefix=self.pool.network.prefixlen,
            gateway=str(self.pool.gateway), mtu=self.mtu, session=lease.session,
            routes=self.routes, keepalive=self.keepalive, timeout=self.timeout,
            maxMessage=self.maxMessage, binary=hello.binary,
            offload=agree(hello.offload, self.extensions),
        )

    def linkLost(self, link: ServerLink, bye: bool = False) -> None:
        """
        C{link} is gone: keep its lease for the grace period (none after a
        bye), then give the address back.
        """
        lease = link.lease
        if lease is None or lease.link is not link:
            return
        lease.link = None
        self._log.info("{peer} disconnected (address {address}): {counters}",
                       peer=link.who, address=str(lease.address), counters=lease.counters.summary())
        if bye or self.grace <= 0:
            self._expire(lease)
        else:
            lease.expiry = self.reactor.callLater(self.grace, self._expire, lease)

    def _expire(self, lease: Lease) -> None:
        if self._forget(lease):
            self.pool.give(lease.address)
            self._log.info("{name}: address {address} released", name=lease.name, address=str(lease.address))

    def _forget(self, lease: Lease) -> bool:
        """
        Drop C{lease} (its address not yet back in the pool).

        @return: whether it was held.
        """
        if lease.expiry is not None and lease.expiry.active():
            lease.expiry.cancel()
        lease.expiry = None
        if self._leases.pop(lease.session, None) is None:
            return False
        del self._byAddress[lease.packed]
        held = self._byName[lease.name]
        held.remove(lease)
        if not held:
            del self._byName[lease.name]
        return True

    # The packet path

    def fromClient(self, lease: Lease, message: bytes, offload: bool = False) -> None:
        """
        A packet from a client: checked, then written to the TUN device.

        @param offload: whether C{message} is a virtio-net header and a
            (super-)packet, the C{gso} extension; the checks apply to the
            packet's IPv4 header, which every segment of it will carry.
        """
        counters = lease.counters
        counters.packetsIn += 1
        counters.bytesIn += len(message)
        packet = message[VNET_HDR_LEN:] if offload else message
        addresses = ipv4Addresses(packet)
        if addresses is None:
            return self._drop(lease, "not IPv4", f"{len(packet)} bytes")
        source, destination = addresses
        if source != lease.packed:
            return self._drop(lease, "spoofed source", str(ipaddress.IPv4Address(source)))
        dst = int.from_bytes(destination, "big")
        net, mask = self._poolNet
        toClient = dst & mask == net and destination != self.pool.gateway.packed
        if self.isolate and toClient:
            return self._drop(lease, "client to client", str(ipaddress.IPv4Address(destination)))
        for net, mask in self._denied:
            if dst & mask == net:
                return self._drop(lease, "denied destination", str(ipaddress.IPv4Address(destination)))
        try:
            if offload and message[:VNET_HDR_LEN] != PLAIN_HDR:
                checkHeader(VnetHeader.parse(message), packet)
            if toClient:
                # Straight to the other client's link, as a switch would:
                # the kernel's forwarding and the nftables table (which
                # refuses new connections towards clients) never see it.
                peer = self._byAddress.get(destination)
                if peer is None or peer.link is None:
                    self._drop(lease, "no client for destination", str(ipaddress.IPv4Address(destination)))
                else:
                    self._toLink(peer, message if offload else packet, offload)
                return
            writeTun(self.tun, message, offload)
        except OffloadError as e:
            self._drop(lease, "bad offload header", str(e))
        except OSError as e:
            self._drop(lease, "TUN write failed", e.strerror or str(e))

    def fromTun(self, data: bytes) -> None:
        """
        A packet the kernel routed to the TUN device: to its client, if any,
        as a super-packet if its link carries them, else cut up here.
        """
        vnet = getattr(self.tun, "vnet", False)
        addresses = ipv4Addresses(data[VNET_HDR_LEN:] if vnet else data)
        lease = self._byAddress.get(addresses[1]) if addresses else None
        if lease is None or lease.link is None:
            self.counters.drop("no client for destination")
            return
        self._toLink(lease, data, vnet)

    def _toLink(self, lease: Lease, data: bytes, vnet: bool) -> None:
        """
        Send C{data} (behind a virtio-net header if C{vnet}) to the client
        holding C{lease}, which has a link.
        """
        assert lease.link is not None
        refusal = lease.link.sendFromTun(data, vnet, lease.counters)
        if refusal == OUTPUT_FULL:
            if lease.counters.drop(OUTPUT_FULL):
                self._log.warn(
                    "dropping packets to {name} ({address}): its output is full (not read fast enough);"
                    " further drops are only counted", name=lease.name, address=str(lease.address),
                )
        elif refusal is not None:
            self.counters.drop(refusal)

    def _drop(self, lease: Lease, reason: str, detail: str) -> None:
        if lease.counters.drop(reason):
            self._log.warn(
                "dropped a packet from {name} ({address}): {reason}: {detail};"
                " further drops of this kind are only counted",
                name=lease.name, address=str(lease.address), reason=reason, detail=detail,
            )

    # Life

    def start(self, statsInterval: float = 60.0) -> None:
        if statsInterval > 0:
            self._stats = LoopingCall(self.logStats)
            self._stats.clock = self.reactor
            self._stats.start(statsInterval, now=False)

    def logStats(self) -> None:
        self.logBudget.flush()
        for lease in list(self._leases.values()):
            self._log.info("{name} ({address}, {state}): {counters}", name=lease.name,
                           address=str(lease.address), state="up" if lease.link else "away",
                           counters=lease.counters.summary())

    def stop(self) -> None:
        """
        Close every link (1001) and release every address.
        """
        if self._stats is not None and self._stats.running:
            self._stats.stop()
        self.logBudget.flush()
        for lease in list(self._leases.values()):
            if lease.link is not None:
                lease.link.refuse(ProtocolError(Close.GOING_AWAY, "server shutting down"))
            self._expire(lease)


class ServerLink(TetherLink):
    """
    The server's end of one client WebSocket: hello first (within
    C{helloTimeout}), then packets.
    """

    def __init__(self, server: TetherServer, secure: bool, peer: str, clock) -> None:
        super().__init__(clock)
        self.server = server
        self.secure = secure
        self.peer = peer
        self.lease: Lease | None = None
        self.logBudget = server.logBudget
        self._pending = False
        self._helloTimer = None

    @property
    def authenticated(self) -> bool:
        return self.lease is not None

    @property
    def who(self) -> str:
        """
        The client as log lines name it: C{127.0.0.1:56480 [laptop]}, its
        token's name once admitted.
        """
        return f"{self.peer} [{self.lease.name}]" if self.lease is not None else self.peer

    def logName(self) -> str:
        return f" to {self.who}"

    def linkMade(self) -> None:
        self._helloTimer = self.clock.callLater(self.server.helloTimeout, self._noHello)

    def _noHello(self) -> None:
        self._helloTimer = None
        self.refuse(ProtocolError(Close.TIMEOUT, f"no hello within {self.server.helloTimeout:g} s"))

    def controlReceived(self, message: dict) -> None:
        if self.lease is None and not self._pending:
            hello = parseHello(message)
            if not (self.secure or self.server.allowPlain):
                raise ProtocolError(Close.PLAIN, "token refused over plain ws://: use wss://"
                                    " (or start the server with --allow-plain)")
            self._pending = True
            # The hello is here: the token check takes as long as the guess
            # throttle holds it (coursenet.throttle), with no hello timeout.
            if self._helloTimer is not None and self._helloTimer.active():
                self._helloTimer.cancel()
            Deferred.fromCoroutine(self.server.admit(self, hello)).addCallbacks(
                self._admitted, self._refused, callbackArgs=(hello,))
        elif message["type"] == "bye" and self.lease is not None:
            self.server.linkLost(self, bye=True)
            self.refuse(ProtocolError(Close.NORMAL, "bye"))
        else:
            raise ProtocolError(Close.BAD_MESSAGE, f"unexpected control message {message['type']!r}")

    def _admitted(self, lease: Lease, hello: Hello) -> None:
        if self._helloTimer is not None and self._helloTimer.active():
            self._helloTimer.cancel()
        self.lease = lease
        self.binary = hello.binary
        welcome = self.server.welcome(lease, hello)
        self.offload = GSO in welcome.offload
        self.sendControl(welcome.encode())
        self.startKeepalive(self.server.keepalive, self.server.timeout)
        self._log.info("{peer} connected: address {address}, session {session}",
                       peer=self.who, address=str(lease.address), session=lease.session[:6])

    def _refused(self, failure: Failure) -> None:
        self._pending = False
        error = failure.value if failure.check(ProtocolError) else ProtocolError(Close.AUTH, "authentication error")
        if not failure.check(ProtocolError):
            self._log.failure("checking a token", failure)
        self.note("refusals", LogLevel.warn, "refused {peer}: {reason}", peer=self.peer, reason=error.reason)
        self.refuse(error)

    def packetReceived(self, packet: bytes) -> None:
        if self.lease is None:
            raise ProtocolError(Close.BAD_MESSAGE, "data before welcome: send a hello first")
        if len(packet) > MAX_PACKET + (VNET_HDR_LEN if self.offload else 0):
            raise ProtocolError(Close.TOO_BIG, f"packet larger than {MAX_PACKET} bytes")
        self.server.fromClient(self.lease, packet, self.offload)

    def linkLost(self, reason) -> None:
        if self._helloTimer is not None and self._helloTimer.active():
            self._helloTimer.cancel()
        self.server.linkLost(self)


class ServerService(service.MultiService):
    """
    Open the TUN device, configure it (and NAT), then start the listeners
    (the children); on stop, the reverse.

    @param network: called with the TUN device's name, returns a
        L{tether.netconf.ServerNetwork}.
    """

    _log = Logger()

    def __init__(self, server: TetherServer, tunName: str, network, *, system=None,
                 statsInterval: float = 60.0) -> None:
        super().__init__()
        self.server = server
        self._tunName = tunName
        self._network = network
        self._system = system
        self._statsInterval = statsInterval
        self._net: ServerNetwork | None = None
        self._port: TuntapPort | None = None
        self.ready: Deferred | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.ready = Deferred.fromCoroutine(self._start())
        self.ready.addErrback(self._failed)

    async def _start(self) -> None:
        reactor = self.server.reactor
        port = self._port = openTun(self._tunName, self.server.fromTun, reactor, self._system,
                                    vnet=bool(self.server.extensions))
        self.server.tun = port
        name = port.interface.decode()
        if isinstance(port, OffloadTunPort):
            # One device for every client: super-packets for those whose
            # links take them, cut up in fromTun for the others.
            on = port.setOffload(True)
            self._log.info("TUN offloads (GSO super-packets): {state}", state="on" if on else "unavailable")
        net = self._net = self._network(name)
        await net.start()
        self.server.start(self._statsInterval)
        for child in self:
            child.startService()
        self._log.info("tether server up: TUN {tun}, gateway {gateway}, pool {pool}",
                       tun=name, gateway=str(self.server.pool.gateway), pool=str(self.server.pool.network))

    def _failed(self, failure: Failure) -> None:
        self._log.failure("tether server failed to start", failure)
        reactor = self.server.reactor
        Deferred.fromCoroutine(self._stop()).addBoth(lambda _: reactor.stop())

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.server.stop()
        await DeferredList([d for d in (c.stopService() for c in self if c.running) if d is not None])
        if self._net is not None:
            net, self._net = self._net, None
            await net.stop()
        if self._port is not None:
            port, self._port = self._port, None
            await port.stopListening()
