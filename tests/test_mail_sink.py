"""
C{twistd postoffice --sink} (issue 13): a development sink like aiosmtpd's
default, which keeps mail for any address in one Maildir and logs each
message, and listens on loopback only unless told otherwise.
"""

from __future__ import annotations

import os
import re
import poplib
import smtplib
import subprocess
import sys
import time

import pytest

from coursenet.procs import freePort, stopProcess, waitForPort
from mail.sink import nonLoopback

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize(
    "description, where",
    [
        ("tcp:2525:interface=127.0.0.1", None),
        ("tcp:2525:interface=127.0.0.9", None),
        ("tcp6:2525:interface=\\:\\:1", None),
        ("tcp:2525:interface=localhost", None),
        ("ssl:4465:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem", None),
        ("unix:/tmp/sink.sock", None),
        ("tcp:2525", "every interface"),
        ("tcp:2525:interface=0.0.0.0", "0.0.0.0"),
        ("tcp6:2525:interface=\\:\\:", "::"),
        ("ssl:4465:privateKey=k.pem:certKey=c.pem", "every interface"),
        ("tcp:2525:interface=198.18.0.1", "198.18.0.1"),
    ],
)
def test_nonLoopbackFindsListenersBeyondLoopback(description, where):
    """Loopback and UNIX listeners pass; no interface, a wildcard or another address is named."""
    assert nonLoopback(description) == where


def test_sinkRefusedBeyondLoopbackUnlessForced():
    """--sink with a listener on every interface is refused naming it; --sink-anywhere allows it; --sink-anywhere alone is refused."""
    from twisted.python import usage

    from mail.tap import Options

    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(["--sink", "--smtp", "tcp:2525"])
    assert str(refused.value).startswith("--smtp tcp:2525: --sink takes anyone's mail, so it listens on loopback only")
    assert "--sink-anywhere" in str(refused.value)
    forced = Options()
    forced.parseOptions(["--sink", "--sink-anywhere", "--smtp", "tcp:2525"])
    assert forced["smtp"] == ["tcp:2525"]
    with pytest.raises(usage.UsageError, match="--sink-anywhere goes with --sink"):
        Options().parseOptions(["--user", "a:b", "--sink-anywhere"])


def test_sinkKeepsMailForAnyAddressOnceAndLogsIt(tmp_path):
    """Mail to any domain is accepted with no account, kept once per message in MAILDIR/sink with its envelope, logged, and readable over POP3 as sink."""
    smtpPort, pop3Port = freePort(), freePort()
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        [
            os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile", str(log), "postoffice", "--sink",
            "--maildir", str(tmp_path / "mail"), "--user", "sink:pw",
            "--smtp", f"tcp:{smtpPort}:interface=127.0.0.1", "--pop3", f"tcp:{pop3Port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
    )
    try:
        waitForPort(smtpPort, proc)
        waitForPort(pop3Port, proc)
        with smtplib.SMTP("127.0.0.1", smtpPort) as s:
            assert s.ehlo()[0] == 250 and not s.has_extn("auth")
            refused = s.sendmail("me@else.test", ["ada@example.org", "bob@elsewhere.test"],
                                 b"Subject: first one\r\nTo: ada@example.org\r\n\r\nhello\r\n")
            assert refused == {}
            assert s.sendmail("", ["postmaster"], b"Subject: second\r\n\r\nagain\r\n") == {}
        new = tmp_path / "mail" / "sink" / "new"
        files = sorted(p.read_bytes() for p in new.iterdir())
        assert len(files) == 2
        first = next(f for f in files if b"first one" in f)
        assert first.startswith(b"X-Envelope-To: <ada@example.org>, <bob@elsewhere.test>\n")
        assert first.endswith(b"\nhello\n")
        pop = poplib.POP3("127.0.0.1", pop3Port, timeout=10)
        pop.user("sink")
        pop.pass_("pw")
        assert pop.stat()[0] == 2
        pop.quit()
        deadline = time.monotonic() + 10
        while "subject 'second'" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = log.read_text()
        assert re.search(r"sink: 127\.0\.0\.1:\d+ sent a message from <me@else\.test> to <ada@example\.org>,"
                         r" <bob@elsewhere\.test>, subject 'first one', \d+ octets, kept as \S+", text), text
        assert re.search(r"sink: 127\.0\.0\.1:\d+ sent a message from <> to <postmaster@localhost>, subject 'second'",
                         text), text
        assert "development sink: mail for any address is kept in" in text
        # Peers as ADDRESS:PORT [user], never Twisted's address repr.
        assert re.search(r"127\.0\.0\.1:\d+ \[sink\] logged in", text), text
        assert "IPv4Address" not in text
    finally:
        stopProcess(proc)
    assert "Traceback" not in log.read_text()
