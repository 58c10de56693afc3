"""
Socket options every service wants on its connections.
"""

from __future__ import annotations


def noDelay(transport) -> None:
    """
    Turn Nagle's algorithm off on the TCP connection under C{transport}
    (through TLS or WebSocket layers, or a L{coursenet.receiver.Outbox},
    if any).

    These protocols send a reply, then wait for the next command; Nagle
    holding a small reply back until the previous segment is acknowledged,
    against the peer's delayed ACK, would add 40 ms to every exchange.
    """
    for _ in range(4):
        if transport is None:
            return
        setNoDelay = getattr(type(transport), "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(transport, True)
            except OSError:
                pass
            return
        # An Outbox keeps the real transport as wrappedTransport; TLS and
        # WebSocket layers keep theirs as transport.
        transport = getattr(transport, "__dict__", {}).get("wrappedTransport") or getattr(
            transport, "transport", None
        )
