"""The Ray executor on a Ray cluster started beforehand with ``ray start --head`` (what a
multi-host deployment does on its head node), reached through ``RAY_ADDRESS``: greedy tokens
with TP=2 equal the single-rank engine's, twice in a row (shutdown leaves the cluster running
and frees every CPU the engine held); a cluster with too few CPUs for TP=2 is refused within
the start timeout, naming what it has; a driver refused for lack of the cluster's token
authentication is told the fix."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
from dist_utils import build_model_folder, make_llm
from test_parallel_equivalence import run

pytestmark = pytest.mark.slow         # a Ray head start and stop (~10-20 s on two cores)


def _ray_cli() -> str:
    local = os.path.join(os.path.dirname(sys.executable), "ray")
    return local if os.path.exists(local) else (shutil.which("ray") or "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(monkeypatch, request):
    """A Ray head node of ``request.param`` CPUs in its own temp dir; ``RAY_ADDRESS`` is the
    address it prints for joining it. Stopped afterwards."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")   # short: Ray's socket paths must fit
    # Ray reads RAY_AUTH_MODE once per process, and this pytest process may have used Ray
    # already: a cluster without token authentication (the refusal is tested below)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    try:
        done = subprocess.run([_ray_cli(), "start", "--head", f"--port={_free_port()}",
                               f"--num-cpus={request.param}", "--num-gpus=0",
                               "--include-dashboard=false", f"--temp-dir={temp}",
                               "--disable-usage-stats"],
                              env=env, capture_output=True, text=True, timeout=120)
        joined = re.search(r"ray start --address='([^']+)'", done.stdout + done.stderr)
        assert done.returncode == 0 and joined, done.stdout[-2000:] + done.stderr[-2000:]
        monkeypatch.setenv("RAY_ADDRESS", joined.group(1))
        yield joined.group(1)
    finally:
        subprocess.run([_ray_cli(), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("ray_head", [2], indirect=True)
def test_tp2_on_a_cluster_started_with_ray_start(model_root, ray_head):
    folder = os.path.join(model_root, "llama")
    if not os.path.isdir(folder):
        folder = build_model_folder(model_root, "llama")
    reference = make_llm(folder, attention_backend="reference")
    try:
        want = run(reference)
    finally:
        reference.llm_engine.shutdown()
    for _ in range(2):      # the second engine needs every CPU the first one held: freed
        llm = make_llm(folder, tp=2, distributed_executor_backend="ray",
                       attention_backend="reference")
        try:
            executor = llm.llm_engine.executor
            assert type(executor).__name__ == "RayExecutor" and len(executor.pids) == 2
            assert [g[0] for g in run(llm)] == [w[0] for w in want]
        finally:
            llm.llm_engine.shutdown()


@pytest.mark.parametrize("ray_head", [1], indirect=True)
def test_a_cluster_too_small_is_refused_in_bounded_time(model_root, ray_head, monkeypatch):
    from vllm_core.engine.mp_executor import WorkerFailure

    monkeypatch.setenv("VLLM_WORKER_START_TIMEOUT_S", "15")
    folder = os.path.join(model_root, "llama")
    if not os.path.isdir(folder):
        folder = build_model_folder(model_root, "llama")
    with pytest.raises(WorkerFailure, match=r"cannot place 2 ranks of one CPU each within 15 s"):
        make_llm(folder, tp=2, distributed_executor_backend="ray",
                 attention_backend="reference")


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
