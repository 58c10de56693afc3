"""
A star of network namespaces for the swarm's interop tests and benchmark:
a hub namespace holding a bridge (and the tracker's address) and one
namespace per peer, each with one veth link onto the bridge::

    peer p0 198.19.0.10 --+
    peer p1 198.19.0.11 --+-- br0 198.19.0.1 (hub: the tracker)
    ...                 --+

Every address is in 198.18.0.0/15 (RFC 2544's benchmarking range) and
exists only inside the namespaces this makes; no namespace has a route
anywhere else, so a client that tries the public DHT or a UPnP router
reaches nothing.  C{shape} limits a peer's upload with C{tc}.  Built on
the tether's L{tether.testing.Topology} (its C{ip}, C{exec}, C{run},
C{down} and C{exists}); needs root and C{ip netns}.
"""

from __future__ import annotations

import os

from tether.testing import Topology

HUB = "hub"
SUBNET = "198.19.0"
#: The longest a packet waits in a shaped link's queue (tbf drops past
#: it).  Short, as a router with queue management keeps it: with 200 ms a
#: peer's full upload queue delays the ACKs and requests of its downloads
#: (bufferbloat) and every swarm, aria2c's too, ran 20-40% slower.
LATENCY = "50ms"


class Star(Topology):
    """
    C{peers} namespaces C{p0}, C{p1}, ... on one bridge in the hub
    namespace; made by L{up}, always removed by L{down}.
    """

    def __init__(self, peers: int, tag: str | None = None) -> None:
        tag = tag or f"sw{os.getpid()}"
        if not 0 < peers <= 200:
            raise ValueError("a star holds 1 to 200 peers")
        self.peers = [f"p{i}" for i in range(peers)]
        self.names = {HUB: f"{tag}-{HUB}", **{p: f"{tag}-{p}" for p in self.peers}}
        self.addresses = {HUB: f"{SUBNET}.1", **{p: f"{SUBNET}.{10 + i}" for i, p in enumerate(self.peers)}}

    def up(self) -> None:
        self.down()
        try:
            for name in self.names.values():
                self.ip("netns", "add", name)
                self.ip("-n", name, "link", "set", "lo", "up")
            hub = self.names[HUB]
            self.ip("-n", hub, "link", "add", "br0", "type", "bridge")
            self.ip("-n", hub, "addr", "add", f"{self.addresses[HUB]}/24", "dev", "br0")
            self.ip("-n", hub, "link", "set", "br0", "up")
            for i, p in enumerate(self.peers):
                self.ip("-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                        "netns", self.names[p])
                self.ip("-n", hub, "link", "set", f"v{i}", "master", "br0", "up")
                self.ip("-n", self.names[p], "addr", "add", f"{self.addresses[p]}/24", "dev", "eth0")
                self.ip("-n", self.names[p], "link", "set", "eth0", "up")
        except BaseException:
            self.down()
            raise

    def shape(self, role: str, bitsPerSecond: int) -> None:
        """
        Limit what C{role} sends (its upload) to C{bitsPerSecond} with a
        token bucket on its link; a burst of 64 KiB (one TSO segment).
        """
        self.run(role, ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", f"{bitsPerSecond}bit",
                        "burst", "65536", "latency", LATENCY], check=True)
