"""
The C{postoffice} twistd plugin: found by twistd, options checked.
"""

from __future__ import annotations

import subprocess
import sys
import os

import pytest
from twisted.python import usage

from coursenet.admission import defaultMaxConnections
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


def test_admission_options_shared_by_the_three_servers(tmp_path):
    """--max-connections and --max-per-address cap SMTP, POP3 and IMAP together, through one Admission."""
    o = Options()
    o.parseOptions(["--user", "a:b", "--maildir", str(tmp_path), "--max-connections", "40",
                    "--max-per-address", "7"])
    admissions = {id(s.factory.admission): s.factory.admission for s in makeService(o)}
    assert len(admissions) == 1
    (admission,) = admissions.values()
    assert (admission.maxConnections, admission.maxPerAddress) == (40, 7)


def test_admission_defaults_fit_the_descriptor_limit(tmp_path):
    """Without the options, the cap is what fits under the descriptor limit (two each), 256 per address at most."""
    o = Options()
    o.parseOptions(["--user", "a:b", "--maildir", str(tmp_path)])
    (admission,) = {id(s.factory.admission): s.factory.admission for s in makeService(o)}.values()
    assert admission.maxConnections == defaultMaxConnections(fdsPerConnection=2)
    assert admission.maxPerAddress == min(256, admission.maxConnections)
