"""
The pluggable pieces of the swarm peer.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IPieceStorage(Interface):
    """
    Where a torrent's bytes are kept (L{swarm.storage.Storage} keeps them
    in files).
    """

    root = Attribute("The path of the data (a file or a directory).")

    def read(index: int, begin: int, length: int) -> bytes:
        """
        C{length} bytes from C{begin} in piece C{index}.
        """

    def write(index: int, begin: int, data: bytes) -> None:
        """
        Store C{data} at C{begin} in piece C{index}.
        """

    def verify(index: int) -> bool:
        """
        Whether piece C{index} as stored has the SHA-1 the metainfo gives.
        """

    def existing() -> list[bool]:
        """
        Which pieces are already stored and good.
        """

    def create() -> None:
        """
        Make every file at its full length.
        """

    def flush() -> None:
        """
        Push written bytes to the files.
        """

    def close() -> None:
        """
        Close every open file.
        """

    def renameTo(final: str) -> None:
        """
        Move the finished data to C{final}.
        """
