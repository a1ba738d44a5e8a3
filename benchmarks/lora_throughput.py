"""Multi-LoRA offline throughput against the base model, in one run (JSON lines).

Each configuration runs in its own subprocess, one after another, on the same random-token
prompts (``ignore_eos``, exactly ``output_len`` tokens each); requests are spread round-robin
over the adapters. Systems:

- ``base``: the base model, LoRA off;
- ``lora-resident``: ``--enable-lora --max-loras N`` with N rank-``rank`` adapters (all slots
  resident, no swapping);
- ``lora-swap``: ``--max-loras --swap-slots`` with ``--swap-adapters`` adapters (slots are
  swapped between steps; the scheduler admits at most ``max_loras`` adapters at once).

A suffix picks the batched-LoRA kernel (``--lora-kernel``): ``lora-resident-dense`` (torch,
every slot), ``lora-resident-sgmv`` (Triton), ``lora-resident-segment`` (torch, host);
without one the platform's default.

Adapters target q/k/v/o/gate/up/down of every layer, random A and non-zero B (written by
``vllm_core.lora.testing.write_random_adapter`` under ``--adapter-dir``; no network). The last
line per workload is a summary with ``ratio_vs_base`` of each LoRA system's output tok/s.

    python benchmarks/lora_throughput.py --shape cpu-small           # the CPU, small scale
    python benchmarks/lora_throughput.py --shape gpu-8b --output o.jsonl   # H200, 8B shape
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULT = "LORA_RESULT "

SHAPES = {   # requests, prompt_len, output_len, resident adapters, swap adapters, swap slots
    "cpu-small": dict(requests=16, prompt_len=32, output_len=16, adapters=4, swap_adapters=8,
                      swap_slots=2, rank=16, dtype="float32"),
    "gpu-8b": dict(requests=256, prompt_len=512, output_len=256, adapters=8, swap_adapters=16,
                   swap_slots=4, rank=16, dtype="bfloat16"),
}


def _prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(10, vocab - 10, size=(n, length)).tolist()


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One system in this process."""
    from vllm_core import LLM, LoRARequest, SamplingParams
    from vllm_core.lora.testing import write_random_adapter

    s = SHAPES[args.shape]
    system = args.run
    kind, _, kernel = system.partition("-")[2].partition("-")   # lora-<kind>[-<kernel>]
    num_adapters = {"resident": s["adapters"], "swap": s["swap_adapters"]}.get(kind, 0)
    max_loras = {"resident": s["adapters"], "swap": s["swap_slots"]}.get(kind, 1)
    kw: dict[str, Any] = dict(dtype=s["dtype"], max_model_len=s["prompt_len"] + s["output_len"],
                              seed=0)
    if args.shape == "gpu-8b":
        sys.path.insert(0, str(HERE))
        from throughput_gpu import DEFAULT_MODEL_DIR, ensure_model_dir

        model = str(ensure_model_dir(DEFAULT_MODEL_DIR))
        kw.update(load_format="dummy", max_num_seqs=256, gpu_memory_utilization=0.9)
    else:
        model = None
        kw.update(kv_cache_space_gib=1.0, max_num_seqs=32)
    if num_adapters:
        kw.update(enable_lora=True, max_loras=max_loras, max_lora_rank=s["rank"],
                  max_cpu_loras=num_adapters, lora_kernel=kernel or "auto")
    start = time.perf_counter()
    llm = LLM(model, **kw)
    startup = time.perf_counter() - start
    engine = llm.llm_engine
    arch = engine.config.model.arch
    loras = []
    for i in range(num_adapters):
        folder = os.path.join(args.adapter_dir, args.shape, f"r{s['rank']}-{i}")
        if not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
            import torch

            write_random_adapter(folder, arch, rank=s["rank"], seed=i, scale=0.01,
                                 dtype=torch.bfloat16 if s["dtype"] == "bfloat16"
                                 else torch.float32)
        loras.append(LoRARequest(f"ad{i}", i + 1, folder))
    prompts = _prompts(s["requests"], s["prompt_len"], arch.vocab_size)
    per_req = [loras[i % len(loras)] for i in range(len(prompts))] if loras else None
    warm = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in _prompts(2, s["prompt_len"],
                                                           arch.vocab_size, seed=99)],
                 warm, use_tqdm=False, lora_request=loras[:2] if loras else None)
    params = SamplingParams(temperature=0.0, max_tokens=s["output_len"], ignore_eos=True,
                            detokenize=False)
    _sync()
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False,
                        lora_request=per_req)
    _sync()
    elapsed = time.perf_counter() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    runner = getattr(engine.executor, "worker", None)
    runner = runner.runner if runner is not None else None
    manager = getattr(runner, "lora", None)
    res = {"bench": "lora", "shape": args.shape, "system": system,
           "requests": s["requests"], "prompt_len": s["prompt_len"],
           "output_len": s["output_len"], "adapters": num_adapters,
           "max_loras": max_loras if num_adapters else 0, "rank": s["rank"],
           "output_tokens": out_tokens, "elapsed_s": round(elapsed, 3),
           "output_tok_s": round(out_tokens / elapsed, 1), "startup_s": round(startup, 2),
           "lora_mode": manager.batch.mode if manager else None,
           "slot_swaps": manager.num_swaps if manager else 0,
           "graph_steps": getattr(runner, "num_graph_steps", None),
           "eager_steps": getattr(runner, "num_eager_steps", None),
           **_machine()}
    engine.shutdown()
    return res


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _machine() -> dict[str, Any]:
    facts: dict[str, Any] = {"load_avg_1m": round(os.getloadavg()[0], 2),
                             "cpu": platform.processor() or platform.machine()}
    try:
        import torch

        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - facts only
        pass
    return facts


def driver(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, Any]] = {}
    out = open(args.output, "a") if args.output else None  # noqa: SIM115
    for system in args.systems.split(","):
        cmd = [sys.executable, __file__, "--shape", args.shape, "--run", system,
               "--adapter-dir", args.adapter_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)), None)
        if line is None:
            res = {"bench": "lora", "shape": args.shape, "system": system,
                   "error": (proc.stderr or proc.stdout)[-2000:]}
        else:
            res = json.loads(line[len(RESULT):])
            results[system] = res
        print(json.dumps(res), flush=True)
        if out:
            out.write(json.dumps(res) + "\n")
    base = results.get("base")
    if base:
        summary = {"bench": "lora", "shape": args.shape, "summary": True,
                   "base_output_tok_s": base["output_tok_s"],
                   **{f"ratio_vs_base_{k}": round(v["output_tok_s"] / base["output_tok_s"], 3)
                      for k, v in results.items() if k != "base"},
                   "load_avg_1m": round(os.getloadavg()[0], 2)}
        print(json.dumps(summary), flush=True)
        if out:
            out.write(json.dumps(summary) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="cpu-small", choices=sorted(SHAPES))
    p.add_argument("--systems", default="base,lora-resident,lora-swap")
    p.add_argument("--adapter-dir", default="/tmp/vllm-core-lora-bench")
    p.add_argument("--output", default=None, help="append the JSON lines to this file")
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        print(RESULT + json.dumps(run_one(args)), flush=True)
    else:
        driver(args)


if __name__ == "__main__":
    main()
