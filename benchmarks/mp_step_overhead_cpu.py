"""Per-step host overhead of the ``mp`` executor against ``uni`` on the CPU: batch-1 greedy
decode of a tiny random Llama (so the forward is small and the plumbing shows), phases timed
in the engine process.

    python benchmarks/mp_step_overhead_cpu.py [--tokens 64 --vocab 32768]

Layouts, each in its own subprocess: ``uni`` (one rank in the engine process), ``mp-tp1`` (one
worker process: shared-memory ring, reply pipe), ``mp-tp2`` (two workers: plus the TP
all-reduces, the logits gather and the sampled-id broadcast); on request (``--layouts``)
``ray-tp2-1node`` and ``ray-tp2-2nodes``: two Ray actors on one node or on two nodes of a Ray
cluster started on this machine (the step message inside each actor call), and the same with
``-store`` (the step message through Ray's object store, as before). Steps run synchronously (async
scheduling off) so the phases add up: ``schedule_ms`` (``Scheduler.schedule``), ``submit_ms``
(``execute_model_async``: pickling and the ring write for ``mp``; the whole forward and
sampling for ``uni``), ``wait_ms`` (``result()``: for ``mp`` the workers' read, forward,
collectives, sampling and the reply), ``update_ms`` (``update_from_output`` and output
processing). Medians over the decode steps. One JSON line per layout, then a summary with the
``mp`` overhead per step (``step_ms`` minus ``uni``'s) and the load average: quote the
differences measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

RESULT = "MP_OVERHEAD "
DEFAULT_LAYOUTS = ("uni", "mp-tp1", "mp-tp2")
# layout: (tensor_parallel_size, executor, further LLM arguments, environment). The ray
# layouts run on a Ray cluster of two nodes of two CPUs on this machine, started by this
# script (tests/distributed/ray_local_cluster.py): both ranks on one node, or one rank per
# node; "-store": every step message through Ray's object store instead of inside the calls.
_PACK, _SPREAD = {"ray_placement_strategy": "STRICT_PACK"}, {"ray_placement_strategy":
                                                             "STRICT_SPREAD"}
_STORE = {"VLLM_RAY_INLINE_MAX_BYTES": "0"}
LAYOUTS: dict[str, tuple[int, str, dict[str, Any], dict[str, str]]] = {
    "uni": (1, "uni", {}, {}), "mp-tp1": (1, "mp", {}, {}), "mp-tp2": (2, "mp", {}, {}),
    "ray-tp2-1node": (2, "ray", _PACK, {}), "ray-tp2-2nodes": (2, "ray", _SPREAD, {}),
    "ray-tp2-1node-store": (2, "ray", _PACK, _STORE),
    "ray-tp2-2nodes-store": (2, "ray", _SPREAD, _STORE)}


def build_model(folder: str, vocab: int) -> None:
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    config = dict(vocab_size=vocab, hidden_size=128, intermediate_size=256,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, tie_word_embeddings=False)
    random_hf_causal_lm("llama", config, seed=0, weight_scale=0.05).save_pretrained(folder)
    write_wordlevel_tokenizer(folder, vocab)


def run_layout(args: argparse.Namespace) -> dict[str, Any]:
    from vllm_core import LLM, SamplingParams
    from vllm_core.engine.core import CoreStep

    tp, backend, extra, _ = LAYOUTS[args.layout]
    llm = LLM(args.folder, dtype="float32", max_model_len=256, max_num_seqs=4, seed=0,
              enforce_eager=True, tensor_parallel_size=tp,
              distributed_executor_backend=backend, async_scheduling=False, **extra)
    engine = llm.llm_engine
    core = engine._in_process_core()
    sched, executor = engine.scheduler, engine.executor
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True,
                            detokenize=False)
    phases: dict[str, list[float]] = {k: [] for k in ("schedule", "submit", "wait", "update")}
    tokens: list[int] = []
    for rep in range(2):                       # the first round warms up
        engine.add_request(f"r{rep}", {"prompt_token_ids": list(range(1, 17))}, params)
        step = 0
        while engine.has_unfinished_requests():
            t0 = time.perf_counter()
            so = sched.schedule()
            t1 = time.perf_counter()
            pending = executor.execute_model_async(so)
            t2 = time.perf_counter()
            out = pending.result()
            t3 = time.perf_counter()
            collected = CoreStep()
            core._collect(collected, so, out, t0)        # update_from_output and stats
            for o in engine.output_processor.process_outputs(
                    collected.outputs, time.time()).request_outputs:
                if o.finished and rep:
                    tokens = list(o.outputs[0].token_ids)
            t4 = time.perf_counter()
            step += 1
            if rep and step > 1:               # decode steps of the measured round
                for k, a, b in (("schedule", t0, t1), ("submit", t1, t2), ("wait", t2, t3),
                                ("update", t3, t4)):
                    phases[k].append(1e3 * (b - a))
    res: dict[str, Any] = {"bench": "mp_step_overhead_cpu", "layout": args.layout,
                           "tensor_parallel_size": tp, "backend": backend,
                           "vocab": args.vocab, "decode_steps": len(phases["wait"])}
    for k, v in phases.items():
        res[f"{k}_ms"] = round(statistics.median(v), 4)
    res["step_ms"] = round(sum(res[f"{k}_ms"] for k in phases), 4)
    res["tokens_hash"] = hash(tuple(tokens)) & 0xFFFFFFFF
    engine.shutdown()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--layouts", default=",".join(DEFAULT_LAYOUTS),
                   help=f"comma list of {', '.join(LAYOUTS)}")
    p.add_argument("--layout", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.layout:
        print(RESULT + json.dumps(run_layout(args)), flush=True)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pp_micro_batching_cpu import cpu_facts

    facts = {**cpu_facts(), "load_avg_before": os.getloadavg()}
    lines: dict[str, dict[str, Any]] = {}
    layouts = args.layouts.split(",")
    cluster = None
    env = dict(os.environ)
    if any(LAYOUTS[name][1] == "ray" for name in layouts):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "tests", "distributed"))
        from ray_local_cluster import LocalRayCluster

        cluster = LocalRayCluster(head_cpus=0, node_cpus=(2, 2)).start()
        env = {**{k: v for k, v in env.items() if not k.startswith("RAY_")},
               "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled"}
    try:
        run_layouts(args, layouts, env, facts, lines)
    finally:
        if cluster is not None:
            cluster.stop()
    summary: dict[str, Any] = {"bench": "mp_step_overhead_cpu_summary", **facts,
                               "load_avg_after": os.getloadavg()}
    if "uni" in lines:
        for name, line in lines.items():
            if name != "uni":
                summary[f"{name}_overhead_ms"] = round(line["step_ms"] - lines["uni"]["step_ms"],
                                                       4)
                summary[f"{name}_same_tokens"] = line["tokens_hash"] == lines["uni"]["tokens_hash"]
    print(json.dumps(summary), flush=True)


def run_layouts(args: argparse.Namespace, layouts: list[str], env: dict[str, str],
                facts: dict[str, Any], lines: dict[str, dict[str, Any]]) -> None:
    """Each layout in its own subprocess; its JSON line printed and kept in ``lines``."""
    with tempfile.TemporaryDirectory() as folder:
        build_model(folder, args.vocab)
        for layout in layouts:
            cmd = [sys.executable, __file__, "--layout", layout, "--folder", folder,
                   "--tokens", str(args.tokens), "--vocab", str(args.vocab)]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**env, **LAYOUTS[layout][3]})
            got = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
            if not got:
                print(json.dumps({"bench": "mp_step_overhead_cpu", "layout": layout,
                                  "error": proc.stderr[-2000:]}), flush=True)
                continue
            lines[layout] = json.loads(got[0][len(RESULT):])
            print(json.dumps({**lines[layout], **facts}), flush=True)


if __name__ == "__main__":
    main()
