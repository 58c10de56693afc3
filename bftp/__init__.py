"""BFTP, the Braude File Transfer Protocol: server, client and command-line tool."""
