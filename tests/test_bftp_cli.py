"""
The bftp command line and twistd bftp's option checks as a newcomer meets
them (issue 13): trees both ways, mv, uploads resumed by default, stat's
exit status, and one clear line for every mistake.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import pytest_twisted

from bftp.fs import PARTIAL_PREFIX
from tests.test_bftp_integration import PASSWORD, USER, runBftp, startServer, writeRandom

BIN = os.path.dirname(sys.executable)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


def url(server, path="/"):
    return f"bftp://{USER}@127.0.0.1:{server.portNumber}{path}"


@pytest_twisted.ensureDeferred
async def test_treesGoUpAndComeBack(reactor, root, tmp_path):
    """put -r sends a folder tree (folders made, every file verified) and get -r brings the same tree back."""
    src = tmp_path / "work"
    (src / "sub" / "deeper").mkdir(parents=True)
    writeRandom(src / "a.bin", 200_000)
    (src / "sub" / "b.txt").write_bytes(b"b\n")
    (src / "sub" / "deeper" / "c.txt").write_bytes(b"")
    server = await startServer(reactor, root, "plain", None)
    try:
        out, err, code = await runBftp("put", "-r", str(src), url(server))
        assert code == 0, err
        assert out.splitlines()[-1] == f"sent 3 files, 200002 bytes, from {src} into /work"
        assert (root / "work" / "sub" / "deeper" / "c.txt").read_bytes() == b""
        back = tmp_path / "back"
        out, err, code = await runBftp("get", "-r", url(server, "/work"), str(back))
        assert code == 0, err
        for path in ("a.bin", "sub/b.txt", "sub/deeper/c.txt"):
            assert (back / path).read_bytes() == (src / path).read_bytes()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_putOfAFolderWithoutR(reactor, root, tmp_path):
    """put of a folder without -r, or of a missing file, is one line and exit 2, before connecting."""
    (tmp_path / "dir").mkdir()
    out, err, code = await runBftp("put", str(tmp_path / "dir"), "bftp://nobody@127.0.0.1:9/x")
    assert (code, err) == (2, f"bftp: {tmp_path / 'dir'} is a directory; use put -r to upload it with everything in it\n")
    out, err, code = await runBftp("put", str(tmp_path / "none"), "bftp://nobody@127.0.0.1:9/x")
    assert (code, err) == (2, f"bftp: {tmp_path / 'none'}: no such file or directory\n")


@pytest_twisted.ensureDeferred
async def test_statExitStatusAndLine(reactor, root):
    """stat prints one readable line; for a missing path it says so on stderr and exits 1."""
    (root / "f.txt").write_bytes(b"12345")
    server = await startServer(reactor, root, "plain", None)
    try:
        out, err, code = await runBftp("stat", url(server, "/f.txt"))
        assert code == 0 and out.startswith("/f.txt: file, 5 bytes, modified 20")
        out, err, code = await runBftp("stat", url(server, "/nope"))
        assert (code, out, err) == (1, "", "bftp: /nope: does not exist\n")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_mvRenames(reactor, root):
    """mv renames a remote file; a missing source is a 550 line and exit 1."""
    (root / "old.txt").write_bytes(b"x")
    server = await startServer(reactor, root, "plain", None)
    try:
        out, err, code = await runBftp("mv", url(server, "/old.txt"), "/new.txt")
        assert code == 0 and (root / "new.txt").read_bytes() == b"x" and not (root / "old.txt").exists()
        out, err, code = await runBftp("mv", url(server, "/old.txt"), "/x.txt")
        assert code == 1 and err.startswith("bftp: 550 ")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_plainRerunResumesACutUpload(reactor, root, tmp_path):
    """A plain rerun of put continues from what the server kept; if that was not this file's start, it starts over and still stores the right file."""
    src = tmp_path / "big.bin"
    writeRandom(src, 3_000_000)
    data = src.read_bytes()
    (root / (PARTIAL_PREFIX + "big.bin")).write_bytes(data[:1_000_000])
    from twisted.logger import globalLogPublisher

    commands: list[str] = []

    def observe(event):
        line = event.get("line")
        if isinstance(line, (bytes, str)) and "PUT" in str(line):
            commands.append(line.decode() if isinstance(line, bytes) else line)

    globalLogPublisher.addObserver(observe)
    server = await startServer(reactor, root, "plain", None)
    try:
        out, err, code = await runBftp("put", str(src), url(server, "/big.bin"))
        assert code == 0, err
        assert (root / "big.bin").read_bytes() == data
        assert commands == ["PUT /big.bin 1000000"]
        # A kept partial that is not the start of the file being sent.
        (root / (PARTIAL_PREFIX + "big.bin")).write_bytes(b"\0" * 500_000)
        out, err, code = await runBftp("put", str(src), url(server, "/big.bin"))
        assert code == 0, err
        assert (root / "big.bin").read_bytes() == data
        assert not (root / (PARTIAL_PREFIX + "big.bin")).exists()
        assert commands[1:] == ["PUT /big.bin 500000", "PUT /big.bin 0"]
    finally:
        globalLogPublisher.removeObserver(observe)
        await server.stop()


@pytest.mark.parametrize(
    "args, last",
    [
        (["--max-file-size", "-5"], "--max-file-size -5: must be at least 0"),
        (["--idle-timeout", "0"], "--idle-timeout 0: must be at least 1"),
        (["--max-per-address", "0"], "--max-per-address 0: must be at least 1"),
        (["--tls-port", "70000", "--user", "a:b"], "--tls-port 70000: must be a TCP port, 1 to 65535"),
        (["--listen", "tcp:notaport"], "--listen tcp:notaport: not a usable endpoint"),
        (["--listen", "bogus:1"], "--listen bogus:1: not a usable endpoint (Unknown endpoint type: 'bogus')"),
        (["--passwd", "missing-file"], "--passwd missing-file: no such file; create it with: coursenet-passwd missing-file NAME"),
        (["--tls-cert", "nope.pem", "--tls-key", "nope.key"], "--tls-cert nope.pem: no such file"),
        (["--tls-cert", "junk", "--tls-key", "junk"], "--tls-cert junk --tls-key junk: not a PEM certificate and its private key"),
        (["--root", "junk"], "--root junk: not a directory"),
        (["--quota", "lots"], "not a size: 'lots'"),
        (["--class-config", "missing.toml"], "missing.toml"),
    ],
)
def test_twistdRefusesBadOptionsInOneLine(tmp_path, args, last):
    """Each bad option stops twistd bftp before it listens: non-zero exit, no traceback, a last line naming the option."""
    (tmp_path / "junk").write_text("not pem\n")
    proc = subprocess.run(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "bftp", "--user", "a:b", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output
    assert last in output.strip().splitlines()[-1]


def test_passwdFromAPipe(tmp_path):
    """`echo pw | coursenet-passwd FILE NAME` saves the account; an empty pipe is one line and exit 2, no traceback."""
    from coursenet.accounts import readPasswordFile, verifyPassword

    path = tmp_path / "passwd"
    tool = os.path.join(BIN, "coursenet-passwd")
    proc = subprocess.run([tool, str(path), "alice"], input="pw one\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert verifyPassword("pw one", readPasswordFile(str(path))["alice"])
    proc = subprocess.run([tool, str(path), "bob"], input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("no password on standard input (pipe one line, or use --password-env)")


def test_anonymousQuickStartServesTheCurrentFolder(tmp_path):
    """`twistd -n bftp --anonymous` alone serves the current folder read-only, warns that it does, and logs clients as ADDRESS:PORT [user]."""
    import socket
    import time

    from coursenet.procs import freePort

    (tmp_path / "hello.txt").write_bytes(b"hi\n")
    port = freePort()
    proc = subprocess.Popen(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "bftp", "--anonymous", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        ls = subprocess.run(
            [os.path.join(BIN, "bftp"), "ls", f"bftp://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=60
        )
        put = subprocess.run(
            [os.path.join(BIN, "bftp"), "put", str(tmp_path / "hello.txt"), f"bftp://127.0.0.1:{port}/copy.txt"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=30)
    assert ls.returncode == 0 and "hello.txt" in ls.stdout
    assert put.returncode == 1 and put.stderr.startswith("bftp: 534 ")
    assert not (tmp_path / "copy.txt").exists()
    assert f"anonymous access is on: anyone who can connect reads everything in {tmp_path}" in log
    assert "127.0.0.1:" in log and "[anonymous] logged in" in log


def test_shellCompletesVerbsThenRemoteOrLocalPaths():
    """Tab completes a verb first, then server paths, and local paths where the verb takes them (put's first, get's second)."""
    from bftp.cli import Shell

    shell = Shell(client=None, args=None)
    remote = {".": ["notes.txt", "box/"], "box": ["a.bin", "b.bin"], "/": ["box/", "top.txt"]}.__getitem__
    local = {".": ["draft.txt", "src/"], "src": ["x.py"]}.__getitem__
    assert shell.completions("", 0, "", remote, local)[:3] == ["ls ", "cd ", "pwd "]
    assert shell.completions("m", 0, "m", remote, local) == ["mkdir ", "mv "]
    assert shell.completions("get no", 4, "no", remote, local) == ["notes.txt"]
    assert shell.completions("get box/", 4, "box/", remote, local) == ["box/a.bin", "box/b.bin"]
    assert shell.completions("cd /t", 3, "/t", remote, local) == ["/top.txt"]
    assert shell.completions("put d", 4, "d", remote, local) == ["draft.txt"]
    assert shell.completions("put src/", 4, "src/", remote, local) == ["src/x.py"]
    assert shell.completions("put draft.txt n", 14, "n", remote, local) == ["notes.txt"]
    assert shell.completions("get notes.txt s", 14, "s", remote, local) == ["src/"]
    assert shell.completions("ls nothere/", 3, "nothere/", remote, local) == []
