"""
C{concurrency-demo}, small: both services, every implementation but the
two extra reactors, 2 and 4 clients, half a second a point.
"""

from __future__ import annotations

import csv
import json
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
        for name in ("throughput.png", "latency_p99.png", "memory.png", "summary.png"):
            data = (out / service / name).read_bytes()
            assert data.startswith(PNG) and len(data) > 5000
        info = json.loads((out / service / "run.json").read_text())
        assert info["clients"] == [2, 4] and info["seconds"] == 0.5 and info["cpus"] == os.cpu_count()


def test_replotDrawsSlideFiguresWithACaption(tmp_path):
    """--replot draws the figures again from results.csv and run.json: 1600x1000 per measure, a 2400x1000 summary, the run in a caption."""
    from PIL import Image

    from coursenet.demo import caption, plot, readCSV, writeCSV

    rows = [
        {"implementation": impl, "clients": n, "throughput": 1000.0 + n, "p50_ms": 1.0, "p99_ms": 2.0 + n,
         "errors": 0, "rss_mb": 30.0, "cpu_s": 1.0}
        for impl in ("twisted-epoll", "threaded") for n in (10, 100, 1000)
    ]
    writeCSV(rows, str(tmp_path / "results.csv"))
    assert readCSV(str(tmp_path / "results.csv")) == rows
    info = {"seconds": 3, "clients": [10, 100, 1000], "cpus": 2, "cpu": "Test CPU", "python": "3.11.7",
            "commit": "abc1234", "date": "2026-12-01"}
    (tmp_path / "run.json").write_text(json.dumps(info))
    assert "10, 100, 1000 concurrent clients, 3 s a point; 2 CPUs (Test CPU)" in caption(info)
    assert "commit abc1234" in caption(info)
    run = subprocess.run(
        [os.path.join(BIN, "concurrency-demo"), "--service", "chat", "--replot", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    sizes = {name: Image.open(tmp_path / name).size for name in
             ("throughput.png", "latency_p99.png", "memory.png", "summary.png")}
    assert sizes == {"throughput.png": (1600, 1000), "latency_p99.png": (1600, 1000),
                     "memory.png": (1600, 1000), "summary.png": (2400, 1000)}


def test_dwarfedLinesGetAZoomedInset():
    """When one implementation's peak is over ZOOM_RATIO times another's (forking memory), the others are drawn again in an inset on their own scale; comparable lines get none."""
    from coursenet.demo import ZOOM_RATIO, _drawMeasure, _pyplot

    pyplot = _pyplot()
    rows = [
        {"implementation": impl, "clients": n, "rss_mb": mb * n}
        for impl, mb in (("twisted-epoll", 0.05), ("threaded", 0.06), ("forking", 0.06 * ZOOM_RATIO * 2))
        for n in (10, 100, 1000)
    ]
    fig, ax = pyplot.subplots()
    _drawMeasure(ax, rows, "rss_mb", "memory", [10, 100, 1000])
    assert len(ax.child_axes) == 1
    inset = ax.child_axes[0]
    assert sorted(line.get_label() for line in inset.get_lines()) == ["threaded", "twisted-epoll"]
    assert "without forking" in inset.get_title()
    assert inset.get_ylim()[1] < 100
    pyplot.close(fig)
    fig, ax = pyplot.subplots()
    _drawMeasure(ax, [r for r in rows if r["implementation"] != "forking"], "rss_mb", "memory", [10, 100, 1000])
    assert ax.child_axes == []
    pyplot.close(fig)


def test_rejectsUnknownImplementation(tmp_path):
    """An unknown implementation is a usage error that names the known ones, before anything starts."""
    run = subprocess.run(
        [os.path.join(BIN, "concurrency-demo"), "--impl", "green-threads", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert run.returncode == 2 and "twisted-epoll" in run.stderr
    assert not list(tmp_path.iterdir())
