"""
Helpers for tests and benchmarks that run servers as subprocesses on
127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import time


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForPort(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    """
    Wait until something accepts connections on 127.0.0.1:C{port}.

    @raise RuntimeError: if C{proc} exits or C{timeout} seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}")
            time.sleep(0.1)


def stopProcess(proc: subprocess.Popen, timeout: float = 10) -> None:
    """
    SIGTERM C{proc}, then SIGKILL if it is still there after C{timeout}.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
