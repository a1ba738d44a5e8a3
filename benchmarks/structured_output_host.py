"""Per-step host cost of structured outputs at a large batch, without a model: the work the
engine does for a step's grammars (advance every matcher by its sampled token, fill the batch
bitmask, stage it in logits-row order for the upload), measured on the engine's own code
(``StructuredOutputManager.attach_bitmask``, ``StructuredOutputRequest.accept``,
``apply_grammar_bitmask``'s staging) at the gpu-8b shape: 256 requests, the SmolLM2 tokenizer
padded to the Llama-3.1-8B vocabulary (128256), the benchmark's shared schema.

One JSON line per variant: one thread and matchers advanced one request at a time (the engine's
path before the batch accept), one thread with the batch accept, and the default thread count
(half the hardware threads) with the batch accept: milliseconds per step for each part. Tokens are drawn at random among the allowed ones (outside
the timing). Host work only: the two-phase step overlaps it with the device's forward, so it
costs throughput only while it exceeds the forward time.

    python benchmarks/structured_output_host.py [--batch 256] [--steps 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from structured_outputs import cpu_facts, schema_for  # noqa: E402

GPU_8B_VOCAB = 128256


def load_tokenizer() -> Any:
    saved = HERE.parent / ".bench" / "models" / "smollm2-tokenizer"
    if (saved / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(saved))
    from vllm_core.model_executor.loader import get_tokenizer, resolve_model

    return get_tokenizer(resolve_model(None), None)


def run(tokenizer: Any, batch: int, steps: int, fill_threads: int, batch_accept: bool,
        seed: int) -> dict[str, Any]:
    from vllm_core.config import StructuredOutputsConfig
    from vllm_core.engine.request import RequestStatus
    from vllm_core.sampling.structured import BitmaskStaging, stage_grammar_bitmask
    from vllm_core.structured_output import StructuredOutputsParams
    from vllm_core.structured_output.manager import StructuredOutputManager

    config = StructuredOutputsConfig(backend="xgrammar", fill_threads=fill_threads)
    manager = StructuredOutputManager(config, tokenizer, GPU_8B_VOCAB,
                                      [tokenizer.eos_token_id])
    ids = [f"r{i:04d}" for i in range(batch)]
    requests = {}
    for req_id in ids:
        so = manager.submit(StructuredOutputsParams(json=schema_for(None)), [])
        so.future.result()
        assert so.is_ready() and so.error is None
        requests[req_id] = SimpleNamespace(structured_output=so, status=RequestStatus.RUNNING)
    step = SimpleNamespace(sampling_req_ids=frozenset(ids), grammar_bitmask=None,
                           structured_output_req_ids=[])
    order = list(reversed(ids))                       # logits rows in another order
    staging = BitmaskStaging(manager.width, batch, pin_memory=False)
    rng = np.random.default_rng(seed)
    real_vocab = len(tokenizer)
    fill = accept = stage = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        manager.attach_bitmask(step, requests)
        t1 = time.perf_counter()
        stage_grammar_bitmask(order, step, staging)   # the masking kernel is the device's
        t2 = time.perf_counter()
        bits = np.unpackbits(step.grammar_bitmask.view(np.uint8), axis=1,
                             bitorder="little")[:, :real_vocab]
        tokens = [int(rng.choice(np.flatnonzero(row))) for row in bits]
        t3 = time.perf_counter()
        sampled = dict(zip(step.structured_output_req_ids, ([t] for t in tokens)))
        if batch_accept:
            manager.advance(step, sampled, requests)
        for req_id, token in zip(step.structured_output_req_ids, tokens):
            assert requests[req_id].structured_output.accept(token)
        t4 = time.perf_counter()
        fill, stage, accept = fill + t1 - t0, stage + t2 - t1, accept + t4 - t3
    manager.shutdown()
    ms = 1e3 / steps
    return {"fill_threads": fill_threads or "auto", "accept": "batch" if batch_accept
            else "per_request", "fill_ms": round(fill * ms, 3),
            "accept_ms": round(accept * ms, 3), "stage_ms": round(stage * ms, 3),
            "total_ms": round((fill + accept + stage) * ms, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    tokenizer = load_tokenizer()
    base = {"benchmark": "structured_output_host", "batch": args.batch, "steps": args.steps,
            "vocab": GPU_8B_VOCAB, "schema": "shared", **cpu_facts(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    for threads, batch_accept in ((1, False), (1, True), (0, True)):
        line = json.dumps({**base, **run(tokenizer, args.batch, args.steps, threads,
                                         batch_accept, seed=0)})
        print(line, flush=True)
        if args.output:
            with open(args.output, "a", encoding="utf-8") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
