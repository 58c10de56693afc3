"""
The one shape of a refusal in every service: a numeric code and the human
message that says what was wrong.
"""

from __future__ import annotations


class ReplyError(Exception):
    """
    A refusal with its code and message: what a server answers, or what a
    client was answered.  C{str()} gives the reply as the wire shows it.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{int(code)} {message}")
        self.code = code
        self.message = message
