"""
Every private name of Twisted that the post office relies on, in one place.

Twisted offers no public way to do these few things: refuse an IMAP literal
before it is read, fail an IMAP command whose next line is too long, forget
an SMTP transaction after STARTTLS, drop the messages of a DATA refused
half-way, forget the USER of a POP3 session that starts TLS, answer the end
of DATA.  (The FETCH items that Twisted's public C{arg_fetchatt} returns
are instances of its private C{_FetchParser} classes: C{mail.imap} reads
their attributes, whose shape C{tests/test_mail_compat.py} checks too.)  C{tests/test_mail_compat.py} checks
each name against the installed Twisted, so an upgrade that renames or
reshapes one fails there, loudly, instead of in a session.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail import imap4, pop3, smtp

#: Private methods of Twisted's servers that classes here override: the
#: class, the name, and the parameters Twisted calls it with.
OVERRIDDEN: list[tuple[type, str, tuple[str, ...]]] = [
    (imap4.IMAP4Server, "_fileLiteral", ("self", "size")),
    (smtp.SMTP, "_messageHandled", ("self", "resultList")),
]

#: Private names the login methods (POP3 C{do_PASS}, SMTP AUTH) use
#: directly; checked the same way.
LOGIN: list[tuple[type, str, tuple[str, ...]]] = [
    (pop3.POP3, "_longOperation", ("self", "d")),
    (pop3.POP3, "_cbMailbox", ("self", "result", "user")),
    (pop3.POP3, "_ebMailbox", ("self", "failure")),
    (pop3.POP3, "_ebUnexpected", ("self", "failure")),
    (smtp.ESMTP, "_cbAuthenticated", ("self", "loginInfo")),
]


def fileLiteral(server: imap4.IMAP4Server, size: int) -> Deferred[Any]:
    """
    Twisted's reading of an IMAP literal of C{size} octets into a file.
    """
    return imap4.IMAP4Server._fileLiteral(server, size)


def imapAbandonPending(server: imap4.IMAP4Server, error: Exception) -> None:
    """
    Fail, with C{error}, the command that waits for the rest of its line
    after a literal, or for an AUTHENTICATE response: it answers with its
    own tag.
    """
    # A LiteralString or LiteralFile, whose defer is waiting; or, for
    # AUTHENTICATE, the Deferred itself.
    pending: Any = server._pendingLiteral
    server._pendingLiteral = None
    waiting = pending if isinstance(pending, Deferred) else pending.defer
    waiting.errback(error)


def smtpMessages(server: smtp.SMTP) -> list[Any]:
    """
    The messages (one per recipient) of the DATA being received, or none.
    """
    return list(getattr(server, "_SMTP__messages", None) or ())


def smtpHeloName(server: smtp.SMTP) -> bytes | None:
    """
    The name the client gave in HELO or EHLO, or L{None} before it did.
    """
    helo = server._helo
    return None if helo is None else helo[0]


def smtpRecipientCount(server: smtp.SMTP) -> int:
    """
    How many RCPTs the current transaction has accepted.
    """
    return len(server._to)


def smtpForget(server: smtp.SMTP) -> None:
    """
    Forget the HELO name and the transaction in progress (RFC 3207 4.2:
    after STARTTLS the client starts again).
    """
    helo = server._helo
    server._helo = (None, None if helo is None else helo[1])
    server._from = None
    server._to = []


def pop3ForgetUser(server: pop3.POP3) -> None:
    """
    Forget the name a POP3 client gave with USER.
    """
    server._userIs = None
