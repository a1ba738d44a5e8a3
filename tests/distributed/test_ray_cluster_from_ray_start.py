"""The Ray executor on a Ray cluster started beforehand with ``ray start --head`` (what a
multi-host deployment does on its head node), reached through ``RAY_ADDRESS``: greedy tokens
with TP=2 equal the single-rank engine's, twice in a row (shutdown leaves the cluster running
and frees every CPU the engine held); a cluster with too few CPUs for TP=2 is refused at
once, naming what it has; a driver refused for lack of the cluster's token
authentication is told the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dist_utils import build_model_folder, make_llm
from ray_local_cluster import LocalRayCluster
from test_parallel_equivalence import run

pytestmark = pytest.mark.slow         # a Ray head start and stop (~10-20 s on two cores)


@pytest.fixture
def ray_head(monkeypatch, request):
    """A Ray head node of ``request.param`` CPUs (``ray start --head`` in its own temp dir);
    ``RAY_ADDRESS`` is the address it prints for joining it. Its processes are ended
    afterwards (only its own: ``ray_local_cluster``)."""
    pytest.importorskip("ray")
    cluster = LocalRayCluster(head_cpus=request.param, node_cpus=())
    try:
        cluster.start()
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        yield cluster.address
    finally:
        assert cluster.stop() == []


# The engines run in a fresh driver process each: Ray keeps per-process state (the auth mode)
# that a Ray test earlier in this pytest process would leave. Its environment names the head's
# auth mode: an earlier ray.init() in this process sets RAY_AUTH_MODE=token in os.environ, and
# a token driver on this cluster loses its actors ("cancelled before it started running").
DRIVER = """
import json, os, sys
sys.path.insert(0, {here!r})
from dist_utils import make_llm
from test_parallel_equivalence import run
from vllm_core.engine.mp_executor import WorkerFailure
results = []
for _ in range({runs}):
    try:
        llm = make_llm({folder!r}, tp=2, distributed_executor_backend="ray",
                       attention_backend="reference")
    except WorkerFailure as e:
        results.append({{"error": str(e)}})
        break
    try:
        executor = llm.llm_engine.executor
        results.append({{"executor": type(executor).__name__, "pids": len(executor.pids),
                         "tokens": [g[0] for g in run(llm)]}})
    finally:
        llm.llm_engine.shutdown()
print("RESULT " + json.dumps(results))
"""


def _drive(folder: str, runs: int, timeout: float = 240.0) -> list[dict]:
    code = DRIVER.format(here=os.path.dirname(__file__), folder=folder, runs=runs)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def _folder(model_root: str) -> str:
    folder = os.path.join(model_root, "llama")
    return folder if os.path.isdir(folder) else build_model_folder(model_root, "llama")


@pytest.mark.parametrize("ray_head", [2], indirect=True)
def test_tp2_on_a_cluster_started_with_ray_start(model_root, ray_head):
    folder = _folder(model_root)
    reference = make_llm(folder, attention_backend="reference")
    try:
        want = [w[0] for w in run(reference)]
    finally:
        reference.llm_engine.shutdown()
    # twice in a row: the second engine needs every CPU the first one held, so its shutdown
    # freed them and left the cluster running
    got = _drive(folder, runs=2)
    assert [r.get("error") for r in got] == [None, None]
    for r in got:
        assert r["executor"] == "RayExecutor" and r["pids"] == 2
        assert r["tokens"] == want


@pytest.mark.parametrize("ray_head", [1], indirect=True)
def test_a_cluster_too_small_is_refused_at_once(model_root, ray_head, monkeypatch):
    """A cluster that can never hold the ranks is refused before the start timeout (here far
    longer than the driver's own timeout), naming what it has."""
    monkeypatch.setenv("VLLM_WORKER_START_TIMEOUT_S", "1000")
    got = _drive(_folder(model_root), runs=1)
    assert len(got) == 1
    assert ("cannot hold 2 ranks of one CPU each with placement strategy PACK: that needs "
            "2 CPU in all") in got[0]["error"]
    assert "): 1 CPU" in got[0]["error"]


def test_a_refused_token_is_explained(monkeypatch):
    """``ray start`` enables token authentication by default (Ray 2.60); a driver without
    ``RAY_AUTH_MODE=token`` gets Ray's ConnectionError over an AuthenticationError, which the
    executor turns into the fix in words (Ray caches the auth mode per process, so the real
    refusal cannot be replayed in this process: Ray's exception chain is rebuilt here)."""
    from vllm_core.engine import ray_executor

    class FakeRay:
        @staticmethod
        def init(**_):
            try:
                raise RuntimeError("Failed to connect to GCS. Last connection error: "
                                   "ray.exceptions.AuthenticationError: RPC error: "
                                   "InvalidAuthToken: Authentication token is missing")
            except RuntimeError as e:
                raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from e

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(ConnectionError, match=r"10\.0\.0\.1:6379 requires token .* "
                                              r"RAY_AUTH_MODE=token"):
        ray_executor._join_ray(FakeRay)
