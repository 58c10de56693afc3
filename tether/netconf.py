"""
Interfaces, routes and NAT: the C{ip}, C{nft} and C{sysctl} commands the
tether runs, built here as argument lists (pure, so tests read them) and
run through an L{ICommandRunner}.
"""

from __future__ import annotations

import ipaddress
import os
import shutil

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from zope.interface import implementer

from tether.interfaces import ICommandRunner

_log = Logger()
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class CommandFailed(Exception):
    """
    A configuration command exited with an error.
    """

    def __init__(self, argv: list[str], status: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)}: exit {status}: {stderr.strip()}")
        self.argv = argv
        self.status = status


@implementer(ICommandRunner)
class ProcessRunner:
    """
    Run commands as child processes of the reactor, never blocking it.
    """

    def __init__(self, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor

    def run(self, argv: list[str]) -> Deferred:
        return Deferred.fromCoroutine(self._run(argv))

    async def _run(self, argv: list[str]) -> str:
        path = shutil.which(argv[0], path=_SBIN)
        if path is None:
            raise CommandFailed(argv, 127, f"{argv[0]} not found: install it (Debian: iproute2, nftables, procps)")
        out, err, status = await getProcessOutputAndValue(
            path, argv[1:], env=dict(os.environ), reactor=self._reactor
        )
        if status != 0:
            raise CommandFailed(argv, status, err.decode("utf-8", "replace"))
        _log.debug("ran {argv}", argv=" ".join(argv))
        return out.decode("utf-8", "replace")


def tunnelRoutes(route: str) -> list[str]:
    """
    The routes to install for C{route}: a default route becomes two /1
    halves, more specific than the original default, which stays untouched.
    """
    network = ipaddress.IPv4Network(route)
    if network.prefixlen == 0:
        return ["0.0.0.0/1", "128.0.0.0/1"]
    return [str(network)]


def linkUp(dev: str, address: str, prefix: int, mtu: int) -> list[list[str]]:
    """
    Bring C{dev} up with C{mtu} and exactly one address.
    """
    return [
        ["ip", "link", "set", "dev", dev, "mtu", str(mtu), "up"],
        ["ip", "addr", "flush", "dev", dev],
        ["ip", "addr", "add", f"{address}/{prefix}", "dev", dev],
    ]


def parseRouteGet(output: str) -> tuple[str | None, str]:
    """
    The gateway (or L{None} on a direct link) and device from the output of
    C{ip route get ADDRESS}.

    @raise ValueError: if there is no device in it.
    """
    words = output.split()
    gateway = words[words.index("via") + 1] if "via" in words else None
    if "dev" not in words:
        raise ValueError(f"no route: {output.strip()!r}")
    return gateway, words[words.index("dev") + 1]


def natTable(tun: str) -> str:
    """
    The name of the nftables table the server owns for C{tun}.
    """
    return "tether_" + "".join(c if c.isalnum() else "_" for c in tun)


def natRules(tun: str, pool: str, deny: list[str]) -> list[str]:
    """
    One C{nft} command line (a single transaction) that creates the
    server's table: masquerade for the pool, no new connections in towards
    clients, no forwarding to denied networks, and no local service but
    ICMP for clients.
    """
    t = natTable(tun)
    script = [
        f"add table ip {t}",
        f"add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat ; }}",
        f'add rule ip {t} postrouting ip saddr {pool} oifname != "{tun}" masquerade',
        f"add chain ip {t} forward {{ type filter hook forward priority filter ; }}",
        f'add rule ip {t} forward oifname "{tun}" ct state new drop',
        f"add chain ip {t} input {{ type filter hook input priority filter ; }}",
        f'add rule ip {t} input iifname "{tun}" ip protocol != icmp drop',
    ]
    if deny:
        script.append(f'add rule ip {t} forward iifname "{tun}" ip daddr {{ {", ".join(deny)} }} drop')
    return ["nft", " ; ".join(script)]


def _covered(address: str, routes: list[str]) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.IPv4Network(r) for r in routes)


class ServerNetwork:
    """
    The server's side: the TUN address and, with NAT, forwarding and the
    nftables table, undone by L{stop}.
    """

    def __init__(self, runner: ICommandRunner, tun: str, gateway: str, pool: str,
                 mtu: int, nat: bool, deny: list[str]) -> None:
        self._runner = runner
        self._tun = tun
        self._gateway = gateway
        self._pool = ipaddress.IPv4Network(pool)
        self._mtu = mtu
        self._nat = nat
        self._deny = deny
        self._forwarding: str | None = None
        self._tableUp = False

    async def start(self) -> None:
        for argv in linkUp(self._tun, self._gateway, self._pool.prefixlen, self._mtu):
            await self._runner.run(argv)
        if not self._nat:
            return
        # A crash may have left the table behind: replace it.
        await self._dropTable()
        await self._runner.run(natRules(self._tun, str(self._pool), self._deny))
        self._tableUp = True
        self._forwarding = (await self._runner.run(["sysctl", "-n", "net.ipv4.ip_forward"])).strip()
        await self._runner.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        _log.info("NAT on: {pool} masqueraded, nftables table ip {table}",
                  pool=str(self._pool), table=natTable(self._tun))

    async def stop(self) -> None:
        if self._forwarding is not None:
            await self._runner.run(["sysctl", "-q", "-w", f"net.ipv4.ip_forward={self._forwarding}"])
            self._forwarding = None
        if self._tableUp:
            await self._dropTable()
            self._tableUp = False
            _log.info("NAT off: nftables table ip {table} removed", table=natTable(self._tun))

    async def _dropTable(self) -> None:
        try:
            await self._runner.run(["nft", "delete", "table", "ip", natTable(self._tun)])
        except CommandFailed:
            pass


class ClientNetwork:
    """
    The client's side: address, MTU and routes on the TUN device, and a host
    route to the server through the original gateway so that a default
    route through the tunnel does not loop.  L{restore} removes every route
    it added; the addresses go with the device.
    """

    def __init__(self, runner: ICommandRunner, device: str) -> None:
        self._runner = runner
        self.device = device
        self._routes: list[str] = []
        self._hostRoute: list[str] | None = None

    async def apply(self, address: str, prefix: int, mtu: int, routes: tuple[str, ...],
                    server: str | None = None) -> None:
        """
        Configure the device for a welcome; C{server} is the address the
        tunnel's WebSocket goes to, when this side opened it.
        """
        for argv in linkUp(self.device, address, prefix, mtu):
            await self._runner.run(argv)
        wanted = [r for route in routes for r in tunnelRoutes(route)]
        if server is not None and self._hostRoute is None and _covered(server, wanted) and not (
            await self._runner.run(["ip", "route", "show", "exact", f"{server}/32"])
        ).strip():
            # A host route the operator made stays as it is, and is not ours to remove.
            gateway, dev = parseRouteGet(await self._runner.run(["ip", "route", "get", server]))
            via = ["via", gateway] if gateway else []
            self._hostRoute = [f"{server}/32", *via, "dev", dev]
            await self._runner.run(["ip", "route", "replace", *self._hostRoute])
        for route in wanted:
            await self._runner.run(["ip", "route", "replace", route, "dev", self.device])
            if route not in self._routes:
                self._routes.append(route)

    async def restore(self) -> None:
        for route in self._routes:
            await self._ignoreFailure(["ip", "route", "del", route, "dev", self.device])
        self._routes = []
        if self._hostRoute is not None:
            await self._ignoreFailure(["ip", "route", "del", *self._hostRoute])
            self._hostRoute = None

    async def _ignoreFailure(self, argv: list[str]) -> None:
        try:
            await self._runner.run(argv)
        except CommandFailed as e:
            _log.info("cleanup: {error}", error=str(e))
