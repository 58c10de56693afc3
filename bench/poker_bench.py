"""
Poker benchmark: tables of six bots against C{twistd poker} and against its
threaded twin (C{poker-threaded}, one thread per connection, the same
protocol and table code), in the same run.

Two loads, each server a separate process on 127.0.0.1, the bots (and one
spectator per table, which checks every hand's commitment and chips) in
this process on one reactor:

 - **flat out**: 100 tables, no pause between hands, bots act the moment
   their turn comes: hands per second the server sustains, and the
   latency from a bot's action to the next TURN (or the hand's END) it
   sees;
 - **capacity**: 100 tables (600 seated bots) thinking 0 to 1 s before
   acting (0.5 s on average), then 1000 tables (6000 bots) thinking 0 to
   4 s (2 s on average, a quick human), both with the server's default
   2 s between hands: hands per second, p50/p99 action-to-turn latency,
   and server memory per seated player (RSS with the bots seated minus
   RSS before any connection, over the number of bots).

Every phase is bounded in time; a failed check (commitment, chips) fails
the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
from twisted.internet import defer, task

from coursenet.procs import freePort, stopProcess, waitForPort
from poker.bot import runBots

BIN = os.path.dirname(sys.executable)
PLAY = 20.0  # seconds of play measured per case
BOTS_PER_TABLE = 6


def startServer(kind: str, port: int, db: str, pause: float) -> subprocess.Popen:
    common = [
        "--guests", "--db", db, "--pause", str(pause), "--clock", "30",
        "--max-connections", "15000", "--max-per-address", "15000", "--max-tables", "5000",
    ]
    if kind == "twistd":
        cmd = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "-l", db + ".log", "poker",
               "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024", *common]
    else:
        cmd = [os.path.join(BIN, "poker-threaded"), "--listen", f"127.0.0.1:{port}", *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waitForPort(port, proc)
    return proc


async def case(reactor: Any, kind: str, tables: int, pause: float, think: float, tmp: str) -> dict:
    port = freePort()
    db = os.path.join(tmp, f"{kind}-{tables}-{pause}.sqlite")
    proc = startServer(kind, port, db, pause)
    server = psutil.Process(proc.pid)
    try:
        await task.deferLater(reactor, 0.5, lambda: None)
        idle = server.memory_info().rss
        seatedRss: list[int] = []
        cpu: list[float] = []

        def seated() -> None:
            seatedRss.append(server.memory_info().rss)
            times = server.cpu_times()
            cpu.append(times.user + times.system)

        began = time.monotonic()
        stats = await runBots(
            reactor, "127.0.0.1", port, tables * BOTS_PER_TABLE, tables, 1 << 60, "random", think,
            prefix=f"b{tables}", timeout=600, connectAtOnce=50, duration=PLAY, onSeated=seated,
        )
        times = server.cpu_times()
        serverCpu = times.user + times.system - cpu[0]
        return {
            "server": kind,
            "tables": tables,
            "bots": tables * BOTS_PER_TABLE,
            "pause": pause,
            "think": think,
            "hands/s": stats.hands / stats.seconds,
            "p50 ms": stats.percentile(50) * 1000,
            "p99 ms": stats.percentile(99) * 1000,
            "KiB/player": (seatedRss[0] - idle) / 1024 / (tables * BOTS_PER_TABLE),
            "server CPU": serverCpu / stats.seconds,
            "setup s": time.monotonic() - began - stats.seconds,
            "failures": stats.failures,
            "verified": stats.verified,
            "hands": stats.hands,
        }
    finally:
        stopProcess(proc)


async def run(reactor: Any, results: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plan = [
            (100, 0.0, 0.0),
            (100, 2.0, 0.5),
            (1000, 2.0, 2.0),
        ]
        for tables, pause, think in plan:
            for kind in ("twistd", "threaded"):
                print(f"-- {kind}: {tables} tables, pause {pause:g} s, think {think:g} s", flush=True)
                try:
                    result = await case(reactor, kind, tables, pause, think, tmp)
                except Exception as e:  # a server that cannot take the load is a result too
                    result = {"server": kind, "tables": tables, "pause": pause, "think": think, "error": repr(e)}
                results.append(result)
                print(format(result), flush=True)


def format(r: dict) -> str:
    if "error" in r:
        return f"{r['server']:9} {r['tables']:5} tables: ERROR {r['error']}"
    return (
        f"{r['server']:9} {r['tables']:5} tables {r['bots']:5} bots pause={r['pause']:g} think={r['think']:g}:"
        f" {r['hands/s']:7.1f} hands/s  p50 {r['p50 ms']:7.1f} ms  p99 {r['p99 ms']:7.1f} ms"
        f"  {r['KiB/player']:6.1f} KiB/player  server CPU {r['server CPU']:.2f}  setup {r['setup s']:.0f} s"
        f"  verified {r['verified']}/{r['hands']}  failures {len(r['failures'])}"
    )


def main() -> int:
    results: list[dict] = []
    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, results)))
    except SystemExit as e:
        if e.code:
            print(f"poker bench: the load stopped with status {e.code}")
    print()
    print("| server | tables | bots | pause s | think s | hands/s | p50 ms | p99 ms | KiB/player | server CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['server']} | {r['tables']} | | {r['pause']:g} | {r['think']:g} | error: {r['error']} | | | | |")
            continue
        print(
            f"| {r['server']} | {r['tables']} | {r['bots']} | {r['pause']:g} | {r['think']:g} | {r['hands/s']:.1f}"
            f" | {r['p50 ms']:.1f} | {r['p99 ms']:.1f} | {r['KiB/player']:.1f} | {r['server CPU']:.2f} |"
        )
    pairs = {}
    for r in results:
        if "error" not in r:
            pairs.setdefault((r["tables"], r["pause"]), {})[r["server"]] = r
    for (tables, pause), p in pairs.items():
        if "twistd" in p and "threaded" in p and p["threaded"]["hands/s"]:
            print(
                f"{tables} tables, pause {pause:g}: twistd/threaded hands/s {p['twistd']['hands/s'] / p['threaded']['hands/s']:.2f},"
                f" p99 {p['twistd']['p99 ms']:.1f} vs {p['threaded']['p99 ms']:.1f} ms"
            )
    failed = any(r.get("failures") for r in results) or any("error" in r for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
