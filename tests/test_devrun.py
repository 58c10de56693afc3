"""
`make run` as a newcomer uses it (issues 10 and 13): every server listens
before the summary is printed, the demo admin and the student account work
on BFTP, and Ctrl-C stops everything with no traceback in the logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from coursenet.devrun import listenPorts


def test_listenPortsReadsEndpointsAndTLSPort():
    """The ports make run waits for come from tcp:/ssl: endpoint strings and --tls-port."""
    args = ["--listen", "tcp:9021:interface=127.0.0.1", "--tls-port", "9022", "--imap", "ssl:1993:privateKey=k"]
    assert listenPorts(args) == [9021, 1993, 9022]


def startMakeRun(cwd, *args: str, timeout: float = 120) -> tuple[subprocess.Popen, list[str]]:
    """
    Start what `make run` starts (coursenet.devrun) in C{cwd} and read its
    output until it says every server listens (or it ends, or C{timeout}).

    @return: the process, still running, and the lines it printed.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "coursenet.devrun", *args], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Every server listens."):
            break
    return proc, lines


def test_makeRunStartsEverythingAndStopsCleanly(tmp_path):
    """make run's summary comes once every port listens; demo is a BFTP admin, student a student; Ctrl-C exits 0 and no log holds a traceback."""
    from coursenet.devrun import services, tetherUnavailable

    proc, lines = startMakeRun(tmp_path)
    try:
        assert lines and lines[-1].startswith("Every server listens."), "".join(lines)
        var = tmp_path / "var"
        for name, args, _ in services(str(var), "c", "k", "p"):
            for port in listenPorts(args):
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        env = dict(os.environ, BFTP_PASSWORD=(var / "student-password").read_text().strip())
        bftp = os.path.join(os.path.dirname(sys.executable), "bftp")
        (tmp_path / "hw.txt").write_text("my work\n")
        put = subprocess.run(
            [bftp, "--no-progress", "put", str(tmp_path / "hw.txt"), "bftp://student@127.0.0.1:9021/handin/student/hw.txt"],
            capture_output=True, text=True, env=env, timeout=60,
        )
        assert put.returncode == 0, put.stderr
        refused = subprocess.run(
            [bftp, "--no-progress", "put", str(tmp_path / "hw.txt"), "bftp://student@127.0.0.1:9021/course/hw.txt"],
            capture_output=True, text=True, env=env, timeout=60,
        )
        assert refused.returncode == 1 and refused.stderr.startswith("bftp: 534 ")
        env["BFTP_PASSWORD"] = (var / "demo-password").read_text().strip()
        ls = subprocess.run(
            [bftp, "ls", "bftp://demo@127.0.0.1:9021/handin/student"], capture_output=True, text=True, env=env, timeout=60
        )
        assert ls.returncode == 0 and "hw.txt" in ls.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "var").glob("*.log")}
    expected = {"bftp.log", "postoffice.log", "chat.log"} | (set() if tetherUnavailable() else {"tether.log"})
    assert expected <= set(logs)
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"


def test_classroomCertificateCarriesTheMachinesNames(tmp_path):
    """The classroom certificate is valid for localhost, 127.0.0.1 and every extra name and address given."""
    from coursenet.tls import certificateNames, ensureDevCertificate

    cert, _ = ensureDevCertificate(str(tmp_path), extraNames=["lab-pc", "192.0.2.7", "2001:db8::7"])
    assert certificateNames(cert) == ["localhost", "127.0.0.1", "lab-pc", "192.0.2.7", "2001:db8::7"]


def test_bindToMovesEveryListenerToTheHost():
    """Classroom mode rebinds each endpoint's interface, quoting an IPv6 host for the endpoint syntax."""
    from coursenet.devrun import bindTo

    args = ["--listen", "tcp:9021:interface=127.0.0.1", "--imap", "ssl:1993:interface=127.0.0.1:privateKey=k"]
    assert bindTo(args, "0.0.0.0") == ["--listen", "tcp:9021:interface=0.0.0.0", "--imap", "ssl:1993:interface=0.0.0.0:privateKey=k"]
    assert bindTo(["tcp:1:interface=127.0.0.1"], "::") == ["tcp:1:interface=\\:\\:"]


def test_makeRunWithSomeServicesOnly(tmp_path):
    """SERVICES="bftp" starts BFTP alone; an unknown name is one line and exit 2 before anything starts."""
    bad = subprocess.run(
        [sys.executable, "-m", "coursenet.devrun", "--services", "bftp nosuch"], cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("make run: unknown service(s) nosuch;")
    proc, lines = startMakeRun(tmp_path, "--services", "bftp", timeout=60)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    started = [line.split()[0] for line in lines if "   log: " in line]
    assert started == ["bftp"], "".join(lines) + out
    assert proc.returncode == 0
