"""
C{swarm}: make a C{.torrent}, show one, seed, or download.

    swarm create FILE --tracker http://127.0.0.1:6969/announce -o FILE.torrent
    swarm show FILE.torrent
    swarm seed FILE.torrent --data FILE [--port N] [--max-upload-rate 500K]
    swarm get FILE.torrent -o DIR [--port N] [--seed] [--max-download-rate 4M]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

from swarm.metainfo import DEFAULT_PIECE_LENGTH, MetainfoError, makeMetainfo, readMetainfo
from swarm.ratelimit import parseRate


def sha256(path: str) -> str:
    """
    The SHA-256 of a file, or of a directory's files in the torrent's order.
    """
    h = hashlib.sha256()
    paths = [path]
    if os.path.isdir(path):
        paths = sorted(os.path.join(d, n) for d, _, ns in os.walk(path) for n in ns)
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarm", description="BitTorrent peer (docs/swarm.md)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="make a .torrent for a file or a directory")
    c.add_argument("path", type=_existing)
    c.add_argument("--tracker", help="announce URL, e.g. http://127.0.0.1:6969/announce")
    c.add_argument("-o", "--output", help="the .torrent to write (default: PATH.torrent)")
    c.add_argument("--piece-length", type=int, default=DEFAULT_PIECE_LENGTH, help="bytes a piece (a power of two)")
    s = sub.add_parser("show", help="print what a .torrent holds")
    s.add_argument("torrent", type=_file)
    for name, what in (("seed", "seed the data of a .torrent"), ("get", "download a .torrent")):
        q = sub.add_parser(name, help=what)
        q.add_argument("torrent", type=_file)
        if name == "seed":
            q.add_argument("--data", required=True, type=_existing, help="the file or directory the .torrent describes")
        else:
            q.add_argument("-o", "--output", default=".", help="directory to download into")
            q.add_argument("--seed", action="store_true", help="keep seeding once complete, until Ctrl-C")
        q.add_argument("--port", type=_port, default=0, help="TCP port for other peers (default: any)")
        q.add_argument("--host", default="127.0.0.1", help="address to listen on")
        q.add_argument("--tracker", help="announce URL instead of the .torrent's own")
        for direction in ("upload", "download"):
            q.add_argument(f"--max-{direction}-rate", type=_rate, default=0, metavar="RATE",
                           help=f"{direction} at most RATE bytes a second, all connections together"
                                " (e.g. 500K, 4M; K = 1024; default 0: no limit)")
        q.add_argument("--dht-port", type=_port, default=None,
                       help="also run a DHT node (BEP 5) on this UDP port of --host (0: any)")
        q.add_argument("--dht-bootstrap", action="append", default=[], metavar="HOST:PORT", type=_hostPort,
                       help="a DHT node to bootstrap from (repeatable; there is no public default)")
    return p


# Argument types: a mistake is argparse's usage and one line naming the
# argument, exit status 2, before anything starts.
def _existing(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return text


def _file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: {'is a directory' if os.path.isdir(text) else 'no such file'}")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535; 0: any free port)")
    return int(text)


def _hostPort(text: str) -> tuple[str, int]:
    try:
        return parseHostPort(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rate(text: str) -> int:
    try:
        return parseRate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parseHostPort(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


async def _run(reactor, args) -> int:
    from twisted.internet.defer import Deferred

    from swarm.client import Peer

    meta = readMetainfo(args.torrent)
    dht = None
    if args.dht_port is not None or args.dht_bootstrap:
        from swarm.dht import DHTNode

        bootstrap = args.dht_bootstrap
        dht = DHTNode(reactor)
        udp = reactor.listenUDP(args.dht_port or 0, dht, interface=args.host)
        print(f"DHT node on {args.host}:{udp.getHost().port}", flush=True)
        if bootstrap:
            known = await dht.bootstrap(bootstrap)
            print(f"DHT: {known} nodes known after bootstrap", flush=True)
    peer = Peer(reactor, dht=dht, maxUploadRate=args.max_upload_rate, maxDownloadRate=args.max_download_rate)
    # Ctrl-C or SIGTERM: tell the tracker "stopped" before exiting.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(peer.stop()))
    port = await peer.listen(f"tcp:{args.port}:interface={args.host}")
    print(f"listening for peers on {args.host}:{port}", flush=True)
    if args.command == "seed":
        torrent = await peer.add(meta, args.data, download=False, tracker=args.tracker)
        missing = torrent.have.count(False)
        print(f"seeding {meta.name} ({meta.length} bytes, {meta.numPieces} pieces"
              f"{f', {missing} missing or bad' if missing else ''}); Ctrl-C stops", flush=True)
        await Deferred()  # until the reactor stops
        return 0
    os.makedirs(args.output, exist_ok=True)
    torrent = await peer.add(meta, os.path.join(args.output, meta.name), download=True, tracker=args.tracker)
    path = await torrent.done
    sources = len(torrent.sources)
    print(f"{path} complete: {meta.length} bytes from {sources} peer{'s' if sources != 1 else ''},"
          f" sha256 {sha256(path)}", flush=True)
    if args.seed:
        print("seeding; Ctrl-C stops", flush=True)
        await Deferred()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "create":
            out = args.output or args.path.rstrip("/") + ".torrent"
            data = makeMetainfo(args.path, args.tracker, args.piece_length)
            with open(out, "wb") as f:
                f.write(data)
            meta = readMetainfo(out)
            print(f"{out}: {meta.name}, {meta.length} bytes, {meta.numPieces} pieces, info hash {meta.infoHash.hex()}")
            return 0
        if args.command == "show":
            meta = readMetainfo(args.torrent)
            print(f"name: {meta.name}\ninfo hash: {meta.infoHash.hex()}\nannounce: {meta.announce}")
            print(f"length: {meta.length}\npieces: {meta.numPieces} of {meta.pieceLength} bytes")
            for entry in meta.files:
                print(f"  {'/'.join((meta.name,) + entry.path)}  {entry.length}")
            return 0
    except (MetainfoError, OSError) as e:
        print(f"swarm: {e}", file=sys.stderr)
        return 1
    from twisted.internet import task
    from twisted.internet.defer import Deferred
    from twisted.internet.error import CannotListenError

    result: list[int] = []

    async def run(reactor):
        try:
            result.append(await _run(reactor, args))
        except (MetainfoError, OSError, ValueError, CannotListenError) as e:
            print(f"swarm: {e}", file=sys.stderr)
            result.append(1)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit:
        pass
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
