"""
The post office: ESMTP, POP3 and IMAP4rev1 over a Maildir store, built on
the protocol classes of L{twisted.mail}.  See C{docs/mail.md}.
"""
