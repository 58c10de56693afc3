"""
C{twistd postoffice}: the ESMTP, POP3 and IMAP4rev1 servers over one
Maildir store, as a twistd plugin.
"""

from __future__ import annotations

import os

from twisted.application import service, strports
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
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
from mail.sink import SINK_ACCOUNT, SinkSMTPFactory, nonLoopback, sinkPath
from mail.smtp import DEFAULT_MAX_MESSAGE_SIZE, SMTPFactory

_log = Logger()

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
    optFlags = [
        ["sink", None,
         "development sink: accept mail for any address into one Maildir (MAILDIR/sink) and log each"
         " message; no account needed; loopback listeners only"],
        ["sink-anywhere", None, "let --sink listen beyond loopback (anyone who reaches it can fill its disk)"],
    ]
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
        if not self["passwd"] and not self["users"] and not self["sink"]:
            raise usage.UsageError("no accounts: give --passwd or --user (or --sink for a development sink)")
        if self["sink-anywhere"] and not self["sink"]:
            raise usage.UsageError("--sink-anywhere goes with --sink")
        atLeast("max-message-size", self["max-message-size"], 1024)
        if os.path.exists(self["maildir"]) and not os.path.isdir(self["maildir"]):
            raise usage.UsageError(f"--maildir {self['maildir']}: not a directory")
        if not self["domains"]:
            self["domains"].append("localhost")
        if not (self["smtp"] or self["pop3"] or self["imap"]):
            for proto, description in DEFAULT_LISTENERS.items():
                self[proto].append(description)
        if self["sink"] and not self["sink-anywhere"]:
            for proto in DEFAULT_LISTENERS:
                for description in self[proto]:
                    where = nonLoopback(description)
                    if where is not None:
                        raise usage.UsageError(
                            f"--{proto} {description}: --sink takes anyone's mail, so it listens on loopback"
                            f" only (e.g. tcp:2525:interface=127.0.0.1), not on {where}; add --sink-anywhere"
                            " to allow it"
                        )


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
    hasUser = checker.hasUser
    if options["sink"]:
        # The sink's Maildir is an account's INBOX: --user sink:PW reads it over POP3 or IMAP.
        hasUser = lambda name: name == SINK_ACCOUNT or checker.hasUser(name)  # noqa: E731
        _log.warn(
            "development sink: mail for any address is kept in {path} and delivered nowhere"
            " (read it with --user {account}:PASSWORD over POP3/IMAP, or any Maildir reader)",
            path=sinkPath(options["maildir"]), account=SINK_ACCOUNT,
        )
    store = MaildirStore(options["maildir"], hasUser, maxMessageSize=options["max-message-size"])
    portal = makePortal(store, options["domains"], checker)
    ctx = None
    if options["tls-cert"]:
        ctx = serverContextFactory(options["tls-cert"], options["tls-key"])
    # One cap for the three servers: they share the process's descriptors.
    # A session may hold a file besides its socket (a delivery, a large
    # APPEND literal).
    admission = Admission(options["max-connections"], options["max-per-address"], fdsPerConnection=2)
    smtpFactory = SinkSMTPFactory if options["sink"] else SMTPFactory
    factories: dict[str, ServerFactory] = {
        "smtp": smtpFactory(
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
