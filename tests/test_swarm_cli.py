"""
The swarm console script: create/show, refusals with a message and exit
status 1 (2 for a mistaken argument), and seed/get finding each other through the DHT alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest_twisted
from fastbencode import bencode
from twisted.internet import task

from swarm.cli import main
from tests.swarm_support import finish, sha256, spawn, stop, writeData

SWARM = os.path.join(os.path.dirname(sys.executable), "swarm")


def _run(*args, cwd=None):
    return subprocess.run([SWARM, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_createThenShow(tmp_path, capsys):
    """swarm create writes a .torrent that swarm show describes: name, length, piece count, announce."""
    writeData(str(tmp_path / "week1.pdf"), 100_000)
    assert main(["create", str(tmp_path / "week1.pdf"), "--tracker", "http://127.0.0.1:6969/announce",
                 "--piece-length", "32768"]) == 0
    assert "4 pieces" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "week1.pdf.torrent")]) == 0
    shown = capsys.readouterr().out
    assert "name: week1.pdf" in shown and "length: 100000" in shown
    assert "announce: http://127.0.0.1:6969/announce" in shown


def test_hostileTorrentRefusedWithReason(tmp_path, capsys):
    """A .torrent naming ../ is refused by show and get with the field and the reason, exit status 1, no traceback."""
    evil = bencode({b"info": {b"name": b"..", b"piece length": 1 << 14, b"length": 1, b"pieces": bytes(20)}})
    (tmp_path / "evil.torrent").write_bytes(evil)
    assert main(["show", str(tmp_path / "evil.torrent")]) == 1
    assert capsys.readouterr().err.startswith("swarm: info.name: '..' is not a file name")
    run = _run("get", "evil.torrent", "-o", "out", cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.startswith("swarm: info.name: '..' is not a file name")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_badPieceLengthRefused(tmp_path, capsys):
    """swarm create refuses a piece length that is not a power of two in range, saying which."""
    writeData(str(tmp_path / "f"), 10)
    assert main(["create", str(tmp_path / "f"), "--piece-length", "1000"]) == 1
    assert "a power of two" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_seedAndGetThroughDHT(reactor, tmp_path):
    """swarm get of a trackerless .torrent, bootstrapped from swarm seed's DHT node, downloads the file intact."""
    writeData(str(tmp_path / "paper.pdf"), 400_000)
    assert _run("create", str(tmp_path / "paper.pdf"), "-o", str(tmp_path / "paper.torrent")).returncode == 0
    seed = spawn(reactor, [SWARM, "seed", str(tmp_path / "paper.torrent"), "--data", str(tmp_path / "paper.pdf"),
                           "--dht-port", "0"])
    try:
        for _ in range(200):
            if b"seeding " in seed.output or seed.ended.called:
                break
            await task.deferLater(reactor, 0.05)
        port = re.search(rb"DHT node on 127\.0\.0\.1:(\d+)", seed.output)
        assert port and b"seeding " in seed.output, seed.output.decode(errors="replace")
        get = spawn(reactor, [SWARM, "get", str(tmp_path / "paper.torrent"), "-o", str(tmp_path / "dl"),
                              "--dht-bootstrap", f"127.0.0.1:{port.group(1).decode()}"])
        assert await finish(get, 60, reactor) == 0, get.output.decode(errors="replace")
        assert sha256(str(tmp_path / "dl" / "paper.pdf")) == sha256(str(tmp_path / "paper.pdf"))
    finally:
        await stop(seed)


def test_twistdSwarmOptionsRefuseMistakesWithReasons(tmp_path):
    """twistd swarm refuses no role, a missing --seed file, a bad endpoint and a seed with no tracker, each with its reason."""
    import pytest
    from twisted.python.usage import UsageError

    from swarm.tap import Options

    cases = [
        ([], "give --tracker ENDPOINT, --seed PATH, or both"),
        (["--tracker", "tcp:0", "--seed", str(tmp_path / "nope")], "no such file or directory"),
        (["--tracker", "bogus:1"], "--tracker bogus:1: not a usable endpoint"),
        (["--seed", str(tmp_path)], "--seed needs a tracker"),
        (["--tracker", "tcp:0", "--interval", "1"], "--interval 1: must be at least 10"),
    ]
    for args, reason in cases:
        with pytest.raises(UsageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            Options().parseOptions(args)


def test_argumentMistakesNameTheArgumentAndExit2(tmp_path):
    """A missing .torrent or data file, a bad --port, rate or bootstrap address: argparse's line naming the argument, exit 2."""
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(b"")
    cases = [
        (["seed", "nope.torrent", "--data", str(tmp_path)], "swarm seed: error: argument torrent: nope.torrent: no such file"),
        (["get", str(tmp_path), "-o", str(tmp_path)], f"swarm get: error: argument torrent: {tmp_path}: is a directory"),
        (["show", "nope.torrent"], "swarm show: error: argument torrent: nope.torrent: no such file"),
        (["seed", str(torrent), "--data", "nope.bin"], "swarm seed: error: argument --data: nope.bin: no such file or directory"),
        (["create", "nope.bin"], "swarm create: error: argument path: nope.bin: no such file or directory"),
        (["get", str(torrent), "--port", "70000"], "swarm get: error: argument --port: '70000' is not a port number"),
        (["get", str(torrent), "--port", "http"], "swarm get: error: argument --port: 'http' is not a port number"),
        (["seed", str(torrent), "--data", str(tmp_path), "--max-upload-rate", "fast"],
         "swarm seed: error: argument --max-upload-rate: 'fast' is not a rate"),
        (["get", str(torrent), "--dht-bootstrap", "198.18.0.1"],
         "swarm get: error: argument --dht-bootstrap: '198.18.0.1' is not HOST:PORT"),
    ]
    for args, line in cases:
        run = _run(*args, cwd=str(tmp_path))
        assert run.returncode == 2, (args, run.stderr)
        assert run.stderr.splitlines()[-1].startswith(line), (args, run.stderr)
        assert "Traceback" not in run.stderr and run.stdout == ""
