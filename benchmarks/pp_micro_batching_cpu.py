"""Pipeline micro-batching on the CPU: PP=2 with and without micro-batching (and PP=1 on one
rank as the reference), in one run, on the same random-weight Llama and the same prompts.

    python benchmarks/pp_micro_batching_cpu.py [--requests 16 --prompt-len 32 --output-len 32]

Decode of a small batch reads every weight once per step whatever the rows, so splitting it
into micro-batches only pays when the stages really run at once (a free core each); a
prefill-heavy workload (``--prompt-len 192 --output-len 8 --max-num-batched-tokens 256``)
has per-step work proportional to its tokens and shows the overlap most directly.

Each layout runs in its own subprocess, one after another (workers: one spawned process per
stage, gloo, the cores divided between them). One JSON line per layout, then a summary line
with ``micro_vs_no_micro`` (output tok/s ratio) and the load average before and after: on a
shared machine quote the ratio, not the absolute figures. Greedy tokens of every layout are
compared with PP=1's (``same_tokens``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

RESULT = "PP_BENCH "
LAYOUTS = {"pp1": (1, True), "pp2-no-micro": (2, False), "pp2-micro": (2, True)}


def cpu_facts() -> dict[str, Any]:
    model, flags = "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    return {"cpu": model, "isa": isa, "cpus": os.cpu_count(), "machine": platform.machine()}


def build_model(folder: str, args: argparse.Namespace) -> None:
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    config = dict(vocab_size=args.vocab, hidden_size=args.hidden,
                  intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                  num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 128,
                  max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, tie_word_embeddings=False)
    random_hf_causal_lm("llama", config, seed=0, weight_scale=0.05).save_pretrained(folder)
    write_wordlevel_tokenizer(folder, args.vocab)


def run_layout(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vllm_core import LLM, SamplingParams

    pp, micro = LAYOUTS[args.layout]
    t0 = time.perf_counter()
    llm = LLM(args.folder, dtype="float32", max_model_len=args.prompt_len + args.output_len,
              max_num_seqs=args.requests, max_num_batched_tokens=args.max_num_batched_tokens,
              seed=0, enforce_eager=True, pipeline_parallel_size=pp,
              pipeline_micro_batching=micro)
    startup = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, args.vocab, (args.prompt_len,), generator=gen).tolist()
               for _ in range(args.requests)]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True,
                            detokenize=False)
    llm.generate([{"prompt_token_ids": prompts[0][:8]}],
                 SamplingParams(temperature=0.0, max_tokens=4, detokenize=False),
                 use_tqdm=False)
    engine = llm.llm_engine
    queue = engine.batch_queue
    before = None if queue is None else (queue.stats.num_steps, queue.stats.num_overlapped_steps)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    n = sum(len(t) for t in tokens)
    res: dict[str, Any] = {
        "bench": "pp_micro_batching_cpu", "layout": args.layout,
        "pipeline_parallel_size": pp, "micro_batching": queue is not None,
        "requests": args.requests, "prompt_len": args.prompt_len,
        "output_len": args.output_len, "max_num_batched_tokens": args.max_num_batched_tokens,
        "output_tokens": n, "elapsed_s": round(elapsed, 3),
        "output_tok_s": round(n / elapsed, 1), "startup_s": round(startup, 1),
        "tokens_hash": hash(tuple(map(tuple, tokens))) & 0xFFFFFFFF,
    }
    if queue is not None:
        res["steps"] = queue.stats.num_steps - before[0]
        res["overlapped_steps"] = queue.stats.num_overlapped_steps - before[1]
        res["max_in_flight"] = queue.stats.max_in_flight
    engine.shutdown()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=512,
                   help="token budget of one step (of one micro-batch)")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--layout", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.layout:
        print(RESULT + json.dumps(run_layout(args)), flush=True)
        return
    facts = {**cpu_facts(), "load_avg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as folder:
        build_model(folder, args)
        lines: dict[str, dict[str, Any]] = {}
        for layout in args.layouts.split(","):
            cmd = [sys.executable, __file__, "--layout", layout, "--folder", folder,
                   "--requests", str(args.requests), "--prompt-len", str(args.prompt_len),
                   "--output-len", str(args.output_len), "--vocab", str(args.vocab),
                   "--max-num-batched-tokens", str(args.max_num_batched_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
            if not got:
                print(json.dumps({"bench": "pp_micro_batching_cpu", "layout": layout,
                                  "error": proc.stderr[-2000:]}), flush=True)
                continue
            lines[layout] = json.loads(got[0][len(RESULT):])
            print(json.dumps({**lines[layout], **facts}), flush=True)
    summary: dict[str, Any] = {"bench": "pp_micro_batching_cpu_summary", **facts,
                               "load_avg_after": os.getloadavg()}
    if "pp2-micro" in lines and "pp2-no-micro" in lines:
        summary["micro_vs_no_micro"] = round(lines["pp2-micro"]["output_tok_s"]
                                             / lines["pp2-no-micro"]["output_tok_s"], 3)
    if "pp1" in lines:
        ref = lines["pp1"]
        for name, line in lines.items():
            summary[f"{name}_vs_pp1"] = round(line["output_tok_s"] / ref["output_tok_s"], 3)
            summary[f"{name}_same_tokens"] = line["tokens_hash"] == ref["tokens_hash"]
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
