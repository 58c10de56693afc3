"""
The Dask engine: the coordinator's chunks run on a real dask.distributed
scheduler with two workers on 127.0.0.1, behind the same XML-RPC door.
"""

from __future__ import annotations

import pytest

from compute.series import formatScaled, leibnizChunk
from tests.compute_support import Coordinator, DaskCluster, waitFor


@pytest.fixture
def cluster(tmp_path):
    c = DaskCluster(str(tmp_path))
    yield c
    c.stop()


def test_daskEngineGivesTheExactResult(tmp_path, devCert, cluster):
    """twistd compute --engine dask:// with no AMP worker runs every chunk on the Dask cluster and gives the exact sum."""
    coordinator = Coordinator(str(tmp_path), *devCert, extra=["--engine", f"dask://127.0.0.1:{cluster.port}"])
    try:
        coordinator.start()
        s = coordinator.proxy()
        terms, chunk, digits = 1_000_000, 100_000, 60
        job = s.submit("leibniz", terms, chunk, digits)
        done = waitFor(s, job, lambda st: st["state"] in ("done", "failed"), timeout=120)
        assert done["state"] == "done" and done["chunks_done"] == 10
        assert s.result(job) == formatScaled(leibnizChunk(0, terms, digits), digits)
        from distributed import Client

        with Client(cluster.address, timeout=30) as client:
            prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        assert "computeChunk" in prefixes
    finally:
        coordinator.stop()
