"""The Ray executor across nodes: a real Ray cluster of three nodes on this machine, started
with ``ray start`` as on several hosts (``ray_local_cluster``): a head without CPUs (where the
engine connects, like a head node without GPUs) and two nodes of two CPUs each at their own
addresses (127.0.0.2, 127.0.0.3), each declaring two GPUs.

* TP=2 with ``STRICT_SPREAD``: the two ranks on two different nodes (the step messages inside
  the actor calls); TP=2 x PP=2 with the default ``PACK``: each TP group (ranks 0-1, 2-3) on
  one node with device indices 0 and 1, the two pipeline stages on different nodes (the step
  messages through Ray's object store, ``VLLM_RAY_INLINE_MAX_BYTES=0``). Both: greedy
  tokens and logprobs equal the single-rank engine's, no rank on the head, the ``torch.distributed`` rendezvous is rank 0's
  node address (not the engine's node), and the actors got a setting made only in the
  engine's environment (``envs.ray_carried_env``: the raylets never had it).
* 4 ranks with ``STRICT_PACK`` (no node has four CPUs) are refused at once, naming every
  node's CPUs.
* Devices per node (on declared GPUs without hardware, a CPU platform that asks Ray for
  ``GPU``): two ranks packed on one node each see both GPUs Ray gave that node's ranks
  (``CUDA_VISIBLE_DEVICES=0,1``, where Ray had set each to its own) and use device index 0
  and 1.
* A host lost (every process of rank 1's node killed: its raylet, agents and actors): the
  next step stops the engine with ``WorkerFailure`` naming rank 1 first, and no actor
  process is left.
* A cluster that could hold two ranks but is busy (the driver holds three of its four CPUs)
  is refused after ``VLLM_WORKER_START_TIMEOUT_S``, saying what is free.

The engines run in one fresh driver process (Ray keeps per-process state); the fixture ends
every process of the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dist_utils import one_rank_reference
from ray_local_cluster import LocalRayCluster
from test_parallel_equivalence import run

pytestmark = pytest.mark.slow        # three raylets, a 2-rank and a 4-rank engine (~90 s)

DRIVER = """
import json, os, sys, time
sys.path.insert(0, {here!r})
import ray
from dist_utils import make_llm
from test_parallel_equivalence import run
from vllm_core.engine.mp_executor import WorkerFailure

def engine(**kw):
    t0 = time.monotonic()
    try:
        llm = make_llm({folder!r}, distributed_executor_backend="ray",
                       attention_backend="reference", **kw)
    except WorkerFailure as e:
        return {{"error": str(e), "elapsed_s": round(time.monotonic() - t0, 1)}}
    try:
        ex = llm.llm_engine.executor
        mark = ray.get([a.__ray_call__.remote(
            lambda self: os.environ.get("VLLM_TEST_RAY_CARRIED")) for a in ex.actors])
        out = run(llm)
        return {{"tokens": [g[0] for g in out], "logprobs": [g[1] for g in out],
                 "nodes": [s.node_id for s in ex.slots], "ips": [s.ip for s in ex.slots],
                 "local_ranks": [s.local_rank for s in ex.slots],
                 "init_method": ex.init_method, "mark": mark,
                 "driver_node": ray.get_runtime_context().get_node_id()}}
    finally:
        llm.llm_engine.shutdown()

os.environ["VLLM_TEST_RAY_CARRIED"] = "from-the-driver"
ray.init(include_dashboard=False)
results = {{"tp2_spread": engine(tp=2, ray_placement_strategy="STRICT_SPREAD")}}
os.environ["VLLM_RAY_INLINE_MAX_BYTES"] = "0"       # every step through the object store
results["tp2_pp2_pack"] = engine(tp=2, pp=2)
del os.environ["VLLM_RAY_INLINE_MAX_BYTES"]
os.environ["VLLM_WORKER_START_TIMEOUT_S"] = "600"
results["tp2_pp2_strict_pack"] = engine(tp=2, pp=2, ray_placement_strategy="STRICT_PACK")
from ray.util.placement_group import placement_group, remove_placement_group
held = placement_group([{{"CPU": 1}}] * 3)
ray.get(held.ready(), timeout=60)
os.environ["VLLM_WORKER_START_TIMEOUT_S"] = "5"
results["tp2_busy"] = engine(tp=2)
remove_placement_group(held)

# GPUs per node: the CPU platform asking Ray for GPU (Ray then sets CUDA_VISIBLE_DEVICES)
from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.engine.ray_executor import RayExecutor
config, platform = EngineArgs(model={folder!r}, tensor_parallel_size=2, dtype="float32",
                              distributed_executor_backend="ray", max_model_len=128,
                              attention_backend="reference",
                              num_gpu_blocks_override=48).create_engine_config()
FakeGpuPlatform = type("FakeGpuPlatform", (platform,), {{
    "ray_device_key": "GPU", "device_control_env_var": "CUDA_VISIBLE_DEVICES"}})
os.environ["VLLM_WORKER_START_TIMEOUT_S"] = "600"
ex = RayExecutor(config, FakeGpuPlatform)
try:
    results["tp2_gpus"] = {{
        "nodes": [s.node_id for s in ex.slots], "local_ranks": [s.local_rank for s in ex.slots],
        "visible": ray.get([a.__ray_call__.remote(
            lambda self: os.environ.get("CUDA_VISIBLE_DEVICES")) for a in ex.actors])}}
finally:
    ex.shutdown()

# a host lost: every process of rank 1's node is killed (its raylet and what it started)
import signal, psutil
llm = make_llm({folder!r}, tp=2, distributed_executor_backend="ray",
               attention_backend="reference", ray_placement_strategy="STRICT_SPREAD")
pids = list(llm.llm_engine.executor.pids)
try:
    raylet = psutil.Process(pids[1]).parent()
    for proc in [raylet, *raylet.children(recursive=True)]:     # the whole node, as a host
        os.kill(proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        run(llm)
        results["node_lost"] = {{"error": None}}
    except WorkerFailure as e:
        results["node_lost"] = {{"error": str(e), "elapsed_s": time.monotonic() - t0}}
finally:
    llm.llm_engine.shutdown()
time.sleep(3)
results["node_lost"]["actor_pids_alive"] = [p for p in pids if psutil.pid_exists(p)
    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
print("RESULT " + json.dumps(results))
"""


@pytest.fixture
def ray_cluster(monkeypatch):
    pytest.importorskip("ray")
    cluster = LocalRayCluster(head_cpus=0, node_cpus=(2, 2), node_gpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        assert left == [], f"Ray processes left: {left}"


def test_ranks_on_different_nodes_equal_one_rank(model_root, ray_cluster):
    folder, want = one_rank_reference(model_root, run)

    code = DRIVER.format(here=os.path.dirname(__file__), folder=folder)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
           "RAY_ADDRESS": ray_cluster.address, "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=420, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-6000:]
    got = json.loads(lines[-1][len("RESULT "):])

    for name in ("tp2_spread", "tp2_pp2_pack"):
        r = got[name]
        assert "error" not in r, (name, r)
        assert r["tokens"] == [w[0] for w in want], name
        for g, w in zip(r["logprobs"], [w[1] for w in want], strict=True):
            for gd, wd in zip(g, w, strict=True):
                assert sorted(int(t) for t in gd) == sorted(wd)
                assert all(abs(gd[str(t)] - wd[t]) < 1e-4 for t in wd)
        assert r["driver_node"] not in r["nodes"], name              # none on the head
        assert sorted(set(r["ips"])) == sorted(ray_cluster.node_ips), name
        assert r["init_method"].startswith(f"tcp://{r['ips'][0]}:"), name
        assert r["mark"] == ["from-the-driver"] * len(r["nodes"]), name
    spread = got["tp2_spread"]
    assert len(set(spread["nodes"])) == 2 and spread["local_ranks"] == [0, 0]
    packed = got["tp2_pp2_pack"]                        # rank = pp_rank * 2 + tp_rank
    nodes = packed["nodes"]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]      # a TP group per node
    assert packed["local_ranks"] == [0, 1, 0, 1]

    refused = got["tp2_pp2_strict_pack"]["error"]
    assert "cannot hold 4 ranks of one CPU each with placement strategy STRICT_PACK" in refused
    assert "one node with 4 CPU" in refused
    for ip in ray_cluster.node_ips:
        assert f"({ip}): 2 CPU" in refused
    gpus = got["tp2_gpus"]
    assert len(set(gpus["nodes"])) == 1 and sorted(gpus["local_ranks"]) == [0, 1]
    assert gpus["visible"] == ["0,1", "0,1"]
    lost = got["node_lost"]
    print("node lost:", lost["error"][:1500])
    assert "worker rank 1 (Ray actor) died" in lost["error"], lost
    assert lost["actor_pids_alive"] == [], lost
    print("node lost: engine stopped after", lost["elapsed_s"], "s")
    busy = got["tp2_busy"]["error"]
    assert "cannot place 2 ranks of one CPU each (strategy PACK) within 5 s" in busy
    assert "other work holds the resources (1 of 4 CPU free)" in busy
