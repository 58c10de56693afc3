"""
Registered nicknames through L{twisted.cred}: the shared password checker
behind a portal whose avatars are L{IChatAccount}s.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred.portal import IRealm, Portal
from zope.interface import Attribute, Interface, implementer


class IChatAccount(Interface):
    """
    A registered nickname whose password was given.
    """

    name = Attribute("The account name, C{str}.")


@implementer(IChatAccount)
@dataclass(frozen=True)
class Account:
    name: str


@implementer(IRealm)
class ChatRealm:
    def requestAvatar(self, avatarId, mind, *interfaces):
        if IChatAccount not in interfaces:
            raise NotImplementedError("chat only knows IChatAccount")
        return IChatAccount, Account(avatarId), lambda: None


def makePortal(checker) -> Portal:
    """
    A portal for registered nicknames.

    @param checker: checks names and passwords
        (L{coursenet.accounts.PasswordChecker}).
    """
    return Portal(ChatRealm(), [checker])
