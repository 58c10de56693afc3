"""
Logging in to the grades service through L{twisted.cred}: the shared
password checker, and a realm whose avatars are the accounts' roles, read
from the grades database.
"""

from __future__ import annotations

from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from zope.interface import implementer

from grades.interfaces import IGradesUser, IGradeStore


@implementer(IRealm)
class GradesRealm:
    """
    An account's avatar is its L{grades.store.Role}: the student id it is
    linked to, the courses it teaches.
    """

    def __init__(self, store: IGradeStore) -> None:
        self.store = store

    def requestAvatar(self, avatarId, mind, *interfaces) -> Deferred:
        if IGradesUser not in interfaces:
            raise NotImplementedError("the grades service only knows IGradesUser")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        return self.store.role(name).addCallback(lambda role: (IGradesUser, role, lambda: None))


def makePortal(store: IGradeStore, checker) -> Portal:
    """
    A portal for the grades service.

    @param checker: checks user names and passwords
        (L{coursenet.accounts.PasswordChecker}).
    """
    return Portal(GradesRealm(store), [checker])
