"""``cpu-b1``: batch-1 decode of the embedded SmolLM2-135M Q4_1 GGUF, vllm-core against
llama.cpp on the same file with the same threads, in one run.

    python benchmarks/gguf_cpu_b1.py [--threads 2] [--output results.jsonl]

Systems, each in its own subprocess, one after the other (never concurrently):

- ``llama.cpp``: with ``--llama-bench PATH``, llama.cpp's own ``llama-bench`` binary
  (``-m <the GGUF> -p 0 -d 128 -n 256 -t T -r 10 -o json``: 256 generated tokens after a
  128-token context, its ``avg_ts``); otherwise ``llama-cpp-python`` (``pip install
  llama-cpp-python``; built from source, over 90 minutes on a 2-vCPU machine),
  ``Llama(model_path=<the GGUF>, n_threads=T)``, greedy. ``llama-bench`` alone builds from
  llama.cpp's sources in ~20 minutes on one core (native CPU flags, Release);
- ``vllm-core q4_1-kept`` / ``q4_1-kept-bf16``: the GGUF kept quantized (``--quantization
  gguf``, the default), fp32 / bf16 activations, the CPU plugin's C++ ``wna16_linear``;
- ``vllm-core q4_1-kept-int8`` / ``q4_1-kept-bf16-int8``: the same (fp32 / bf16) with
  ``VLLM_CPU_WNA16_ACTIVATIONS=int8`` (activations quantized to int8 per 32 inputs, integer dot
  products; x86 AVX2);
- ``vllm-core dequant-fp32`` / ``dequant-bf16``: ``--gguf-dequantize`` (the float path).

Workload ``cpu-b1``: 1 request, 128 random prompt tokens (seeded, non-special vocabulary),
256 output tokens (``ignore_eos``; llama.cpp: 256 tokens taken from its generator). Decode
tok/s = 255 / (time to the 256th token - time to the first), so prefill is excluded.

``--peer-tree DIR`` (another checkout with its own ``.venv``, e.g. ``git worktree add
/tmp/base main``): a system named ``base:<system>`` runs that tree's copy of this benchmark
with the environment the user gave this one (before ``import vllm_core`` added its OpenMP
defaults), for a before/after A/B in one run. One
JSON line per system with the CPU name / ISA and the load average before and after it ran;
the last line holds the ratios of each vllm-core system against llama.cpp. A system that
cannot run (llama-cpp-python not installed) gets a line with its ``error``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cpu_facts import cpu_facts

PROMPT_LEN, OUTPUT_LEN, SEED = 128, 256, 0
USER_ENV = dict(os.environ)            # before vllm_core (envs.apply_openmp_defaults) runs
RESULT = "B1_RESULT "
SYSTEMS = ("llama.cpp", "q4_1-kept", "q4_1-kept-int8", "q4_1-kept-bf16", "q4_1-kept-bf16-int8",
           "dequant-fp32", "dequant-bf16")


def prompt_ids(path: str) -> list[int]:
    import numpy as np

    from vllm_core.model_executor.loader import get_tokenizer

    tok = get_tokenizer(path)
    special = set(tok.all_special_ids)
    allowed = np.array([i for i in range(tok.vocab_size) if i not in special])
    return np.random.default_rng(SEED).choice(allowed, PROMPT_LEN).tolist()


def run_llama_bench(binary: str, path: str, threads: int, reps: int = 10) -> dict[str, Any]:
    """llama.cpp's ``llama-bench``: token generation after a context as long as our prompt,
    the mean of ``reps`` runs (with 3, one slow run on a shared machine moved it by 30%)."""
    cmd = [binary, "-m", path, "-p", "0", "-d", str(PROMPT_LEN), "-n", str(OUTPUT_LEN),
           "-t", str(threads), "-r", str(reps), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    (test,) = [t for t in json.loads(proc.stdout) if t.get("n_gen") == OUTPUT_LEN]
    return {"decode_tok_s": test["avg_ts"], "stddev_tok_s": test["stddev_ts"],
            "llama_cpp_build": test.get("build_commit"), "via": "llama-bench",
            "model_type": test.get("model_type")}


def run_llama_cpp(path: str, ids: list[int], threads: int) -> dict[str, Any]:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
                n_batch=PROMPT_LEN, verbose=False)
    startup = time.perf_counter() - t0
    out, stamps = [], []
    llm.generate(ids[:8], temp=0.0).__next__()          # warm-up
    llm.reset()
    t0 = time.perf_counter()
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(int(tok))
        stamps.append(time.perf_counter())
        if len(out) == OUTPUT_LEN:
            break
    return {"startup_s": startup, "ttft_s": stamps[0] - t0,
            "decode_tok_s": (OUTPUT_LEN - 1) / (stamps[-1] - stamps[0]), "tokens": out[:16]}


def run_ours(system: str, path: str, ids: list[int], threads: int) -> dict[str, Any]:
    from vllm_core import LLM, SamplingParams

    dtype = "bfloat16" if "-bf16" in system else "float32"      # "-int8": env (parent)
    t0 = time.perf_counter()
    llm = LLM(model=path, dtype=dtype, gguf_dequantize=system.startswith("dequant"),
              max_num_seqs=1, enable_prefix_caching=False)      # threads: VLLM_CPU_NUM_THREADS
    startup = time.perf_counter() - t0
    prompt = {"prompt_token_ids": ids}

    def timed(n: int) -> tuple[float, list[int]]:
        sp = SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)
        t = time.perf_counter()
        out = llm.generate([prompt], sp, use_tqdm=False)
        return time.perf_counter() - t, list(out[0].outputs[0].token_ids)

    timed(8)                                              # warm-up
    t_first, _ = timed(1)
    t_all, toks = timed(OUTPUT_LEN)
    return {"startup_s": startup, "ttft_s": t_first,
            "decode_tok_s": (OUTPUT_LEN - 1) / (t_all - t_first), "tokens": toks[:16]}


def child(system: str, path: str, threads: int, llama_bench: str | None) -> None:
    if system == "llama.cpp" and llama_bench:
        r = run_llama_bench(llama_bench, path, threads)
    else:
        ids = prompt_ids(path)
        r = run_llama_cpp(path, ids, threads) if system == "llama.cpp" else run_ours(
            system, path, ids, threads)
    print(RESULT + json.dumps(r), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--model", default=None, help="GGUF file (default: the embedded model)")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--peer-tree", type=Path, default=None,
                   help="a checkout with .venv whose copy runs the systems named base:<system>")
    p.add_argument("--llama-bench", default=None,
                   help="llama.cpp's llama-bench binary: the llama.cpp system runs it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from vllm_core.model_executor.default_model import default_model_path

    path = args.model or default_model_path()
    if args.child:
        child(args.child, path, args.threads, args.llama_bench)
        return 0
    facts = cpu_facts()
    lines = []
    for system in args.systems.split(","):
        before = os.getloadavg()
        python, script, env, name = sys.executable, __file__, os.environ, system
        if system.startswith("base:"):
            if args.peer_tree is None:
                raise SystemExit(f"{system}: needs --peer-tree")
            tree = args.peer_tree.resolve()
            python = str(tree / ".venv" / "bin" / "python")
            script = str(tree / "benchmarks" / Path(__file__).name)
            env, name = USER_ENV, system[len("base:"):]
        extra = ["--llama-bench", args.llama_bench] if (
            name == "llama.cpp" and args.llama_bench) else []
        mode = {"VLLM_CPU_WNA16_ACTIVATIONS": "int8"} if name.endswith("-int8") else {}
        proc = subprocess.run([python, script, "--child", name, "--threads",
                               str(args.threads), "--model", path, *extra],
                              capture_output=True, text=True, check=False,
                              env={**env, "VLLM_CPU_NUM_THREADS": str(args.threads),
                                   "OMP_NUM_THREADS": str(args.threads), **mode})
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
        line: dict[str, Any] = {"bench": "cpu-b1", "system": system, "model": Path(path).name,
                                "threads": args.threads, "prompt_len": PROMPT_LEN,
                                "output_len": OUTPUT_LEN, **facts,
                                "omp_wait_policy": env.get("OMP_WAIT_POLICY", "unset"),
                                "gomp_spincount": env.get("GOMP_SPINCOUNT", "unset"),
                                "loadavg_before": round(before[0], 2)}
        if found:
            line.update(json.loads(found[-1][len(RESULT):]))
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            line["error"] = " | ".join(tail) or f"exit code {proc.returncode}"
        line["loadavg_after"] = round(os.getloadavg()[0], 2)
        lines.append(line)
        emit(line, args.output)
    peer = next((ln for ln in lines if ln["system"] == "llama.cpp" and "decode_tok_s" in ln),
                None)
    summary: dict[str, Any] = {"bench": "cpu-b1", "summary": True}
    for ln in lines:
        if "decode_tok_s" in ln and ln["system"] != "llama.cpp":
            summary[f"{ln['system']}_decode_tok_s"] = round(ln["decode_tok_s"], 2)
            if peer:
                summary[f"{ln['system']}_vs_llama_cpp"] = round(
                    ln["decode_tok_s"] / peer["decode_tok_s"], 3)
    kept = next((ln for ln in lines if ln["system"] == "q4_1-kept" and "decode_tok_s" in ln),
                None)
    for ln in lines:
        if kept and ln["system"].startswith("dequant") and "decode_tok_s" in ln:
            summary[f"q4_1-kept_vs_{ln['system']}"] = round(
                kept["decode_tok_s"] / ln["decode_tok_s"], 3)
    by_name = {ln["system"]: ln for ln in lines if "decode_tok_s" in ln}
    for name, ln in by_name.items():                       # this tree against the peer tree
        base = by_name.get(f"base:{name}")
        if base is not None:
            summary[f"{name}_vs_base"] = round(ln["decode_tok_s"] / base["decode_tok_s"], 3)
    emit(summary, args.output)
    return 0


def emit(line: dict[str, Any], output: Path | None) -> None:
    text = json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in line.items()})
    print(text, flush=True)
    if output is not None:
        with output.open("a", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
