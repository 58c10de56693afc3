"""
C{twistd tether server} and C{twistd tether client}: IP over WebSocket as
a twistd plugin.  Both need root (or CAP_NET_ADMIN) and /dev/net/tun.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import sys

from hyperlink import URL
from twisted.application import service, strports
from twisted.python import usage

from coursenet.accounts import PasswordChecker, readTokenFile
from coursenet.admission import Admission
from coursenet.options import (
    AccountOptionsMixin,
    AdmissionOptionsMixin,
    atLeast,
    parseableEndpoint,
    passwordFile,
    readableFile,
)
from coursenet.throttle import GuessOptionsMixin
from coursenet.tls import tlsListenString
from tether.client import Backoff, ClientService, DirectConnector, TetherClient, relayResource
from tether.netconf import STATE_DIR, ClientNetwork, ForwardingLedger, ProcessRunner, ServerNetwork
from tether.protocol import TetherSite
from tether.server import ServerService, TetherServer
from tether.wire import PATH

DEFAULT_LISTEN = "tcp:8780:interface=127.0.0.1"


def _tls(description: str, cert: str, key: str) -> str:
    """
    The TLS listener for a C{tcp:PORT[:interface=ADDR]} description.
    """
    kind, _, rest = description.partition(":")
    args = rest.split(":")
    if kind != "tcp" or not args[0].isdigit() or any(
        not a.startswith("interface=") for a in args[1:]
    ):
        raise usage.UsageError(f"with --tls-cert, --listen takes tcp:PORT[:interface=ADDR], not {description!r}")
    interface = args[1].partition("=")[2] if len(args) > 1 else None
    return tlsListenString(int(args[0]), cert, key, interface)


class ServerOptions(AccountOptionsMixin, AdmissionOptionsMixin, GuessOptionsMixin, usage.Options):
    synopsis = "--pool CIDR --token-file FILE [--listen ENDPOINT] [options]"
    longdesc = (
        "Serve the tether WebSocket (docs/tether.md) at " + PATH + ": clients get an"
        " address from --pool; their packets leave through a TUN device, NATed to"
        " the server's own addresses unless --no-nat. With no --listen, listens on "
        + DEFAULT_LISTEN + "."
    )
    optFlags = [
        ["nat", None, "forward and masquerade the pool with nftables (the default)"],
        ["no-nat", None, "no forwarding or NAT: the operator routes the pool"],
        ["allow-client-to-client", None, "let clients reach each other (isolated by default)"],
        ["allow-client-to-server", None,
         "let clients reach this host's own services (the gateway's and every other address of the"
         " host; only ICMP by default, with or without NAT)"],
        ["allow-plain", None, "accept tokens over plain ws:// (tests, trusted links only)"],
        ["no-offload", None, "no TUN offloads: refuse the gso extension, one packet per message"],
    ]
    optParameters = [
        ["pool", None, None, "client addresses, e.g. 198.18.100.0/24; the first is the server's"],
        ["token-file", None, None, "tokens: a password file of scrypt hashes (coursenet-passwd FILE NAME)"],
        ["tls-cert", None, None, "PEM certificate: the --listen tcp: endpoints use TLS (wss://)"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
        ["tun", None, "tether0", "name of the TUN device"],
        ["mtu", None, 1400, "MTU of the tunnel", int],
        ["keepalive", None, 15.0, "seconds between pings", float],
        ["timeout", None, 45.0, "seconds of silence before a link is closed", float],
        ["grace", None, 60.0, "seconds a lost client keeps its address", float],
        ["max-leases-per-token", None, 1,
         "addresses one token name may hold at once, sessions in their grace period included"
         " (raise it for a token shared by several clients)", int],
        ["state-dir", None, STATE_DIR,
         "where the servers of a host record the original ip_forward and who uses it"],
        ["stats-interval", None, 60.0, "seconds between per-client counter logs (0: never)", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["routes"] = []
        self["deny"] = []
        self["users"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this endpoint (repeatable), e.g. tcp:8780:interface=198.18.2.1
        """
        self["listen"].append(description)

    def opt_route(self, cidr: str) -> None:
        """
        A route clients send through the tunnel (repeatable; default 0.0.0.0/0)
        """
        self["routes"].append(str(ipaddress.IPv4Network(cidr)))

    def opt_deny(self, cidr: str) -> None:
        """
        A network clients may not reach (repeatable), besides loopback,
        link-local and multicast
        """
        self["deny"].append(str(ipaddress.IPv4Network(cidr)))

    def postOptions(self) -> None:
        self.checkStartOptions(self.listenEndpoints())
        if self["token-file"]:
            passwordFile("token-file", self["token-file"])
        self.checkAdmission()
        atLeast("mtu", self["mtu"], 576)
        if self["mtu"] > 65535:
            raise usage.UsageError(f"--mtu {self['mtu']}: must be at most 65535")
        atLeast("grace", self["grace"], 0)
        atLeast("stats-interval", self["stats-interval"], 0)
        checkTunName(self["tun"])
        if not self["pool"]:
            raise usage.UsageError("--pool CIDR is required")
        try:
            ipaddress.IPv4Network(self["pool"])
        except ValueError as e:
            raise usage.UsageError(f"--pool: {e}")
        if not self["token-file"] and not self["users"]:
            raise usage.UsageError("no tokens: give --token-file (or --user NAME:TOKEN)")
        if self["nat"] and self["no-nat"]:
            raise usage.UsageError("--nat and --no-nat exclude each other")
        if not self["keepalive"] > 0:
            raise usage.UsageError(f"--keepalive must be more than 0 seconds, not {self['keepalive']:g}")
        if not self["timeout"] > self["keepalive"]:
            raise usage.UsageError(f"--timeout ({self['timeout']:g} s) must be longer than --keepalive"
                                   f" ({self['keepalive']:g} s)")
        if self["max-leases-per-token"] < 1:
            raise usage.UsageError(f"--max-leases-per-token must be at least 1, not {self['max-leases-per-token']}")
        self["listen"] = self["listen"] or [DEFAULT_LISTEN]
        if self["tls-cert"]:
            self["listen"] = [_tls(d, self["tls-cert"], self["tls-key"]) for d in self["listen"]]
        self["routes"] = self["routes"] or ["0.0.0.0/0"]


class ClientOptions(usage.Options):
    synopsis = "--server URL --token-file FILE [--relay ENDPOINT] [options]"
    longdesc = (
        "Carry this machine's IP through a TUN device to a tether server: directly,"
        " or, with --relay, through the relay page a phone's browser opens here."
    )
    optFlags = [
        ["allow-plain", None, "send the token over plain ws:// (tests, trusted links only)"],
        ["text-frames", None, "ask for base64 text messages instead of binary"],
        ["no-offload", None, "no TUN offloads: do not offer the gso extension"],
    ]
    optParameters = [
        ["server", None, None, "the server's URL, ws://HOST:PORT/tether/v1 or wss://..."],
        ["token-file", None, None, "a file with one line NAME:TOKEN"],
        ["relay", None, None, "serve the relay page on this endpoint instead of connecting"],
        ["relay-key", None, None, "the key the relay page must present (default: random, logged)"],
        ["cafile", None, None, "PEM certificates to trust for wss:// instead of the system's"],
        ["tun", None, "tether0", "name of the TUN device"],
    ]

    def postOptions(self) -> None:
        if not self["server"] or not self["token-file"]:
            raise usage.UsageError("--server and --token-file are required")
        try:
            url = URL.fromText(self["server"])
        except ValueError:
            url = None
        if url is None or url.scheme not in ("ws", "wss") or not url.host:
            raise usage.UsageError(f"--server {self['server']}: not a ws:// or wss:// URL,"
                                   " e.g. wss://vpn.example:8780/tether/v1")
        if url.scheme == "ws" and not self["allow-plain"]:
            raise usage.UsageError("ws:// would send the token in clear: use wss:// or --allow-plain")
        readableFile("token-file", self["token-file"], hint="; write one line NAME:TOKEN into it")
        if self["cafile"]:
            readableFile("cafile", self["cafile"])
        if self["relay"]:
            parseableEndpoint("relay", self["relay"])
        checkTunName(self["tun"])
        try:
            self["name"], self["token"] = readTokenFile(self["token-file"])
        except OSError as e:
            raise usage.UsageError(f"--token-file {self['token-file']}: cannot read it ({e})")
        except ValueError as e:
            raise usage.UsageError(f"--token-file {self['token-file']}: {e}")
        self["relay-key"] = self["relay-key"] or secrets.token_urlsafe(12)


def checkTunName(name: str) -> None:
    """
    @raise usage.UsageError: unless C{name} can name a network device
        (at most 15 characters, no slash, space or colon).
    """
    if not 0 < len(name) <= 15 or any(c in name for c in "/: \t") or name in (".", ".."):
        raise usage.UsageError(f"--tun {name!r}: not a device name (1 to 15 characters, no '/', ':' or space)")


def exitWhenStopped(reactor, status: int, line: str) -> None:
    """
    Stop the reactor and make the process exit with C{status}, C{line} the
    last thing it prints.  twistd exits 0 whenever its reactor stops, so
    the status is set at interpreter exit, after twistd's own shutdown.
    """

    def exit() -> None:
        # twistd has sys.stdout and sys.stderr write to its log: the line
        # goes to the real standard error, after what the log printed.
        for stream in (sys.stdout, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        os.write(2, line.encode("utf-8", "replace") + b"\n")
        os._exit(status)

    atexit.register(exit)
    if reactor.running:
        reactor.stop()


class Options(usage.Options):
    synopsis = "server|client [options]"
    longdesc = "IP over WebSocket: a TUN device, an optional browser relay, a NAT server (docs/tether.md)."
    subCommands = [
        ["server", None, ServerOptions, "run the server: WebSocket endpoint, address pool, TUN, NAT"],
        ["client", None, ClientOptions, "run the client: TUN, routes, direct or relay link"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say server or client")


def makeServerService(options: ServerOptions, reactor=None, runner=None, system=None) -> service.IService:
    server = TetherServer(
        PasswordChecker(options["token-file"], options["users"], reactor=reactor, rule=options.guessRule()),
        options["pool"],
        mtu=options["mtu"], routes=options["routes"], deny=options["deny"],
        isolate=not options["allow-client-to-client"], keepalive=options["keepalive"],
        timeout=options["timeout"], grace=options["grace"], allowPlain=options["allow-plain"],
        offload=not options["no-offload"], maxLeasesPerName=options["max-leases-per-token"],
        # Counted per HTTP or WebSocket connection, every listener together.
        admission=Admission(options["max-connections"], options["max-per-address"], fdsPerConnection=1),
        reactor=reactor,
    )
    runner = runner or ProcessRunner(reactor)
    network = lambda tun: ServerNetwork(  # noqa: E731
        runner, tun, str(server.pool.gateway), options["pool"], options["mtu"],
        nat=not options["no-nat"], deny=options["deny"], forwarding=ForwardingLedger(options["state-dir"]),
        allowServer=options["allow-client-to-server"],
    )
    top = ServerService(server, options["tun"], network, system=system,
                        statsInterval=options["stats-interval"])
    site = server.site()
    for description in options["listen"]:
        strports.service(description, site).setServiceParent(top)
    return top


def makeClientService(options: ClientOptions, reactor=None, runner=None, system=None) -> service.IService:
    client = TetherClient(options["name"], options["token"],
                          ClientNetwork(runner or ProcessRunner(reactor), options["tun"]),
                          binary=not options["text-frames"], offload=not options["no-offload"],
                          reactor=reactor)
    client.onFatal = lambda error: exitWhenStopped(client.reactor, 1, f"tether client: {error.reason}")
    if options["relay"]:
        top = ClientService(client, options["tun"], system=system)
        site = TetherSite(relayResource(client, options["server"], options["relay-key"]), reactor=client.reactor)
        strports.service(options["relay"], site).setServiceParent(top)
        client._log.info("relay page: open http://ADDRESS:PORT/?key={key} on the phone ({endpoint})",
                         key=options["relay-key"], endpoint=options["relay"])
        return top
    connector = DirectConnector(client, options["server"], cafile=options["cafile"], backoff=Backoff())
    return ClientService(client, options["tun"], connector=connector, system=system)


def makeService(options: Options) -> service.IService:
    if options.subCommand == "server":
        return makeServerService(options.subOptions)
    return makeClientService(options.subOptions)
