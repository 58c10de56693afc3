"""
The post office's interfaces say the whole truth: every implementer
provides all of its interface (zope.interface.verify.verifyObject), and
every method or attribute the servers use on a store or a folder is
declared on IMailStore or IFolder.
"""

from __future__ import annotations

import ast
import os

import pytest
from twisted.cred.portal import IRealm
from twisted.mail import imap4, pop3
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from zope.interface.verify import verifyObject

import mail
from mail.auth import PostOfficeRealm
from mail.imap import MaildirAccount, MaildirMailbox, MaildirMessage
from mail.interfaces import IDelivery, IFolder, IFolderListener, IMailStore
from mail.maildir import Delivery, Folder
from mail.pop3 import POP3Mailbox
from mail.smtp import LocalDelivery, _MaildirMessage
from tests.mail_support import memoryStore, result


@pytest.fixture
def store(tmp_path):
    return memoryStore(str(tmp_path / "mail"))


def test_store_folder_delivery(store):
    """MaildirStore, Folder and Delivery provide IMailStore, IFolder and IDelivery in full."""
    assert verifyObject(IMailStore, store)
    folder = result(store.openFolder("alice"))
    assert isinstance(folder, Folder) and verifyObject(IFolder, folder)
    delivery = store.openDelivery("alice")
    assert isinstance(delivery, Delivery) and verifyObject(IDelivery, delivery)


def test_imap_pieces(store):
    """The IMAP account, mailbox and message provide Twisted's IMAP interfaces, and the mailbox listens to its folder."""
    account = MaildirAccount(store, "alice")
    assert verifyObject(imap4.IAccount, account) and verifyObject(imap4.INamespacePresenter, account)
    box = result(account.select("INBOX"))
    for iface in (imap4.IMailbox, imap4.IMessageCopier, imap4.ICloseableMailbox, IFolderListener):
        assert verifyObject(iface, box)
    message = MaildirMessage(1, [], box.folder, 0)
    assert verifyObject(imap4.IMessage, message) and verifyObject(imap4.IMessageFile, message)


def test_pop3_smtp_and_realm(store):
    """The POP3 mailbox, the SMTP delivery policy and message, and the realm provide their Twisted interfaces."""
    assert verifyObject(pop3.IMailbox, POP3Mailbox(store.folder("alice")))
    delivery = LocalDelivery(store, ["example.test"])
    assert verifyObject(IMessageDelivery, delivery)
    assert verifyObject(IMessageSMTP, _MaildirMessage(store.openDelivery("alice")))
    assert verifyObject(IRealm, PostOfficeRealm(store, ["example.test"]))


#: Names a store or a folder goes by in the servers' code.
_HOLDERS = {
    IMailStore: {"store", "_store"},
    IFolder: {"folder", "_folder", "source"},
}


def _usedNames(tree: ast.AST, holders: set[str]) -> set[str]:
    """
    The attributes read on expressions named (or ending in) C{holders}.
    """
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            value = node.value
            name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", None)
            if name in holders:
                used.add(node.attr)
    return used


@pytest.mark.parametrize("iface", [IMailStore, IFolder], ids=lambda i: i.__name__)
def test_callers_use_only_declared_names(iface):
    """Every method or attribute mail/ uses on a store or a folder, outside the store itself, is declared by the interface."""
    top = os.path.dirname(mail.__file__)
    used: set[str] = set()
    for name in os.listdir(top):
        if name.endswith(".py") and name != "maildir.py":
            with open(os.path.join(top, name), encoding="utf-8") as f:
                used |= _usedNames(ast.parse(f.read()), _HOLDERS[iface])
    assert used, "no uses found: the test looks in the wrong place"
    assert used - set(iface.names(all=True)) == set()
