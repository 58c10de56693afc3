"""
C{twistd postoffice}: the ESMTP, POP3 and IMAP4rev1 servers over one
Maildir store, as a twistd plugin.
"""

from __future__ import annotations

import os

from twisted.application import service, strports
from twisted.internet.protocol import ServerFactory
from twisted.python import usage

from coursenet.accounts import PasswordChecker
from coursenet.admission import Admission
from coursenet.options import AccountOptionsMixin, AdmissionOptionsMixin, atLeast
from coursenet.throttle import GuessOptionsMixin
from coursenet.tls import serverContextFactory
from mail.auth import makePortal
from mail.imap import IMAPFactory
from mail.maildir import MaildirStore
from mail.pop3 import POP3Factory
from mail.smtp import DEFAULT_MAX_MESSAGE_SIZE, SMTPFactory

DEFAULT_LISTENERS = {
    "smtp": "tcp:2525:interface=127.0.0.1",
    "pop3": "tcp:1110:interface=127.0.0.1",
    "imap": "tcp:1143:interface=127.0.0.1",
}


class Options(AccountOptionsMixin, AdmissionOptionsMixin, GuessOptionsMixin, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A post office: ESMTP, POP3 and IMAP4rev1 over one Maildir per user. "
        "Listeners are Twisted endpoint strings (ssl: ones give SMTPS, POP3S, "
        "IMAPS); with --tls-cert, plain listeners offer STARTTLS/STLS and take "
        "passwords only after it. With no listener option, listens on "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_LISTENERS.items())
        + "."
    )
    optParameters = [
        ["maildir", None, "var/mail", "root of the mail store: one Maildir per user"],
        ["passwd", None, None, "password file of scrypt hashes (see coursenet-passwd)"],
        ["tls-cert", None, None, "PEM certificate: offer STARTTLS/STLS on plain listeners"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
        ["hostname", None, None, "name in greetings and Received: (default: first --domain)"],
        [
            "postmaster",
            None,
            None,
            "account that gets mail for postmaster (default: the account named"
            " postmaster, else the first --user, else the first account by name)",
        ],
        [
            "max-message-size",
            None,
            DEFAULT_MAX_MESSAGE_SIZE,
            "largest message accepted by SMTP or IMAP APPEND, in octets",
            int,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["smtp"] = []
        self["pop3"] = []
        self["imap"] = []
        self["domains"] = []
        self["users"] = []

    def opt_smtp(self, description: str) -> None:
        """
        Serve SMTP on this endpoint (repeatable), e.g. tcp:2525 or
        ssl:4465:privateKey=key.pem:certKey=cert.pem
        """
        self["smtp"].append(description)

    def opt_pop3(self, description: str) -> None:
        """
        Serve POP3 on this endpoint (repeatable)
        """
        self["pop3"].append(description)

    def opt_imap(self, description: str) -> None:
        """
        Serve IMAP4rev1 on this endpoint (repeatable)
        """
        self["imap"].append(description)

    def opt_domain(self, name: str) -> None:
        """
        A local mail domain (repeatable; default localhost)
        """
        self["domains"].append(name.lower().rstrip("."))

    def postOptions(self) -> None:
        self.checkStartOptions([(proto, d) for proto in DEFAULT_LISTENERS for d in self[proto]])
        self.checkAdmission()
        if not self["passwd"] and not self["users"]:
            raise usage.UsageError("no accounts: give --passwd or --user")
        atLeast("max-message-size", self["max-message-size"], 1024)
        if os.path.exists(self["maildir"]) and not os.path.isdir(self["maildir"]):
            raise usage.UsageError(f"--maildir {self['maildir']}: not a directory")
        if not self["domains"]:
            self["domains"].append("localhost")
        if not (self["smtp"] or self["pop3"] or self["imap"]):
            for proto, description in DEFAULT_LISTENERS.items():
                self[proto].append(description)


class MailService(service.MultiService):
    """
    The listeners, and the store started with them (stale C{tmp/} files
    removed, in the store's pool).
    """

    def __init__(self, store: MaildirStore) -> None:
        super().__init__()
        self.store = store

    def startService(self) -> None:
        self.store.start()
        super().startService()


def postmasterAccount(options: Options, checker: PasswordChecker) -> str | None:
    """
    The account that gets mail for C{postmaster} (RFC 5321 4.5.1: it MUST
    be accepted): C{--postmaster}, else the account of that name, else the
    first C{--user}, else the first account by name.
    """
    if options["postmaster"]:
        if not checker.hasUser(options["postmaster"]):
            raise usage.UsageError(f"--postmaster {options['postmaster']}: no such account")
        return options["postmaster"]
    if checker.hasUser("postmaster"):
        return "postmaster"
    if options["users"]:
        return options["users"][0][0]
    return min(checker.userNames(), default=None)


def makeService(options: Options) -> service.IService:
    checker = PasswordChecker(options["passwd"], options["users"], rule=options.guessRule())
    store = MaildirStore(
        options["maildir"], checker.hasUser, maxMessageSize=options["max-message-size"]
    )
    portal = makePortal(store, options["domains"], checker)
    ctx = None
    if options["tls-cert"]:
        ctx = serverContextFactory(options["tls-cert"], options["tls-key"])
    # One cap for the three servers: they share the process's descriptors.
    # A session may hold a file besides its socket (a delivery, a large
    # APPEND literal).
    admission = Admission(options["max-connections"], options["max-per-address"], fdsPerConnection=2)
    factories: dict[str, ServerFactory] = {
        "smtp": SMTPFactory(
            store,
            options["domains"],
            portal,
            ctx,
            options["max-message-size"],
            options["hostname"],
            admission=admission,
            postmaster=postmasterAccount(options, checker),
        ),
        "pop3": POP3Factory(portal, ctx, loginNeedsTLS=ctx is not None, admission=admission),
        "imap": IMAPFactory(portal, ctx, options["max-message-size"], admission=admission),
    }
    top = MailService(store)
    for proto, factory in factories.items():
        for description in options[proto]:
            strports.service(description, factory).setServiceParent(top)
    return top
