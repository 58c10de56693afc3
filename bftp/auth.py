"""
Logging in to BFTP through L{twisted.cred}: a realm whose avatars are
L{IAccount}s, and a portal with the shared password checker and, when
enabled, read-only anonymous access.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess
from twisted.cred.portal import IRealm, Portal
from zope.interface import implementer

from bftp.interfaces import IAccount


@implementer(IAccount)
@dataclass(frozen=True)
class Account:
    name: str
    readOnly: bool = False


@implementer(IRealm)
class BFTPRealm:
    """
    Anonymous users get a read-only account, everyone else a full one.
    """

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IAccount not in interfaces:
            raise NotImplementedError("BFTP only knows IAccount")
        if avatarId is ANONYMOUS:
            account = Account("anonymous", readOnly=True)
        else:
            account = Account(avatarId)
        return IAccount, account, lambda: None


def makePortal(checker, anonymous: bool = False) -> Portal:
    """
    A portal for the BFTP realm.

    @param checker: checks user names and passwords
        (L{coursenet.accounts.PasswordChecker}).
    @param anonymous: also let C{anonymous} in, read-only.
    """
    checkers = [checker]
    if anonymous:
        checkers.append(AllowAnonymousAccess())
    return Portal(BFTPRealm(), checkers)
