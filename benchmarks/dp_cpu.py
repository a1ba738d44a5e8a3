"""Data parallelism on the CPU: offline output tok/s at ``--data-parallel-size`` 1 and 2, same
run, same prompts, one JSON line per layout and a summary line with the ratio.

    python benchmarks/dp_cpu.py --requests 32 --prompt-len 64 --output-len 32

Layouts, each in its own subprocess, one after another: ``dp1`` (the default in-process
engine), ``dp1-core-process`` (one engine core process: the DP=1 peer with the same process
layout as DP=2), ``dp2`` (two engine core processes, each with half of the CPU threads),
``dp1-1thread`` (in-process, one thread: separates DP from the thread count). Model:
the embedded default (SmolLM2-135M-Instruct GGUF), float32. ``elapsed_s`` times ``generate``
after a warm-up request. Every line carries the CPU model, its ISA flags of interest and the
load average at the end of the run: on a shared machine, quote the ratios. DP=2 cannot beat
DP=1 much on a host whose cores the single engine already uses (both layouts share the same
cores); it pays where each core gets its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

PREFIX = "DP_RESULT "
LAYOUTS = {"dp1": (1, False), "dp1-core-process": (1, True), "dp2": (2, False),
           "dp1-1thread": (1, False)}
THREADS = {"dp1-1thread": "1"}      # VLLM_CPU_NUM_THREADS of a layout (else the plugin's)


def cpu_facts() -> dict[str, Any]:
    model, flags = "", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    isa = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if x in flags]
    return {"cpu": model, "isa": ",".join(isa), "cpus": os.cpu_count()}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vllm_core import LLM, SamplingParams

    dp, core_process = LAYOUTS[args.worker]
    t0 = time.perf_counter()
    llm = LLM(None, dtype="float32", max_model_len=args.prompt_len + args.output_len + 8,
              seed=0, data_parallel_size=dp, engine_core_process=core_process,
              max_num_seqs=args.requests, kv_cache_space_gib=args.kv_cache_space_gib)
    startup = time.perf_counter() - t0
    vocab = llm.get_tokenizer().vocab_size
    gen = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(10, vocab - 10, (args.prompt_len,),
                                                  generator=gen).tolist()}
               for _ in range(args.requests)]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
                 use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.shutdown()
    return {"output_tokens": tokens, "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(tokens / elapsed, 1), "startup_s": round(startup, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--layouts", default="dp1,dp1-core-process,dp2")
    p.add_argument("--kv-cache-space-gib", type=float, default=0.25,
                   help="KV cache per engine core (the CPU default, 4 GiB, times two cores "
                        "is a lot on a small host)")
    p.add_argument("--output", default=None, help="append the JSON lines to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(PREFIX + json.dumps(worker(args)), flush=True)
        return
    out = open(args.output, "a") if args.output else None
    results: dict[str, dict[str, Any]] = {}
    for layout in args.layouts.split(","):
        cmd = [sys.executable, __file__, "--worker", layout, "--requests", str(args.requests),
               "--prompt-len", str(args.prompt_len), "--output-len", str(args.output_len),
               "--kv-cache-space-gib", str(args.kv_cache_space_gib)]
        env = dict(os.environ)
        if layout in THREADS:
            env["VLLM_CPU_NUM_THREADS"] = THREADS[layout]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        res: dict[str, Any] = {"error": (proc.stderr or proc.stdout)[-500:]}
        for line in proc.stdout.splitlines():
            if line.startswith(PREFIX):
                res = json.loads(line[len(PREFIX):])
        line = {"bench": "dp_cpu", "layout": layout, "requests": args.requests,
                "prompt_len": args.prompt_len, "output_len": args.output_len, **res,
                **cpu_facts(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
        results[layout] = line
        print(json.dumps(line), flush=True)
        if out:
            out.write(json.dumps(line) + "\n")
    summary: dict[str, Any] = {"bench": "dp_cpu", "kind": "summary",
                               "loadavg": [round(x, 2) for x in os.getloadavg()]}
    dp2 = results.get("dp2", {}).get("output_tok_s")
    for peer in ("dp1", "dp1-core-process", "dp1-1thread"):
        base = results.get(peer, {}).get("output_tok_s")
        if dp2 and base:
            summary[f"ratio_dp2_vs_{peer}"] = round(dp2 / base, 3)
    print(json.dumps(summary), flush=True)
    if out:
        out.write(json.dumps(summary) + "\n")
        out.close()


if __name__ == "__main__":
    main()
