"""
The pluggable pieces of the post office.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMailStore(Interface):
    """
    Where the post office keeps mail: one mailbox tree per user.
    """

    def hasUser(name: str) -> bool:
        """
        Whether C{name} is a local account that can receive mail.
        """

    def openDelivery(user: str) -> "IDelivery":
        """
        Start delivering one message to C{user}'s INBOX.
        """

    def folder(user: str, name: str) -> "IFolder":
        """
        The shared view of one of C{user}'s mailboxes; raise L{KeyError} if it
        does not exist.
        """

    def listFolders(user: str) -> list[str]:
        """
        The names of C{user}'s mailboxes, C{INBOX} first.
        """


class IDelivery(Interface):
    """
    One message on its way into a mailbox: written as it arrives, durable only
    once L{commit} has fired.
    """

    size = Attribute("Octets written so far.")

    def write(data: bytes) -> None:
        """
        Append C{data} (lines ending in LF) to the message.
        """

    def commit():
        """
        Make the message durable and visible; a L{Deferred} that fires with
        its file name once it is fsync'd into C{new/}.
        """

    def abort() -> None:
        """
        Throw the partial message away.
        """


class IFolder(Interface):
    """
    One mailbox directory with persistent UIDs, shared by every session in
    the process.
    """

    uidValidity = Attribute("The UIDVALIDITY of the mailbox.")
    uidNext = Attribute("The UID the next message will get.")

    def scan() -> bool:
        """
        Look at the directory again; whether anything changed.
        """

    def addListener(listener) -> None:
        """
        Call C{listener.folderChanged(folder)} whenever a scan finds changes.
        """

    def removeListener(listener) -> None:
        """
        Stop calling C{listener}.
        """
