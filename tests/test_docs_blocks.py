"""
Every code block in README.md and docs/*.md runs as written (issue 13),
against the servers C{make run} starts, from a folder laid out as a fresh
checkout after C{make run} (C{.venv}, C{var/}).

Which blocks run, by their markdown alone:

 - a fenced block marked C{python} is a script: run with the project's
   Python, it must exit 0;
 - a fenced block marked C{sh}, and an indented block whose first word
   (after C{NAME=value} settings) is a program on the PATH (C{.venv/bin}
   first) or one of L{SHELL_WORDS}, is a shell block: run with C{sh -e},
   it must exit 0.  A shell block that starts a server (C{twistd -n},
   C{*-threaded}) must listen on every port it names, on loopback only,
   leave no C{twistd.pid} (so servers run side by side from one folder)
   and print no traceback; one that starts a worker (C{compute-worker})
   must still run after a few seconds;
 - every other block (a fence with no or another info string, an indented
   transcript, grammar or diagram) is not a command and is not run;
 - a command block right after C{<!-- not run: WHY -->} is not run, and
   WHY says why (it takes minutes, needs a remote host, changes the host's
   routing).  A marker before a block that is not a command is an error.

Shell blocks get the demo account's password only where they read it
themselves (C{$(cat var/demo-password)}), and no terminal: stdin is empty.
The blocks of one C{## } section run in their order; sections, which need
only C{make run}'s servers, run side by side, and so do server blocks that
name no port in common.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
SHELL_WORDS = {"export", "cd", "mkdir", "echo", "printf"}
SERVER_PROGRAMS = {"twistd", "chat-threaded", "bftp-threaded", "grades-threaded"}
WORKER_PROGRAMS = {"compute-worker"}
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


@dataclass
class Block:
    path: str
    line: int
    info: str | None  # the fence's info string; None for an indented block
    text: str
    notRun: str | None  # the reason of a <!-- not run: --> marker
    section: str = ""  # the "## " heading it is under

    def __str__(self) -> str:
        return f"{os.path.relpath(self.path, ROOT)}:{self.line}"


def extractBlocks(path: str) -> list[Block]:
    """
    The fenced and indented code blocks of a markdown file, each with the
    marker that precedes it.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks = []
    previous = ""  # the last non-blank line before the current one
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(```+|~~~+)\s*(\S*)", line)
        marker = NOT_RUN.match(previous.strip())
        reason = marker.group(1) if marker else None
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].startswith(fence.group(1)):
                end += 1
            blocks.append(Block(path, i + 1, fence.group(2), "\n".join(lines[i + 1:end]) + "\n", reason, section))
            previous, i = "```", end + 1
            continue
        if line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()) and not isListItem(previous):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = [l[4:] for l in lines[i:end]]
            while body and not body[-1].strip():
                body.pop()
            blocks.append(Block(path, i + 1, None, "\n".join(body) + "\n", reason, section))
            previous, i = body[-1], end
            continue
        if line.startswith("## "):
            section = line
        if line.strip():
            previous = line
        i += 1
    return blocks


def isListItem(line: str) -> bool:
    """
    Whether C{line} belongs to a list, whose indented paragraphs are not code.
    """
    return bool(re.match(r"^\s*([-*+]|\d+\.)\s", line)) or line.startswith("  ")


def commands(text: str) -> list[list[str]]:
    """
    The words of each command of a shell block (continuation lines joined,
    comments dropped), the leading C{NAME=value} settings left out.
    """
    out = []
    for command in text.replace("\\\n", " ").splitlines():
        words = command.split("#", 1)[0].split() if not command.lstrip().startswith("printf") else command.split()
        while words and ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def program(words: list[str]) -> str:
    return os.path.basename(words[0])


def kind(block: Block) -> str | None:
    """
    C{"python"}, C{"shell"}, or L{None} for a block that is not a command.
    """
    if block.info is not None:
        return {"python": "python", "sh": "shell"}.get(block.info)
    cmds = commands(block.text)
    if not cmds:
        return None
    first = cmds[0][0]
    path = VENV_BIN + os.pathsep + os.environ.get("PATH", "")
    if first in SHELL_WORDS or first.startswith(".venv/bin/") or shutil.which(first, path=path):
        return "shell"
    return None


def role(block: Block) -> str:
    """
    C{"server"}, C{"worker"} or C{"client"}: how a command block is run.
    """
    names = {program(words) for words in commands(block.text)}
    if names & SERVER_PROGRAMS:
        return "server"
    if names & WORKER_PROGRAMS:
        return "worker"
    return "client"


def documents() -> list[str]:
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def allBlocks() -> list[Block]:
    return [b for path in documents() for b in extractBlocks(path)]


def test_blockRuleReadsCommandsTranscriptsAndMarkers(tmp_path):
    """The rule: python fences and program-led indented blocks run, transcripts do not, a marker skips and needs a reason."""
    doc = tmp_path / "d.md"
    doc.write_text(
        "Text.\n\n    .venv/bin/twistd -n --pidfile= bftp \\\n        --anonymous\n\n"
        "Then:\n\n    C: HELLO BFTP/1\n    S: 200 ok\n\n"
        "<!-- not run: takes minutes -->\n\n    make bench\n\n"
        "```python\nprint(1)\n```\n\n```\nS: 220 ready\n```\n\n"
        "- a list item\n\n    still the item\n"
    )
    blocks = extractBlocks(str(doc))
    assert [(b.line, kind(b), b.notRun) for b in blocks] == [
        (3, "shell", None), (8, None, None), (13, "shell", "takes minutes"), (15, "python", None), (19, None, None),
    ]
    assert role(blocks[0]) == "server" and role(blocks[2]) == "client"


def test_everyMarkerStandsBeforeACommandAndSaysWhy():
    """A <!-- not run: --> marker gives a reason and precedes a block that would otherwise run."""
    for block in allBlocks():
        if block.notRun is not None:
            assert block.notRun, f"{block}: the marker gives no reason"
            assert kind(block), f"{block}: marked not run but is not a command"


class Folder:
    """
    A fresh checkout's folder after C{make run}: C{.venv} linked to this
    one, C{var/} made by C{coursenet.devrun}, a home of its own.
    """

    def __init__(self, tmp_path):
        self.cwd = tmp_path / "work"
        self.home = tmp_path / "home"
        self.cwd.mkdir()
        self.home.mkdir()
        os.symlink(os.path.dirname(VENV_BIN), self.cwd / ".venv")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_PASSWORD") and k != "COURSENET_LOG_FILE"},
            "HOME": str(self.home),
            "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        }

    def popen(self, block: Block, **kw) -> subprocess.Popen:
        argv = [sys.executable, "-c", block.text] if kind(block) == "python" else ["sh", "-e", "-c", block.text]
        return subprocess.Popen(
            argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw,
        )


def stopGroup(proc: subprocess.Popen) -> str:
    """
    Stop a block's process group (as Ctrl-C in its terminal would) and
    return what it printed.
    """
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


def listening(proc: subprocess.Popen) -> set[tuple[str, int]]:
    """
    The TCP addresses the processes of C{proc}'s tree listen on.
    """
    found = set()
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in tree:
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found.add((c.laddr.ip, c.laddr.port))
        except psutil.NoSuchProcess:
            pass
    return found


def namedPorts(text: str) -> set[int]:
    """
    The ports a server block names: endpoint strings, C{--tls-port}, and
    the twins' C{--listen HOST:PORT}.
    """
    joined = text.replace("\\\n", " ")
    ports = {int(p) for p in re.findall(r"(?:^|[\s=])(?:tcp|ssl):(\d+)", joined)}
    ports |= {int(p) for p in re.findall(r"--tls-port[ =](\d+)", joined)}
    ports |= {int(p) for p in re.findall(r"--listen[ =][\w.:\[\]]*:(\d+)(?:\s|$)", joined)}
    return ports


def beyondLoopback(addresses: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """
    The listening addresses that are not on loopback (a wildcard included).
    """
    import ipaddress

    return {(ip, port) for ip, port in addresses if not ipaddress.ip_address(ip).is_loopback}


def runServer(folder: Folder, block: Block) -> None:
    """
    Start a server block, wait until it listens on every port it names (on
    loopback), then stop it.
    """
    proc = folder.popen(block)
    expected = namedPorts(block.text)
    seen: set[tuple[str, int]] = set()
    pidfile = False
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            seen = listening(proc)
            ports = {port for _, port in seen}
            if ports and expected <= ports:
                time.sleep(0.3)
                seen = listening(proc)
                # twistd removes its pid file when it stops: look while it runs.
                pidfile = (folder.cwd / "twistd.pid").exists()
                break
            time.sleep(0.2)
    finally:
        out = stopGroup(proc)
    assert seen and expected <= {port for _, port in seen}, f"{block} did not listen on {sorted(expected)}:\n{out}"
    assert not beyondLoopback(seen), f"{block} listens beyond loopback: {sorted(beyondLoopback(seen))}"
    assert "Traceback" not in out, f"{block}:\n{out}"
    assert not pidfile, f"{block} (or one beside it) wrote twistd.pid: add --pidfile= to run beside others"


def runWorker(folder: Folder, block: Block) -> None:
    """
    Start a worker block; it must still be running after 3 seconds.
    """
    proc = folder.popen(block)
    time.sleep(3)
    alive = proc.poll() is None
    out = stopGroup(proc)
    assert alive, f"{block} exited with {proc.returncode}:\n{out}"
    assert "Traceback" not in out, f"{block}:\n{out}"


def runClient(folder: Folder, block: Block) -> None:
    proc = folder.popen(block)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        out = stopGroup(proc)
        pytest.fail(f"{block} still running after 60 s:\n{out}")
    assert proc.returncode == 0, f"{block} exited with {proc.returncode}:\n{block.text}\n--- output:\n{out}"
    assert "Traceback" not in out, f"{block}:\n{out}"


@pytest.fixture
def makeRun(tmp_path):
    """
    C{make run}'s servers, started by C{coursenet.devrun} in a fresh folder.
    """
    folder = Folder(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "coursenet.devrun"], cwd=folder.cwd, env=folder.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Every server listens."):
                break
        assert lines and lines[-1].startswith("Every server listens."), "".join(lines)
        yield folder, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def runSection(folder: Folder, blocks: list[Block]) -> None:
    """
    The client and worker blocks of one section, in their order.
    """
    for block in blocks:
        if role(block) == "worker":
            runWorker(folder, block)
        else:
            runClient(folder, block)


def serverBatches(servers: list[Block]) -> list[list[Block]]:
    """
    Server blocks in batches that can run at once: no two in a batch name
    a port in common, and one that names none (a default port) runs alone.
    """
    batches: list[tuple[set[int], list[Block]]] = []
    for block in servers:
        ports = namedPorts(block.text)
        for taken, batch in batches:
            if ports and taken and not (ports & taken):
                taken |= ports
                batch.append(block)
                break
        else:
            batches.append((set(ports), [block]))
    return [batch for _, batch in batches]


def test_serverBatchesShareNoPort():
    """Servers are batched only when their named ports are disjoint; one naming no port runs alone."""
    def server(text):
        return Block("x.md", 1, None, text, None)

    a, b, c, d = (server(".venv/bin/twistd -n --pidfile= bftp --listen tcp:9021"),
                  server(".venv/bin/twistd -n --pidfile= chat --listen tcp:6665 --tls-port 6666"),
                  server(".venv/bin/twistd -n --pidfile= bftp --anonymous"),
                  server(".venv/bin/bftp-threaded --listen 127.0.0.1:9021"))
    assert serverBatches([a, b, c, d]) == [[a, b], [c], [d]]


def test_everyDocumentedBlockRuns(makeRun):
    """Each python and command block of README.md and docs/*.md runs as written against make run's servers."""
    from concurrent.futures import ThreadPoolExecutor

    folder, devrun = makeRun
    runnable = [b for b in allBlocks() if kind(b) and b.notRun is None]
    assert len(runnable) >= 15, [str(b) for b in runnable]
    # The sections are independent (each needs only make run's servers):
    # they run side by side, the blocks of one in their order.
    sections: dict[tuple[str, str], list[Block]] = {}
    for block in runnable:
        if role(block) != "server":
            sections.setdefault((block.path, block.section), []).append(block)
    with ThreadPoolExecutor(3) as pool:
        for done in [pool.submit(runSection, folder, blocks) for blocks in sections.values()]:
            done.result()
    # The documented servers take make run's ports: they run once it stops.
    devrun.send_signal(signal.SIGINT)
    devrun.communicate(timeout=60)
    for batch in serverBatches([b for b in runnable if role(b) == "server"]):
        with ThreadPoolExecutor(len(batch)) as pool:
            for done in [pool.submit(runServer, folder, block) for block in batch]:
                done.result()


def test_serverCheckRefusesAServerWithoutPidfileOption(tmp_path):
    """A server block without --pidfile= fails the check; a good one passes."""
    from coursenet.procs import freePort

    folder = Folder(tmp_path)
    port = freePort()
    good = f".venv/bin/twistd -n --pidfile= bftp --anonymous --listen tcp:{port}:interface=127.0.0.1\n"
    runServer(folder, Block("x.md", 1, None, good, None))
    with pytest.raises(AssertionError, match="wrote twistd.pid"):
        runServer(folder, Block("x.md", 2, None, good.replace(" --pidfile=", ""), None))


def test_beyondLoopbackFindsWildcardsAndOtherAddresses():
    """Wildcard and other addresses are beyond loopback; 127.0.0.0/8 and ::1 are not."""
    seen = {("127.0.0.1", 1), ("127.0.0.2", 2), ("::1", 3), ("0.0.0.0", 4), ("::", 5), ("198.18.0.1", 6)}
    assert beyondLoopback(seen) == {("0.0.0.0", 4), ("::", 5), ("198.18.0.1", 6)}
