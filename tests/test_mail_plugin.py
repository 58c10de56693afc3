"""
The C{postoffice} twistd plugin: found by twistd, options checked.
"""

from __future__ import annotations

import subprocess
import sys
import os

import pytest
from twisted.python import usage

from mail.tap import Options, makeService


def test_twistd_lists_postoffice():
    """twistd --help names the postoffice plugin (packaging and dropin are right)."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    out = subprocess.run([twistd, "--help"], capture_output=True, text=True, check=True).stdout
    assert "postoffice" in out


def test_options_build_three_listeners(tmp_path):
    """Repeatable --smtp/--pop3/--imap give one listener each; --domain defaults to localhost."""
    o = Options()
    o.parseOptions(["--smtp", "tcp:0", "--smtp", "tcp:0", "--imap", "tcp:0", "--user", "a:b",
                    "--maildir", str(tmp_path)])
    assert o["domains"] == ["localhost"] and o["pop3"] == []
    assert len(list(makeService(o))) == 3


@pytest.mark.parametrize("argv", [
    ["--smtp", "tcp:0"],
    ["--user", "nocolon"],
    ["--user", "a:b", "--tls-cert", "c.pem"],
    ["--user", "a:b", "--max-message-size", "10"],
])
def test_options_refused(argv):
    """Missing accounts, a bad --user, a cert without key and a tiny size limit are usage errors."""
    with pytest.raises(usage.UsageError):
        Options().parseOptions(argv)
