"""
The pluggable pieces of the post office.

Every method that touches the disk returns a L{Deferred}: the store does
that work in its own threads, never on the reactor thread.  The rest
answer from memory.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, Iterable

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class IMailStore(Interface):
    """
    Where the post office keeps mail: one mailbox tree per user.
    """

    maxMessageSize = Attribute("The largest message L{append} stores, or L{None}.")

    def start() -> Deferred:
        """
        Ready the store as the server starts: remove the files left in
        every Maildir's C{tmp/} by interrupted deliveries, off the reactor.
        """

    def hasUser(name: str) -> bool:
        """
        Whether C{name} is a local account that can receive mail.
        """

    def maildir(user: str) -> str:
        """
        The directory of C{user}'s INBOX (computed, not created: the store
        creates it on first use).

        @raise ValueError: for a name that cannot be a directory name.
        """

    def folderPath(user: str, name: str) -> str:
        """
        The directory of mailbox C{name} of C{user}.

        @raise mail.maildir.BadFolderName: for names that cannot be stored.
        """

    def folder(user: str, name: str = "INBOX") -> "IFolder":
        """
        The shared view of one of C{user}'s mailboxes, not read yet: its
        L{IFolder.refresh} fails with L{mail.maildir.NoSuchFolder} if it does
        not exist (INBOX is created instead).
        """

    def openFolder(user: str, name: str = "INBOX") -> "Deferred[IFolder]":
        """
        The shared view of one of C{user}'s mailboxes, refreshed; fails with
        L{mail.maildir.NoSuchFolder} if it does not exist.
        """

    def listFolders(user: str) -> "Deferred[list[str]]":
        """
        The names of C{user}'s mailboxes, C{INBOX} first.
        """

    def createFolder(user: str, name: str) -> "Deferred[None]":
        """
        Create mailbox C{name}, durably; fails with L{FileExistsError} if it
        exists.
        """

    def deleteFolder(user: str, name: str) -> "Deferred[None]":
        """
        Remove mailbox C{name} and its messages; fails with
        L{mail.maildir.NoSuchFolder}.
        """

    def renameFolder(user: str, old: str, new: str) -> "Deferred[None]":
        """
        Rename mailbox C{old} and every mailbox below it, durably; fails with
        L{mail.maildir.NoSuchFolder} or L{FileExistsError}.
        """

    def subscriptions(user: str) -> "Deferred[list[str]]":
        """
        The mailbox names C{user} subscribed to.
        """

    def subscribe(user: str, name: str) -> "Deferred[None]":
        """
        Add C{name} to C{user}'s subscriptions.
        """

    def unsubscribe(user: str, name: str) -> "Deferred[None]":
        """
        Remove C{name} from C{user}'s subscriptions; fails with L{KeyError}
        if it is not there.
        """

    def openDelivery(user: str) -> "IDelivery":
        """
        Start delivering one message to C{user}'s INBOX.
        """

    def append(
        folder: "IFolder", message: bytes | IO[bytes], letters: str | None, mtime: float | None
    ) -> "Deferred[int]":
        """
        Store C{message} (bytes, or a file read in a thread) in C{folder}
        durably, with flag C{letters} (L{None}: as new mail) and
        modification time C{mtime}; its UID.  Fails with
        L{mail.maildir.MessageTooLarge} over L{maxMessageSize}.
        """

    def copy(folder: "IFolder", source: "IFolder", uid: int, letters: str) -> "Deferred[int]":
        """
        Store a copy of message C{uid} of C{source} in C{folder} with flag
        C{letters}; its UID in C{folder}.
        """

    def close() -> None:
        """
        Stop the store's threads once the work queued has finished.
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

    def commit() -> "Deferred[Any]":
        """
        Make the message durable and visible; a L{Deferred} that fires with
        its file name once it is fsync'd into C{new/}.
        """

    def abort() -> None:
        """
        Throw the partial message away.
        """


class IFolderListener(Interface):
    """
    Told when a folder's messages or flags change.
    """

    def folderChanged(folder: "IFolder") -> None:
        """
        C{folder} has new, removed or re-flagged messages.
        """


class IFolder(Interface):
    """
    One mailbox directory with persistent UIDs, shared by every session in
    the process.

    The methods returning L{Deferred}s change the folder one after the
    other, in the order they were called; the others read the in-memory
    view as of the last change.
    """

    path = Attribute("The folder's directory.")
    uidValidity = Attribute("The UIDVALIDITY of the mailbox.")
    uidNext = Attribute("The UID the next message will get.")
    keywords = Attribute("The folder's IMAP keywords, in the order of their info letters a, b, ...")
    highestModseq = Attribute("The highest mod-sequence of the folder (RFC 7162), never lower than before.")

    def modseq(uid: int) -> int:
        """
        The mod-sequence of message C{uid}: raised whenever its flags change.
        """

    def keywordLetters(names: Iterable[str], create: bool = True) -> "Deferred[str]":
        """
        The info letters of keywords C{names}, sorted; with C{create},
        keywords the folder does not have yet get letters (durably), and
        a 27th fails with L{mail.maildir.TooManyKeywords}.
        """

    def flags(uid: int) -> list[str]:
        """
        The IMAP flags of message C{uid}, keywords included.
        """

    def refresh() -> "Deferred[bool]":
        """
        Look at the directory again, giving new messages UIDs (durably);
        whether anything changed.
        """

    def addListener(listener: IFolderListener) -> None:
        """
        Call C{listener.folderChanged(folder)} whenever the folder changes.
        """

    def removeListener(listener: IFolderListener) -> None:
        """
        Stop calling C{listener}.
        """

    def uids() -> list[int]:
        """
        Every UID, ascending.
        """

    def has(uid: int) -> bool:
        """
        Whether message C{uid} is in the folder.
        """

    def filename(uid: int) -> str:
        """
        The absolute file name of message C{uid}; L{KeyError} if it is gone.
        """

    def size(uid: int) -> int:
        """
        The size of message C{uid} with CRLF line ends.
        """

    def mtime(uid: int) -> float:
        """
        When message C{uid} arrived (its file's modification time).
        """

    def letters(uid: int) -> str:
        """
        The Maildir flag letters of message C{uid}.
        """

    def isNew(uid: int) -> bool:
        """
        Whether no session has claimed message C{uid} yet: it is still in
        C{new/}, or was appended or copied here since the last claim.
        """

    def read(uids: Iterable[int]) -> "Deferred[dict[int, bytes]]":
        """
        The contents of messages C{uids}, leaving out those removed.
        """

    def setFlags(uids: Iterable[int], add: str = "", remove: str = "") -> "Deferred[dict[int, str]]":
        """
        Give messages C{uids} their flag letters less C{remove} plus C{add},
        worked out when the change runs (moving them to C{cur/}); the
        letters of the messages that were still there.
        """

    def claimNew() -> "Deferred[set[int]]":
        """
        Move every message from C{new/} to C{cur/}; the UIDs moved, and
        those appended or copied here since the last claim (the messages
        that are \\Recent for the session that claims them).
        """

    def remove(uids: Iterable[int]) -> "Deferred[list[int]]":
        """
        Delete messages C{uids}; the UIDs actually removed.
        """

    def adopt(name: str) -> "Deferred[int]":
        """
        Give a UID to file C{name} this process just put in the folder
        (APPEND, COPY); the UID.
        """

    def noteDelivered(name: str) -> "Deferred[None]":
        """
        A message was just renamed into C{new/} by this process: give it a
        UID, if the folder has been read, without listing the directory.
        """

