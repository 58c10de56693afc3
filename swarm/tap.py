"""
C{twistd swarm}: an HTTP tracker, a seeding peer, or both in one process.

    twistd -n swarm --tracker tcp:6969:interface=127.0.0.1
    twistd -n swarm --tracker tcp:6969:interface=127.0.0.1 --peer tcp:6881:interface=127.0.0.1 --seed demo.bin

Each C{--seed PATH} gets a C{PATH.torrent} written beside it if none is
there (announcing to C{--announce}, or to this process's own tracker), and
is seeded once every piece has been verified.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from coursenet.options import AdmissionOptionsMixin, atLeast, parseableEndpoint
from swarm.metainfo import makeMetainfo, readMetainfo
from swarm.ratelimit import parseRate
from swarm.tracker import DEFAULT_INTERVAL, Swarms, TrackerRoot


class Options(AdmissionOptionsMixin, usage.Options):
    synopsis = "[--tracker ENDPOINT] [--peer ENDPOINT --seed PATH ...]"
    longdesc = "A BitTorrent HTTP tracker and/or a seeding peer (docs/swarm.md)."
    optParameters = [
        ["tracker", None, None, "serve the HTTP tracker (/announce, /scrape) on this endpoint, e.g. tcp:6969"],
        ["peer", None, "tcp:0:interface=127.0.0.1", "listen for peers on this endpoint (with --seed)"],
        ["announce", None, None, "announce URL written into new .torrent files (default: this tracker's)"],
        ["interval", None, DEFAULT_INTERVAL, "seconds between a peer's announces, told to peers", int],
        ["max-torrents", None, 1000, "torrents the tracker keeps", int],
        ["max-peers", None, 1000, "peers the tracker keeps a torrent", int],
        ["numwant", None, 50, "peers in one announce reply, at most", int],
        ["rate", None, 1.0, "announces and scrapes a second from one address (0: no limit)", float],
        ["burst", None, 10, "announces and scrapes one address may make at once", int],
        ["max-upload-rate", None, 0, "seed at most this many bytes a second, e.g. 500K, 4M (K = 1024; 0: no limit)",
         parseRate],
        ["max-download-rate", None, 0, "bytes a second received, at most (0: no limit)", parseRate],
        ["demo-bytes", None, 0, "write this many random bytes to a --seed path that does not exist", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["seed"] = []

    def opt_seed(self, path: str) -> None:
        """
        Seed this file or directory (repeatable)
        """
        self["seed"].append(path)

    def postOptions(self) -> None:
        if not self["tracker"] and not self["seed"]:
            raise usage.UsageError("give --tracker ENDPOINT, --seed PATH, or both")
        if self["tracker"]:
            parseableEndpoint("tracker", self["tracker"])
        parseableEndpoint("peer", self["peer"])
        for option, low in (("interval", 10), ("max-torrents", 1), ("max-peers", 1), ("numwant", 0), ("burst", 1)):
            atLeast(option, self[option], low)
        if self["seed"] and not self["tracker"] and not self["announce"]:
            raise usage.UsageError("--seed needs a tracker: give --tracker ENDPOINT or --announce URL")
        for path in self["seed"]:
            if not os.path.exists(path) and not self["demo-bytes"]:
                raise usage.UsageError(f"--seed {path}: no such file or directory")
        self.checkAdmission()


class SeederService(service.Service):
    """
    A peer seeding C{paths}, started once the tracker listens.
    """

    _log = Logger()

    def __init__(self, options: Options, tracker: Any = None) -> None:
        self.options = options
        self.tracker = tracker
        self.peer: Any = None
        self.ready: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._start()).addCallbacks(self.ready.callback, self._failed)

    def _failed(self, f: Any) -> None:
        self._log.failure("seeding failed to start", f)
        self.ready.errback(f)

    async def _start(self) -> None:
        from twisted.internet import reactor

        from swarm.client import Peer

        o = self.options
        announce = o["announce"]
        if not announce and self.tracker is not None:
            port = await self.tracker.listening
            announce = f"http://127.0.0.1:{port.getHost().port}/announce"
        self.peer = Peer(reactor, o["max-connections"], maxUploadRate=o["max-upload-rate"],
                         maxDownloadRate=o["max-download-rate"])
        port = await self.peer.listen(o["peer"])
        for path in o["seed"]:
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(os.urandom(o["demo-bytes"]))
            torrentPath = re.sub(r"/+$", "", path) + ".torrent"
            if not os.path.exists(torrentPath):
                with open(torrentPath, "wb") as f:
                    f.write(makeMetainfo(path, announce))
            meta = readMetainfo(torrentPath)
            await self.peer.add(meta, path, download=False, tracker=announce)
            self._log.info("seeding {path} ({torrent}, info hash {h}) on port {port}",
                           path=path, torrent=torrentPath, h=meta.infoHash.hex(), port=port)

    def stopService(self) -> Any:
        super().stopService()
        if self.peer is not None:
            return Deferred.fromCoroutine(self.peer.stop())
        return None


class TrackerService(service.Service):
    """
    The tracker's listener; C{listening} fires with the port once it
    listens (the seeder needs its number for the announce URL).
    """

    def __init__(self, description: str, swarms: Swarms) -> None:
        self.description = description
        self.swarms = swarms
        self.listening: Deferred[Any] = Deferred()
        self.port: Any = None

    def startService(self) -> None:
        from twisted.internet import endpoints, reactor

        super().startService()
        site = Site(TrackerRoot(self.swarms))
        d = endpoints.serverFromString(reactor, self.description).listen(site)
        d.addCallback(self._listening).chainDeferred(self.listening)

    def _listening(self, port: Any) -> Any:
        self.port = port
        return port

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    top = service.MultiService()
    tracker = None
    if options["tracker"]:
        swarms = Swarms(
            reactor, interval=options["interval"], maxTorrents=options["max-torrents"],
            maxPeers=options["max-peers"], maxNumwant=options["numwant"], rate=options["rate"],
            burst=options["burst"],
        )
        tracker = TrackerService(options["tracker"], swarms)
        tracker.setServiceParent(top)
    if options["seed"]:
        SeederService(options, tracker).setServiceParent(top)
    return top
