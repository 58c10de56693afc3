"""Tether: IP over WebSocket, from a TUN device through an optional browser relay to a NAT server."""
