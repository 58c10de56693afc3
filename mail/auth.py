"""
Logging in: one realm hands each protocol its avatar (an SMTP delivery
policy, a POP3 mailbox, an IMAP account) for a name checked by
L{coursenet.accounts.PasswordChecker}.
"""

from __future__ import annotations

from twisted.cred.portal import IRealm, Portal
from twisted.mail import imap4, pop3
from twisted.mail.interfaces import IMessageDelivery
from zope.interface import implementer

from mail.imap import MaildirAccount
from mail.pop3 import MailboxInUse, POP3Mailbox
from mail.smtp import LocalDelivery


@implementer(IRealm)
class PostOfficeRealm:
    """
    Avatars for every protocol of the post office; at most one POP3
    session per mailbox (RFC 1939 section 8: the maildrop is locked).
    """

    def __init__(self, store, domains) -> None:
        self.store = store
        self.domains = list(domains)
        self._pop3Locked: set[str] = set()

    def requestAvatar(self, avatarId, mind, *interfaces):
        user = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        for iface in interfaces:
            if iface is IMessageDelivery:
                return iface, LocalDelivery(self.store, self.domains, user), lambda: None
            if iface is pop3.IMailbox:
                if user in self._pop3Locked:
                    raise MailboxInUse(user)
                mailbox = POP3Mailbox(self.store.folder(user))
                self._pop3Locked.add(user)
                return iface, mailbox, lambda: self._pop3Locked.discard(user)
            if iface is imap4.IAccount:
                self.store.maildir(user)
                return iface, MaildirAccount(self.store, user), lambda: None
        raise NotImplementedError(f"no avatar for {interfaces}")


def makePortal(store, domains, checker) -> Portal:
    """
    The portal all three servers log in through.
    """
    return Portal(PostOfficeRealm(store, domains), [checker])
