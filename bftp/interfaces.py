"""
The pluggable pieces of the BFTP server.
"""

from zope.interface import Attribute, Interface


class IAccount(Interface):
    """
    A logged-in BFTP user: the avatar that the realm hands the protocol.
    """

    name = Attribute("The user name, C{str}; C{anonymous} for anonymous access.")
    readOnly = Attribute("C{True} if the account may only read (LIST, STAT, GET, HASH).")
