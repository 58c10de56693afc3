from twisted.application.service import ServiceMaker

postoffice = ServiceMaker("post office", "mail.tap", "ESMTP, POP3 and IMAP4rev1 over Maildir", "postoffice")
