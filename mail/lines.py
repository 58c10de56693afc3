"""
Line framing shared by the SMTP and POP3 servers.

Twisted's C{LineOnlyReceiver} drops the connection on an overlong line and
forgets the rest of the packet.  L{BoundedLines} instead reports the line
(L{BoundedLines.lineTooLong}), skips it and goes on, so the session answers
with an error and survives; it can also hold lines back while a command
completes and throw away what a client pipelined after STARTTLS.
"""

from __future__ import annotations


class BoundedLines:
    """
    Mix in before a C{LineOnlyReceiver} subclass: CRLF-terminated lines,
    each at most L{maxLineLength} octets.
    """

    _lineBuffer = b""
    _discarding = False
    _held = False
    _dropPending = False

    def maxLineLength(self) -> int:
        """
        The longest line accepted now, without its CRLF.
        """
        return 510


    def lineTooLong(self) -> None:
        """
        A line longer than L{maxLineLength} came and was skipped.
        """
        raise NotImplementedError

    def holdLines(self) -> None:
        """
        Stop handing lines to C{lineReceived} until L{releaseLines}.
        """
        self._held = True

    def releaseLines(self) -> None:
        """
        Go on with the lines received while held.
        """
        self._held = False
        if self._lineBuffer and self.transport is not None:
            self.dataReceived(b"")

    def dropPendingInput(self) -> None:
        """
        Discard whatever was received after the current line (used once TLS
        starts: RFC 3207 section 4.2, RFC 2595 section 3.1).
        """
        self._dropPending = True

    def dataReceived(self, data: bytes) -> None:
        buf = self._lineBuffer + data if self._lineBuffer else data
        pos = 0
        while not self._held:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line = buf[pos:end]
            pos = end + 2
            if self._discarding or len(line) > self.maxLineLength():
                self._discarding = False
                self.lineTooLong()
            else:
                self.lineReceived(line)
            if self._dropPending:
                self._dropPending = False
                pos = len(buf)
                break
            if self.transport is None or self.transport.disconnecting:
                self._lineBuffer = b""
                return
        rest = buf[pos:]
        if not self._held and len(rest) > self.maxLineLength():
            # Keep nothing of a line already too long: report it at its CRLF.
            self._discarding = True
            rest = rest[-1:] if rest.endswith(b"\r") else b""
        self._lineBuffer = rest


