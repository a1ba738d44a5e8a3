"""Structured-output throughput: the same workload unconstrained and with every request under a
JSON schema, in one process and one engine, one JSON line per mode plus a summary line.

    python benchmarks/structured_outputs.py --workload cpu-small              # the CPU
    python benchmarks/structured_outputs.py --workload gpu-8b --async-scheduling   # the H200

Method:
- ``cpu-small``: the embedded SmolLM2-135M-Instruct, 64 requests, 256 random prompt tokens,
  128 output tokens. ``gpu-8b``: the Llama-3.1-8B shape with random bf16 weights (dummy load,
  as ``throughput_gpu.py``), 256 requests, 512 / 256, with the SmolLM2 tokenizer saved next to
  its config (a grammar needs a tokenizer with real text tokens; ids past its 49152 tokens are
  never allowed by the grammar).
- Every request: greedy, ``ignore_eos``, ``max_tokens=output_len``. The constrained mode gives
  each request its own schema (``--schema distinct``, the default: one compile per request, all
  counted) or one shared schema (``--schema shared``): an object whose array needs at least 200
  strings of 8-16 characters, so no answer can end before ``output_len`` tokens.
- The two modes use different prompts of the same shape (no prefix-cache reuse between them);
  ``--rounds`` alternates them and the summary compares the mean tokens/s. ``elapsed_s`` is the
  ``generate`` call; ``grammar_compile_s`` is the compile time summed over the compile threads
  (it overlaps the step loop; it is included in the constrained ``elapsed_s`` only as far as it
  delayed requests). ``cpu_s`` is the process's CPU time during ``generate`` (all threads);
  ``ratio_per_cpu_s`` compares tokens per CPU second, which a shared, loaded CPU distorts less
  than wall time (quote it next to the wall-time ``ratio`` on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

WORKLOADS = {"cpu-small": (64, 256, 128), "gpu-8b": (256, 512, 256)}


def cpu_facts() -> dict[str, Any]:
    """The CPU by name and ISA flags (``lscpu``), for the JSON lines."""
    facts: dict[str, Any] = {"machine": platform.machine()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return facts
    for line in out.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "Model name":
            facts["cpu"] = value
        elif key == "CPU(s)":
            facts["cpus"] = int(value)
        elif key == "Flags":
            flags = set(value.split())
            facts["isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd")
                            if f in flags]
    return facts


def schema_for(i: int | None) -> dict[str, Any]:
    name = "items" if i is None else f"items_{i}"
    return {"type": "object",
            "properties": {name: {"type": "array", "minItems": 200,
                                  "items": {"type": "string", "minLength": 8,
                                            "maxLength": 16}}},
            "required": [name]}


def gpu_model_dir() -> tuple[str, str]:
    """(model folder, tokenizer folder) for gpu-8b: the 8B shape, the SmolLM2 tokenizer."""
    sys.path.insert(0, str(HERE))
    from throughput_gpu import DEFAULT_MODEL_DIR, ensure_model_dir

    from vllm_core.model_executor.loader import get_tokenizer, resolve_model

    folder = ensure_model_dir(DEFAULT_MODEL_DIR)
    tok_dir = REPO / ".bench" / "models" / "smollm2-tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        get_tokenizer(resolve_model(None), None).save_pretrained(str(tok_dir))
    return str(folder), str(tok_dir)


def build_llm(args: argparse.Namespace, prompt_len: int, output_len: int) -> Any:
    from vllm_core import LLM

    common: dict[str, Any] = dict(
        max_model_len=prompt_len + output_len, enable_prefix_caching=False,
        async_scheduling=args.async_scheduling,
        structured_outputs_config={"backend": args.backend,
                                   "overlap_bitmask": args.overlap_bitmask})
    if args.workload == "gpu-8b":
        model, tokenizer = gpu_model_dir()
        return LLM(model, tokenizer=tokenizer, dtype="bfloat16", load_format="dummy",
                   max_num_seqs=256, max_num_batched_tokens=8192, **common)
    return LLM(dtype=args.dtype, kv_cache_space_gib=args.kv_cache_space_gib, **common)


def make_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(100, vocab, size=(count, length)).tolist()


def run_mode(llm: Any, prompts: list[list[int]], output_len: int, constrained: bool,
             shared: bool) -> dict[str, Any]:
    from vllm_core import SamplingParams
    from vllm_core.structured_output import StructuredOutputsParams

    params = []
    for i in range(len(prompts)):
        so = (StructuredOutputsParams(json=schema_for(None if shared else i))
              if constrained else None)
        params.append(SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True,
                                     detokenize=False, structured_outputs=so))
    stats = llm.llm_engine.structured_output_manager.stats
    compiled0, compile_s0 = stats.num_compiled, stats.compile_seconds
    engine = llm.llm_engine
    two_phase0 = engine.num_two_phase_steps
    start, cpu_start = time.perf_counter(), time.process_time()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    line = {"mode": "json_schema" if constrained else "unconstrained",
            "requests": len(prompts), "output_tokens": tokens, "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(tokens / elapsed, 2), "cpu_s": round(cpu, 2),
            "output_tok_per_cpu_s": round(tokens / cpu, 3)}
    if constrained:
        line["grammar_compile_s"] = round(stats.compile_seconds - compile_s0, 4)
        line["grammars_compiled"] = stats.num_compiled - compiled0
        bad = [o.outputs[0].token_ids for o in outputs
               if len(o.outputs[0].token_ids) != output_len]
        line["finished_early"] = len(bad)
        line["two_phase_steps"] = engine.num_two_phase_steps - two_phase0
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="cpu-small", choices=sorted(WORKLOADS))
    p.add_argument("--backend", default="xgrammar",
                   choices=["auto", "xgrammar", "guidance", "outlines"])
    p.add_argument("--schema", default="distinct", choices=["distinct", "shared"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--num-requests", type=int, default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--kv-cache-space-gib", type=float, default=4.0)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--overlap-bitmask", action=argparse.BooleanOptionalAction, default=True,
                   help="async scheduling: build the bitmask during the forward (two-phase "
                        "step); --no-overlap-bitmask: the old collect-first path")
    p.add_argument("--output", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    requests, prompt_len, output_len = WORKLOADS[args.workload]
    requests = args.num_requests or requests

    def emit(line: dict[str, Any]) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        if args.output:
            with open(args.output, "a", encoding="utf-8") as f:
                f.write(text + "\n")

    start = time.perf_counter()
    llm = build_llm(args, prompt_len, output_len)
    startup = time.perf_counter() - start
    engine = llm.llm_engine
    vocab = min(engine.config.model.arch.vocab_size, len(llm.get_tokenizer()))
    base = {"benchmark": "structured_outputs", "workload": args.workload,
            "backend": args.backend, "schema": args.schema, "prompt_len": prompt_len,
            "output_len": output_len, "async_scheduling": engine.async_scheduling,
            "overlap_bitmask": args.overlap_bitmask,
            "platform": engine.platform.describe(), "startup_s": round(startup, 1)}
    if args.workload.startswith("cpu"):
        base.update(cpu_facts())
    run_mode(llm, make_prompts(2, prompt_len, vocab, 999), 8, True, True)      # warm-up
    wall: dict[str, list[float]] = {"unconstrained": [], "json_schema": []}
    per_cpu: dict[str, list[float]] = {"unconstrained": [], "json_schema": []}
    compile_s = 0.0
    for r in range(args.rounds):
        for k, constrained in enumerate((False, True)):
            prompts = make_prompts(requests, prompt_len, vocab, seed=2 * r + k)
            line = run_mode(llm, prompts, output_len, constrained, args.schema == "shared")
            wall[line["mode"]].append(line["output_tok_s"])
            per_cpu[line["mode"]].append(line["output_tok_per_cpu_s"])
            compile_s += line.get("grammar_compile_s", 0.0)
            emit({**base, "round": r, **line})

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    emit({**base, "summary": True, "rounds": args.rounds,
          "unconstrained_tok_s": round(mean(wall["unconstrained"]), 2),
          "json_schema_tok_s": round(mean(wall["json_schema"]), 2),
          "ratio": round(mean(wall["json_schema"]) / mean(wall["unconstrained"]), 3),
          "ratio_per_cpu_s": round(mean(per_cpu["json_schema"])
                                   / mean(per_cpu["unconstrained"]), 3),
          "grammar_compile_s": round(compile_s, 4)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
