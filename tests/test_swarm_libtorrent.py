"""
DHT interoperability with libtorrent (Debian's python3-libtorrent, run by
/usr/bin/python3 in a child process), in network namespaces this module
makes and always deletes (L{swarm.testing.Star}), with no tracker at all:

  - libtorrent, bootstrapped from our DHT node only, finds `swarm seed`
    through our DHT and downloads from it;
  - libtorrent seeds and announces itself in the DHT, and `swarm get`,
    bootstrapped from the same node of ours, finds it there and downloads.

Files are compared by SHA-256.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytest_twisted

from tests.swarm_support import end, runningStar, sha256, swarmGet, spawn, torrentFor, waitOutput, writeData

BIN = os.path.dirname(sys.executable)
OURS, THEIRS, GETTER = "p0", "p1", "p2"
SYSTEM_PYTHON = "/usr/bin/python3"

#: A libtorrent peer: DHT on, bootstrapped from one node; no local peer
#: discovery, UPnP, NAT-PMP, uTP or encryption (our peer speaks plain TCP);
#: the DHT's checks meant for the public internet (verified node ids, one
#: node an IP range, "dark" address ranges) off, as every node here is in
#: 198.19.0.0/24.  Prints "complete NAME" when a download is whole.
LIBTORRENT_PEER = r'''
import json, sys, time
import libtorrent as lt

spec = json.loads(sys.argv[1])
s = lt.session({
    "listen_interfaces": "%s:%d" % (spec["host"], spec["port"]),
    "enable_dht": True, "dht_bootstrap_nodes": spec["bootstrap"],
    "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False, "enable_ip_notifier": False,
    "enable_outgoing_utp": False, "enable_incoming_utp": False,
    "out_enc_policy": 2, "in_enc_policy": 2,
    "dht_ignore_dark_internet": False, "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False, "dht_prefer_verified_node_ids": False,
    "dht_announce_interval": 5, "allow_multiple_connections_per_ip": True,
    "alert_mask": lt.alert.category_t.error_notification,
})
handles = []
for role, torrent, save in spec["torrents"]:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save
    handles.append((role, s.add_torrent(atp)))
print("started", flush=True)
done = set()
deadline = time.time() + spec["timeout"]
while time.time() < deadline:
    for role, h in handles:
        st = h.status()
        if role == "get" and st.is_seeding and st.name not in done:
            done.add(st.name)
            print("complete " + st.name, flush=True)
    for a in s.pop_alerts():
        print("alert " + a.message(), flush=True)
    time.sleep(0.2)
print("dht nodes %d" % s.status().dht_nodes, flush=True)
'''


def _libtorrentMissing() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return "needs /usr/bin/python3 with python3-libtorrent"
    if subprocess.run([SYSTEM_PYTHON, "-c", "import libtorrent"], capture_output=True).returncode != 0:
        return "needs python3-libtorrent (Debian package, in the Makefile's APT_PACKAGES)"
    return None


@pytest.fixture(scope="module")
def star():
    with runningStar(3, "swlt", _libtorrentMissing()) as net:
        yield net


@pytest.mark.privileged
@pytest_twisted.ensureDeferred
async def test_libtorrentDHTAndOursFindEachOther(reactor, star, tmp_path):
    """libtorrent finds `swarm seed` through our DHT node and downloads; `swarm get` finds libtorrent's seed in the DHT; SHA-256 match."""
    ours, theirs = str(tmp_path / "ours" / "notes.bin"), str(tmp_path / "theirs" / "slides.bin")
    writeData(ours, 1_500_000, 1)
    writeData(theirs, 1_200_000, 2)
    oursTorrent, _ = torrentFor(ours, None)
    theirsTorrent, _ = torrentFor(theirs, None)
    host = star.addresses[OURS]
    seed = lt = None
    try:
        # Our seeder and its DHT node: the only node the others know.
        seed = spawn(reactor, star.exec(OURS, [
            os.path.join(BIN, "swarm"), "seed", oursTorrent, "--data", ours, "--host", host, "--port", "6881",
            "--dht-port", "6881",
        ]))
        await waitOutput(reactor, seed, b"seeding notes.bin", 30)
        script = tmp_path / "ltpeer.py"
        script.write_text(LIBTORRENT_PEER)
        spec = {
            "host": star.addresses[THEIRS], "port": 6881, "bootstrap": f"{host}:6881", "timeout": 90,
            "torrents": [["get", oursTorrent, str(tmp_path / "lt")], ["seed", theirsTorrent, str(tmp_path / "theirs")]],
        }
        lt = spawn(reactor, star.exec(THEIRS, [SYSTEM_PYTHON, str(script), json.dumps(spec)]))
        await waitOutput(reactor, lt, b"complete notes.bin", 90)
        assert sha256(str(tmp_path / "lt" / "notes.bin")) == sha256(ours)
        # The reverse: libtorrent's seed, found by our getter in the DHT.
        await swarmGet(reactor, star, GETTER, theirsTorrent, str(tmp_path / "got"), theirs,
                       "--dht-port", "6881", "--dht-bootstrap", f"{host}:6881", timeout=90, others=(lt,))
    finally:
        await end(reactor, lt, seed)
