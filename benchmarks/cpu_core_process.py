"""The engine core in its own process against in-process, on the CPU, with the embedded
SmolLM2-135M GGUF (kept quantized), in one run: which should the CPU default be?

    python benchmarks/cpu_core_process.py [--b1-tokens 64] [--batch 16]

Workloads: ``cpu-b1`` (1 request, 128 random prompt tokens, ``--b1-tokens`` greedy output
tokens; decode tok/s excludes the first token) and ``cpu-batch`` (``--batch`` requests of 64
prompt / 32 output tokens at once; output tok/s). Each configuration runs in its own
subprocess, one after the other; every JSON line carries the load average before and after
(on a shared host compare the ratio in the last line, not the absolute figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

RESULT = "CORE_RESULT "
PROMPT_LEN = 128


def child(core_process: bool, b1_tokens: int, batch: int) -> dict[str, Any]:
    import numpy as np

    from vllm_core import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(dtype="float32", max_num_seqs=max(batch, 1), enable_prefix_caching=False,
              engine_core_process=core_process)
    startup = time.perf_counter() - t0
    rng = np.random.default_rng(0)

    def timed(prompts: list[list[int]], n: int) -> float:
        sp = SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return time.perf_counter() - t

    one = [rng.integers(1000, 40000, PROMPT_LEN).tolist()]
    timed(one, 4)                                        # warm-up
    first = timed(one, 1)
    b1 = (b1_tokens - 1) / (timed(one, b1_tokens) - first)
    many = [rng.integers(1000, 40000, 64).tolist() for _ in range(batch)]
    batch_tok_s = batch * 32 / timed(many, 32)
    llm.shutdown()
    return {"startup_s": round(startup, 2), "b1_decode_tok_s": round(b1, 3),
            "batch_output_tok_s": round(batch_tok_s, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--b1-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--child", choices=("in-process", "core-process"), default=None,
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        r = child(args.child == "core-process", args.b1_tokens, args.batch)
        print(RESULT + json.dumps(r), flush=True)
        return 0
    lines = {}
    for system in ("in-process", "core-process"):
        before = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--child", system, "--b1-tokens",
                               str(args.b1_tokens), "--batch", str(args.batch)],
                              capture_output=True, text=True, check=False)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
        line: dict[str, Any] = {"bench": "cpu-core-process", "system": system,
                                "cores": os.cpu_count(),
                                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                                "gomp_spincount": os.environ.get("GOMP_SPINCOUNT",
                                                                 "5000 (default)"),
                                "loadavg_before": round(before, 2)}
        if found:
            line.update(json.loads(found[-1][len(RESULT):]))
        else:
            line["error"] = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        line["loadavg_after"] = round(os.getloadavg()[0], 2)
        lines[system] = line
        print(json.dumps(line), flush=True)
    a, b = lines["in-process"], lines["core-process"]
    if "error" not in a and "error" not in b:
        print(json.dumps({"bench": "cpu-core-process", "summary": True,
                          "b1_core_vs_in_process": round(b["b1_decode_tok_s"]
                                                         / a["b1_decode_tok_s"], 3),
                          "batch_core_vs_in_process": round(b["batch_output_tok_s"]
                                                            / a["batch_output_tok_s"], 3)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
