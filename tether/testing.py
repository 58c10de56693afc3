"""
A four-namespace network for the tether's end-to-end tests and benchmark,
every address in 198.18.0.0/15 (RFC 2544's benchmarking range) and only
inside the namespaces it makes::

    laptop 198.18.0.1 -- 198.18.0.2 phone 198.18.1.2 -- 198.18.1.1 server 198.18.2.1 -- 198.18.2.2 internet

The phone forwards between its two links (a 3G data connection: the laptop
can reach the server's address through it, nothing else), the server has
no route from the laptop's side to the internet namespace but through the
tunnel's NAT, and the internet namespace knows only its own link.  Needs
root and C{ip netns}.
"""

from __future__ import annotations

import os
import subprocess

LAPTOP, PHONE, SERVER, INTERNET = "laptop", "phone", "server", "internet"
ADDRESSES = {
    LAPTOP: "198.18.0.1", PHONE: "198.18.1.2", SERVER: "198.18.1.1", INTERNET: "198.18.2.2",
}
PHONE_LAN = "198.18.0.2"
SERVER_OUT = "198.18.2.1"
POOL = "198.18.100.0/24"


class Topology:
    """
    The namespaces, made by L{up} and always removed by L{down}, which may
    be called any number of times.
    """

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or f"tl{os.getpid()}"
        self.names = {role: f"{tag}-{role}" for role in (LAPTOP, PHONE, SERVER, INTERNET)}

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)

    def exec(self, role: str, argv: list[str]) -> list[str]:
        """
        C{argv} prefixed to run in C{role}'s namespace.
        """
        return ["ip", "netns", "exec", self.names[role], *argv]

    def run(self, role: str, argv: list[str], timeout: float = 30, check: bool = False,
            **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.exec(role, argv), capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)

    def _link(self, a: str, aAddress: str, b: str, bAddress: str, aDev: str, bDev: str) -> None:
        na, nb = self.names[a], self.names[b]
        self.ip("-n", na, "link", "add", aDev, "type", "veth", "peer", "name", bDev, "netns", nb)
        self.ip("-n", na, "addr", "add", f"{aAddress}/24", "dev", aDev)
        self.ip("-n", nb, "addr", "add", f"{bAddress}/24", "dev", bDev)
        self.ip("-n", na, "link", "set", aDev, "up")
        self.ip("-n", nb, "link", "set", bDev, "up")

    def up(self) -> None:
        self.down()
        try:
            for name in self.names.values():
                self.ip("netns", "add", name)
                self.ip("-n", name, "link", "set", "lo", "up")
            self._link(LAPTOP, ADDRESSES[LAPTOP], PHONE, PHONE_LAN, "wlan0", "usb0")
            self._link(PHONE, ADDRESSES[PHONE], SERVER, ADDRESSES[SERVER], "rmnet0", "eth0")
            self._link(SERVER, SERVER_OUT, INTERNET, ADDRESSES[INTERNET], "eth1", "eth0")
            self.ip("-n", self.names[LAPTOP], "route", "add", f"{ADDRESSES[SERVER]}/32", "via", PHONE_LAN)
            self.ip("-n", self.names[SERVER], "route", "add", "198.18.0.0/24", "via", ADDRESSES[PHONE])
            self.run(PHONE, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], check=True)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        for name in self.names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)

    def exists(self) -> list[str]:
        """
        The names of this topology's namespaces that exist now.
        """
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        present = {line.split()[0] for line in out.splitlines() if line.strip()}
        return [n for n in self.names.values() if n in present]
