"""
The compute service end to end, as users run it: C{twistd compute},
C{compute-worker} processes over TLS, Python's own C{xmlrpc.client}, and
the seed's C{bc} pipes as the reference.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import xmlrpc.client

import psutil
import pytest
import pytest_twisted
from twisted.web.xmlrpc import Fault

from compute.series import formatScaled, leibnizChunk
from tests.compute_support import Coordinator, bcPipes, waitFor


@pytest.fixture
def coordinator(tmp_path, devCert):
    c = Coordinator(str(tmp_path), *devCert)
    yield c
    c.stop()


def test_doneWhenOneLinerMatchesBcPipes(coordinator):
    """The issue's xmlrpc.client one-liner (at a tenth of its 4M terms, to keep bc's part short) prints the seed's bc pipes' digits."""
    coordinator.start()
    coordinator.worker(procs=2)
    oneLiner = (
        "import time, xmlrpc.client as x;"
        f" s=x.ServerProxy('http://127.0.0.1:{coordinator.rpcPort}/');"
        " j=s.submit('leibniz', 400000, 50000, 60);"
        " [time.sleep(0.1) for _ in iter(lambda: s.status(j)['state'] in ('done', 'failed'), True)];"
        " print(s.result(j))"
    )
    out = subprocess.run([sys.executable, "-c", oneLiner], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == bcPipes(400_000, 50_000, 60)


def test_stdlibClientFaultsAndMulticall(coordinator):
    """Through xmlrpc.client: bad arguments and unknown jobs are faults that say what is wrong; wait returns at its timeout or at once for a finished job; multicall answers each call in order."""
    coordinator.start()
    s = coordinator.proxy()
    with pytest.raises(xmlrpc.client.Fault) as e:
        s.submit("leibniz", 0, 1, 60)
    assert e.value.faultCode == 1 and "terms must be" in e.value.faultString
    with pytest.raises(xmlrpc.client.Fault) as e:
        s.submit("leibniz", 10)
    assert "takes 4 arguments, got 2" in e.value.faultString
    job = s.submit("leibniz", 1000, 100, 30)
    with pytest.raises(xmlrpc.client.Fault) as e:
        s.result(job)
    assert e.value.faultCode == 3 and "call status" in e.value.faultString
    assert s.wait(job, 0.2)["state"] == "queued"
    with pytest.raises(xmlrpc.client.Fault, match="seconds must be"):
        s.wait(job, 10_000)
    multi = xmlrpc.client.MultiCall(s)
    multi.status(job)
    multi.status(job + 99)
    multi.cancel(job)
    results = multi()
    first = results[0]
    assert first["job"] == job and first["chunks_total"] == 10 and first["state"] == "queued"
    with pytest.raises(xmlrpc.client.Fault) as e:
        results[1]
    assert e.value.faultCode == 2
    assert results[2] == "cancelled"
    assert s.status(job)["state"] == "cancelled" and s.wait(job, 60)["state"] == "cancelled"
    assert "submit" in s.system.listMethods()


def test_workerKilledMidJobResultStillExact(coordinator):
    """A worker SIGKILLed mid-job: its computing processes die with it, its chunks are issued again and the result is exact."""
    coordinator.start(leaseTimeout=30)
    s = coordinator.proxy()
    first = coordinator.worker(procs=1)
    terms, chunk, digits = 1_500_000, 50_000, 200
    job = s.submit("leibniz", terms, chunk, digits)
    before = waitFor(s, job, lambda st: st["chunks_done"] >= 2 and st["chunks_leased"] >= 1)
    computing = psutil.Process(first.pid).children(recursive=True)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    _, alive = psutil.wait_procs(computing, timeout=15)
    assert computing and not alive, "the dead worker's computing processes must not linger"
    assert before["state"] == "running" and before["chunks_done"] < before["chunks_total"]
    coordinator.worker(procs=2)
    done = waitFor(s, job, lambda st: st["state"] == "done", timeout=90)
    assert done["chunks_done"] == done["chunks_total"] == 30
    assert s.result(job) == formatScaled(leibnizChunk(0, terms, digits), digits)


def test_coordinatorKilledMidJobResumes(coordinator):
    """The coordinator SIGKILLed mid-job and started again on the same database: the job resumes from its kept chunks, the worker reconnects, the result is exact."""
    coordinator.start()
    s = coordinator.proxy()
    coordinator.worker(procs=1)
    terms, chunk, digits = 1_500_000, 50_000, 200
    job = s.submit("leibniz", terms, chunk, digits)
    before = waitFor(s, job, lambda st: st["chunks_done"] >= 3)
    coordinator.kill()
    assert before["state"] == "running"
    coordinator.start()
    resumed = coordinator.proxy().status(job)
    assert resumed["chunks_done"] >= before["chunks_done"] and resumed["state"] in ("running", "done")
    waitFor(coordinator.proxy(), job, lambda st: st["state"] == "done", timeout=90)
    assert coordinator.proxy().result(job) == formatScaled(leibnizChunk(0, terms, digits), digits)


def test_workerWithWrongTokenIsRefused(coordinator, tmp_path):
    """compute-worker with a wrong token is refused at login, says so, and exits with status 2."""
    coordinator.start()
    bad = tmp_path / "bad.token"
    bad.write_text("w1:wrong\n")
    p = coordinator.worker(tokenFile=str(bad))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert "login incorrect" in err


@pytest_twisted.ensureDeferred
async def test_asyncClientComputesAndSeesFaults(coordinator, reactor):
    """compute.client.ComputeClient (twisted.web.xmlrpc.Proxy) submits, waits with progress and gets the exact digits; a bad job is a Fault."""
    coordinator.start()
    coordinator.worker(procs=1)
    from compute.client import ComputeClient

    client = ComputeClient(coordinator.url, reactor=reactor)
    job = await client.submit("leibniz", 300_000, 30_000, 50)
    seen = []
    status = await client.wait(job, interval=0.05, progress=seen.append)
    assert status["state"] == "done" and seen[-1] == status
    assert await client.result(job) == formatScaled(leibnizChunk(0, 300_000, 50), 50)
    with pytest.raises(Fault, match="digits must be"):
        await client.compute("leibniz", 10, 10, 0)


def test_computeClientPrintsDigitsAndErrors(coordinator):
    """The compute console script submits, follows and prints the sum, pi, the error and the Euler-corrected sum with far more right decimals."""
    coordinator.start()
    coordinator.worker(procs=1)
    out = subprocess.run([f"{os.path.dirname(sys.executable)}/compute", "--server", coordinator.url, "--terms", "200000",
                          "--chunk", "50000", "--digits", "40"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines()[1:3])
    assert lines["sum"] == formatScaled(leibnizChunk(0, 200_000, 40), 40)
    assert "job " in out.stderr  # the progress bar
    right = [int(m) for m in re.findall(r"\((\d+) decimals right", out.stdout)]
    assert right[0] == 4 and right[1] >= 30
    bad = subprocess.run([f"{os.path.dirname(sys.executable)}/compute", "--server", coordinator.url, "--terms", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "terms must be" in bad.stderr
