"""BitTorrent on Twisted: metainfo, an HTTP tracker and peers (docs/swarm.md)."""
