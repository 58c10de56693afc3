"""
The digest algorithms BFTP/1 can check transfers with, and how two ends
agree on one (docs/bftp.md section 8.4).

SHA-256 is always there and is what a peer that negotiates nothing uses.
BLAKE3 (the C{blake3} package: Rust, the GIL released while it hashes) is
about three times as fast on one core and is preferred when both ends have
it.  Both give 32 bytes, written as 64 lowercase hex digits, so the wire
format of a digest is the same whichever is in use.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

SHA256 = "sha256"
BLAKE3 = "blake3"

_MAKERS: dict[str, Callable[[], Any]] = {SHA256: hashlib.sha256}
try:
    import blake3 as _blake3
except ImportError:  # pragma: no cover - the package is a dependency
    pass
else:
    _MAKERS[BLAKE3] = _blake3.blake3

#: What this installation can compute, most preferred first.
AVAILABLE: tuple[str, ...] = tuple(name for name in (BLAKE3, SHA256) if name in _MAKERS)

#: Names as they are written in the spec's prose.
TITLES = {SHA256: "SHA-256", BLAKE3: "BLAKE3"}


def new(name: str):
    """
    A fresh hasher (C{update}, C{hexdigest}, C{copy}) for C{name}.

    @raise KeyError: for an algorithm this installation cannot compute.
    """
    return _MAKERS[name]()


def choose(offered: list[str], available: tuple[str, ...] = AVAILABLE) -> str:
    """
    The algorithm for a session: the first one the peer offered that this
    end has, in this end's order of preference; SHA-256 if there is none
    in common (or nothing was offered).
    """
    wanted = {name.lower() for name in offered}
    for name in available:
        if name in wanted:
            return name
    return SHA256


def title(name: str) -> str:
    return TITLES.get(name, name)
