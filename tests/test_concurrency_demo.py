"""
C{concurrency-demo}, small: both services, every implementation but the
two extra reactors, 2 and 4 clients, half a second a point.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from coursenet.demo import COLUMNS

BIN = os.path.dirname(sys.executable)
PNG = b"\x89PNG\r\n\x1a\n"


def test_smallRunWritesCSVAndFigures(tmp_path):
    """A small run writes, per service, results.csv with the exact columns and a row per point, and three PNGs."""
    impls = ["twisted-epoll", "threaded", "forking"]
    out = tmp_path / "out"
    run = subprocess.run(
        [os.path.join(BIN, "concurrency-demo"), "--service", "chat,bftp", "--clients", "2,4",
         "--impl", ",".join(impls), "--seconds", "0.5", "--out", str(out)],
        capture_output=True, text=True, timeout=150,
    )
    assert run.returncode == 0, run.stderr
    for service in ("chat", "bftp"):
        with open(out / service / "results.csv", newline="") as f:
            reader = csv.reader(f)
            assert tuple(next(reader)) == COLUMNS
            rows = [dict(zip(COLUMNS, row)) for row in reader]
        assert [(r["implementation"], int(r["clients"])) for r in rows] == [(i, n) for i in impls for n in (2, 4)]
        for r in rows:
            assert float(r["throughput"]) > 0 and int(r["errors"]) == 0
            assert 0 < float(r["p50_ms"]) <= float(r["p99_ms"])
            assert float(r["rss_mb"]) > 5 and float(r["cpu_s"]) >= 0
        for name in ("throughput.png", "latency_p99.png", "memory.png"):
            data = (out / service / name).read_bytes()
            assert data.startswith(PNG) and len(data) > 5000


def test_rejectsUnknownImplementation(tmp_path):
    """An unknown implementation is a usage error that names the known ones, before anything starts."""
    run = subprocess.run(
        [os.path.join(BIN, "concurrency-demo"), "--impl", "green-threads", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert run.returncode == 2 and "twisted-epoll" in run.stderr
    assert not list(tmp_path.iterdir())
