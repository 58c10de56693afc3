"""
Interfaces, routes and NAT: the C{ip}, C{nft} and C{sysctl} commands the
tether runs, built here as argument lists (pure, so tests read them) and
run through an L{ICommandRunner}.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from zope.interface import implementer

from tether.interfaces import ICommandRunner

_log = Logger()
#: Where servers record the forwarding state they share (tmpfs: gone at
#: boot, as the kernel's own setting is).
STATE_DIR = "/run/tether"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
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


def tableRules(tun: str, pool: str, deny: list[str], nat: bool = True,
               allowServer: bool = False) -> list[str] | None:
    """
    One C{nft} command line (a single transaction) that creates the
    server's table: unless C{allowServer}, no local service but ICMP for
    clients, at any of the host's addresses; no forwarding to denied
    networks; and with C{nat}, masquerade for the pool and no new
    connections in towards clients.

    @return: the command, or L{None} if the table would be empty.
    """
    t = natTable(tun)
    script = [f"add table ip {t}"]
    if not allowServer:
        # The input hook sees every packet for one of the host's own
        # addresses (the gateway's and all others), whatever NAT does.
        script += [
            f"add chain ip {t} input {{ type filter hook input priority filter ; }}",
            f'add rule ip {t} input iifname "{tun}" ip protocol != icmp drop',
        ]
    if nat or deny:
        script.append(f"add chain ip {t} forward {{ type filter hook forward priority filter ; }}")
    if nat:
        script += [
            f"add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat ; }}",
            f'add rule ip {t} postrouting ip saddr {pool} oifname != "{tun}" masquerade',
            f'add rule ip {t} forward oifname "{tun}" ct state new drop',
        ]
    if deny:
        script.append(f'add rule ip {t} forward iifname "{tun}" ip daddr {{ {", ".join(deny)} }} drop')
    if len(script) == 1:
        return None
    return ["nft", " ; ".join(script)]


def _covered(address: str, routes: list[str]) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.IPv4Network(r) for r in routes)


def processStart(pid: int) -> int | None:
    """
    When process C{pid} started (clock ticks after boot, C{/proc/PID/stat}
    field 22), or L{None} if there is no such process: with the PID, it
    names a process even after the PID is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold anything.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def networkNamespace() -> str:
    """
    This process's network namespace, as the identity of its nsfs inode.
    """
    st = os.stat("/proc/self/ns/net")
    return f"{st.st_dev}-{st.st_ino}"


class ForwardingLedger:
    """
    C{net.ipv4.ip_forward} shared by every tether server of one network
    namespace (docs/tether.md, section 8): the first to start records the
    original value in a state file and turns forwarding on; the others add
    themselves; the last to stop restores the original and removes the
    file.  Users whose process is gone (a SIGKILL) no longer count, and a
    file they left keeps the true original, so a server restarted after a
    crash does not take forwarding that a crashed server turned on for the
    operator's choice.

    The read-modify-write is done under an exclusive C{flock} of one lock
    file in C{stateDir}; it takes microseconds, so the reactor waits at
    most that long.

    @param stateDir: where the state files live (created if missing).
    @param sysctl: the file that holds the setting.
    @param pid: this server's process.
    @param namespace: names the state file; the network namespace, since
        each has its own C{ip_forward}.
    """

    def __init__(self, stateDir: str = STATE_DIR, sysctl: str = IP_FORWARD, pid: int | None = None,
                 namespace: str | None = None) -> None:
        self.stateDir = stateDir
        self.sysctl = sysctl
        self.pid = os.getpid() if pid is None else pid
        self.path = os.path.join(stateDir, f"ip_forward.{namespace or networkNamespace()}.json")
        self._me: list[int] | None = None

    def acquire(self) -> str:
        """
        Count this server as a user and turn forwarding on.

        @return: the original value, as recorded.
        """
        with self._locked():
            state = self._read()
            if not state["users"] and "original" not in state:
                state["original"] = self._get()
            start = processStart(self.pid)
            self._me = [self.pid, -1 if start is None else start]
            if self._me not in state["users"]:
                state["users"].append(self._me)
            self._write(state)
            self._set("1")
            return state["original"]

    def release(self) -> str | None:
        """
        Stop counting this server; the last user restores the original.

        @return: the value restored, or L{None} while others still forward
            (or when there is no record of the original).
        """
        if self._me is None:
            return None
        with self._locked():
            state = self._read()
            users = [u for u in state["users"] if u != self._me]
            self._me = None
            if users:
                state["users"] = users
                self._write(state)
                return None
            original = state.get("original")
            if original is None:
                _log.warn("no record of ip_forward's original value in {path}: left as it is", path=self.path)
            else:
                self._set(original)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return original

    def _locked(self):
        os.makedirs(self.stateDir, mode=0o755, exist_ok=True)
        return _Flock(os.path.join(self.stateDir, "lock"))

    def _read(self) -> dict:
        """
        The state, its users still running; a missing or unreadable file
        is no state.
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
            users = [u for u in state["users"] if processStart(u[0]) == u[1]]
            state = {"original": str(state["original"]), "users": users}
        except FileNotFoundError:
            return {"users": []}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            _log.warn("ignoring unreadable forwarding state {path}: {error}", path=self.path, error=str(e))
            return {"users": []}
        return state

    def _write(self, state: dict) -> None:
        tmp = f"{self.path}.{self.pid}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, self.path)

    def _get(self) -> str:
        with open(self.sysctl, encoding="ascii") as f:
            return f.read().strip()

    def _set(self, value: str) -> None:
        with open(self.sysctl, "w", encoding="ascii") as f:
            f.write(value)


class _Flock:
    """
    An exclusive C{flock} on C{path} for the length of a C{with} block.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self._fd)


class ServerNetwork:
    """
    The server's side: the TUN address, the nftables table (L{tableRules})
    and, with NAT, forwarding, undone by L{stop}.

    @param allowServer: let clients reach the host's own services.
    """

    def __init__(self, runner: ICommandRunner, tun: str, gateway: str, pool: str,
                 mtu: int, nat: bool, deny: list[str], forwarding: ForwardingLedger | None = None,
                 allowServer: bool = False) -> None:
        self._runner = runner
        self._ledger = forwarding
        self._tun = tun
        self._gateway = gateway
        self._pool = ipaddress.IPv4Network(pool)
        self._mtu = mtu
        self._nat = nat
        self._deny = deny
        self._allowServer = allowServer
        self._forwarding = False
        self._tableUp = False

    async def start(self) -> None:
        for argv in linkUp(self._tun, self._gateway, self._pool.prefixlen, self._mtu):
            await self._runner.run(argv)
        # A crash may have left the table behind: replace it.
        await self._dropTable()
        rules = tableRules(self._tun, str(self._pool), self._deny, self._nat, self._allowServer)
        if rules is not None:
            await self._runner.run(rules)
            self._tableUp = True
            _log.info("nftables table ip {table}: {filter}", table=natTable(self._tun),
                      filter="clients may reach this host's services" if self._allowServer
                      else "clients reach no service of this host but ICMP")
        if not self._nat:
            return
        if self._ledger is None:
            self._ledger = ForwardingLedger()
        original = self._ledger.acquire()
        self._forwarding = True
        _log.info("ip_forward on (originally {original}, recorded in {path})",
                  original=original, path=self._ledger.path)
        _log.info("NAT on: {pool} masqueraded, nftables table ip {table}",
                  pool=str(self._pool), table=natTable(self._tun))

    async def stop(self) -> None:
        if self._forwarding and self._ledger is not None:
            self._forwarding = False
            restored = self._ledger.release()
            if restored is None:
                _log.info("ip_forward not restored: another tether server still forwards, or no record")
            else:
                _log.info("ip_forward restored to {value}", value=restored)
        if self._tableUp:
            await self._dropTable()
            self._tableUp = False
            _log.info("nftables table ip {table} removed", table=natTable(self._tun))

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
