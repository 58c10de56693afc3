from twisted.application.service import ServiceMaker

bftp = ServiceMaker("BFTP server", "bftp.tap", "Braude File Transfer Protocol server", "bftp")
