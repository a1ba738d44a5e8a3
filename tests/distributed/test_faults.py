"""Faults of the multiprocess executor: a layout the model cannot be split into is refused
before any process starts; a worker that dies or hangs stops the engine with a clear error in
bounded time and leaves no process or shared memory behind; so does an engine process that is
interrupted or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from dist_utils import alive, build_model_folder, make_llm

from vllm_core.distributed.communicator import SingleRankCommunicator
from vllm_core.model_executor.layers.parallel_linear import qkv_shards


def test_indivisible_heads_are_refused_with_the_numbers(tmp_path):
    from vllm_core.engine.arg_utils import EngineArgs

    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128,
               hidden_size=72, intermediate_size=192, num_hidden_layers=2,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=64,
               rms_norm_eps=1e-5)                           # SmolLM2-135M's head counts
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    args = EngineArgs(model=str(tmp_path), load_format="dummy", tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"9 attention heads are not divisible by "
                                         r"tensor_parallel_size=2"):
        args.create_engine_config()
    args = EngineArgs(model=str(tmp_path), load_format="dummy", tensor_parallel_size=3)
    args.create_engine_config()                             # 9 / 3 and 3 / 3 divide
    args = EngineArgs(model=str(tmp_path), load_format="dummy", pipeline_parallel_size=3)
    with pytest.raises(ValueError, match="pipeline_parallel_size=3 exceeds the model's 2 "):
        args.create_engine_config()


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    def shards(rank: int, tp: int, heads: int = 8, kv: int = 2):
        return qkv_shards(heads, kv, 4, SingleRankCommunicator(rank=rank, ranks=list(range(tp))))

    for rank, kv_head in ((0, 0), (1, 0), (2, 1), (3, 1)):
        q, k, v, heads, kv_heads = shards(rank, 4)
        assert (heads, kv_heads) == (2, 1)
        assert (q.source_start, q.local_size) == (rank * 8, 8)
        assert (k.source_start, v.source_start, k.local_size) == (kv_head * 4, kv_head * 4, 4)
    q, k, v, heads, kv_heads = shards(1, 2)
    assert (heads, kv_heads, k.source_start) == (4, 1, 4)
    with pytest.raises(ValueError, match="tensor_parallel_size=3 exceeds the model's 2 key/value"):
        shards(0, 3, heads=6)


@pytest.fixture(scope="module")
def folder(model_root) -> str:
    path = os.path.join(model_root, "llama")
    return path if os.path.isdir(path) else build_model_folder(model_root, "llama")


def _generate(llm) -> None:
    from vllm_core import SamplingParams

    llm.generate([{"prompt_token_ids": [1, 2, 3]}],
                 SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)


def _assert_nothing_left(pids: list[int], shm_name: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and (any(alive(p) for p in pids)
                                           or os.path.exists(f"/dev/shm/{shm_name}")):
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)], "worker processes left behind"
    assert not os.path.exists(f"/dev/shm/{shm_name}"), "shared memory left behind"


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_dead_or_hung_worker_stops_the_engine_loudly(folder, fault, monkeypatch):
    from vllm_core.engine.mp_executor import WorkerFailure

    monkeypatch.setenv("VLLM_WORKER_STEP_TIMEOUT_S", "8")
    llm = make_llm(folder, tp=2)
    executor = llm.llm_engine.executor
    pids, shm_name = executor.pids, executor.ring.shm.name
    _generate(llm)                                   # healthy first
    executor.check_health()                          # the server's idle probe: all alive
    os.kill(pids[1], signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    start = time.monotonic()
    if fault == "killed":        # the probe sees the dead rank without a step
        with pytest.raises(WorkerFailure, match=r"worker rank 1 \(pid \d+\) exited"):
            while time.monotonic() - start < 10:
                executor.check_health()
                time.sleep(0.05)
    expected = (r"worker rank 1 \(pid \d+\) died with exit code -9" if fault == "killed"
                else r"no reply from worker rank 0 .* for 8 s: a worker hung")
    with pytest.raises(WorkerFailure, match=expected):
        _generate(llm)
    assert time.monotonic() - start < 30
    with pytest.raises(WorkerFailure):               # and it stays failed
        _generate(llm)
    llm.llm_engine.shutdown()
    _assert_nothing_left(pids, shm_name, within_s=10)


_SCRIPT = textwrap.dedent("""
    import faulthandler, signal, sys, time
    # Ctrl-C in a terminal reaches a foreground process whose Python installed its SIGINT
    # handler; a process started from a background job or a non-interactive launcher inherits
    # SIGINT ignored instead (Python then keeps it ignored, and the engine never sees the
    # signal). The test is about the engine, not about how the suite was launched.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1, all_threads=True)    # where it sits, if it hangs
    sys.path.insert(0, {tests!r})
    from dist_utils import make_llm
    if __name__ == "__main__":
        llm = make_llm({folder!r}, tp=2)
        ex = llm.llm_engine.executor
        print(" ".join(map(str, ex.pids)), ex.ring.shm.name, flush=True)
        from vllm_core import SamplingParams
        while True:
            llm.generate([{{"prompt_token_ids": [1, 2, 3]}}],
                         SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
            time.sleep(0.05)
""")


def _stacks_of(proc: subprocess.Popen, log_path: str) -> str:
    """The engine process's thread stacks (faulthandler on SIGUSR1) and the end of its log."""
    proc.send_signal(signal.SIGUSR1)
    time.sleep(2.0)
    with open(log_path, errors="replace") as f:
        return f.read()[-6000:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_engine_process_interrupted_or_killed_leaves_nothing(folder, sig, tmp_path):
    script = _SCRIPT.format(tests=os.path.dirname(__file__), folder=folder)
    log_path = str(tmp_path / "engine.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=log, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line, "the engine did not start"
        pids, shm_name = [int(p) for p in line[:-1]], line[-1]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        time.sleep(1.0)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the engine process did not exit within 30 s of {sig.name}; its "
                        f"threads and log:\n{_stacks_of(proc, log_path)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_nothing_left(pids, shm_name, within_s=20)


def _exit_after(started, seconds: float) -> None:
    started.set()
    time.sleep(seconds)


def test_a_rank_error_names_the_peer_that_is_still_dying():
    """A rank's error report (its collective saw a reset connection) can reach the executor
    before the killed peer's process has exited: the failure waits briefly for dying ranks
    (``PEER_DEATH_GRACE_S``), so it names the dead rank, not only the rank that noticed."""
    import multiprocessing

    from vllm_core.engine import mp_executor

    ctx = multiprocessing.get_context("spawn")
    started = [ctx.Event(), ctx.Event()]
    procs = [ctx.Process(target=_exit_after, args=(started[0], 30)),
             ctx.Process(target=_exit_after, args=(started[1], 0.3))]
    for p in procs:
        p.start()
    ex = mp_executor.MultiprocExecutor.__new__(mp_executor.MultiprocExecutor)
    ex.procs = procs
    try:
        assert all(e.wait(60) for e in started)
        assert ex._dead_ranks() == ""                        # rank 1 is still running
        t0 = time.monotonic()
        ex._let_dying_ranks_exit()
        assert time.monotonic() - t0 < mp_executor.PEER_DEATH_GRACE_S + 0.5
        assert ex._dead_ranks().startswith(f"worker rank 1 (pid {procs[1].pid}) died")
    finally:
        for p in procs:
            p.kill()
            p.join(5)
