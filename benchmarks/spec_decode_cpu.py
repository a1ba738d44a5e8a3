"""Speculative decoding on the CPU: n-gram lookup, a draft model and an EAGLE-3 head against no
same run.

The default model (SmolLM2-135M-Instruct GGUF), batch 1 (each prompt generated alone, as a
chat turn), greedy, on the shipped input-grounded prompts (``spec_decode_prompts.json``:
quote / edit / summarise a given passage, where the answer copies the input). Both engines run
in this process one after the other (never concurrently), each after a warm-up request. Prints
one JSON line per system; the n-gram line carries ``speedup`` (its output tokens/s over the
baseline's), the acceptance figures and whether its tokens equal the baseline's::

    python benchmarks/spec_decode_cpu.py --max-tokens 128 --k 4
    python benchmarks/spec_decode_cpu.py --systems draft_model --draft-layers 8

``draft_model`` is a truncated-layer draft of the target: its first ``--draft-layers``
decoder layers (a view sharing the target's weights, its own KV cache). ``eagle3`` is an
EAGLE-3 head of the published layout for the target's shape with random weights
(``--draft-vocab`` draft tokens; written to a temporary folder): its acceptance is ~0, so its
line measures the head's overhead (auxiliary-state capture, catch-up and k head steps per
target step, verification of rejected drafts) against no speculation::

    python benchmarks/spec_decode_cpu.py --systems eagle3 --k 2

Absolute times on a shared machine are indicative: the line also records ``uptime``'s load
average and the CPU. Quote the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent / "spec_decode_prompts.json"


class SpecTotals:
    """A stat logger summing the engine's speculative-decoding counters."""

    def __init__(self) -> None:
        self.drafts = self.draft_tokens = self.accepted = 0

    def record(self, scheduler_stats, iteration_stats) -> None:
        spec = scheduler_stats.spec_decoding
        if spec is not None:
            self.drafts += spec.num_drafts
            self.draft_tokens += spec.num_draft_tokens
            self.accepted += spec.num_accepted_tokens


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run(system: str, spec: dict | None, prompts: list[dict], max_tokens: int,
        max_model_len: int, load_format: str = "auto") -> tuple[dict, list[list[int]]]:
    from vllm_core import LLM, SamplingParams

    llm = LLM(max_model_len=max_model_len, kv_cache_space_gib=0.25, max_num_seqs=4,
              speculative_config=spec, load_format=load_format)
    totals = SpecTotals()
    llm.llm_engine.stat_loggers.append(totals)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    llm.chat([{"role": "user", "content": "Say hello."}],
             SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)      # warm-up
    totals.__init__()
    tokens: list[list[int]] = []
    elapsed = 0.0
    for item in prompts:
        start = time.perf_counter()
        out = llm.chat([{"role": "user", "content": item["prompt"]}], params, use_tqdm=False)
        elapsed += time.perf_counter() - start
        tokens.append(list(out[0].outputs[0].token_ids))
    num_out = sum(len(t) for t in tokens)
    line = {"bench": "spec_decode_cpu", "system": system, "requests": len(prompts),
            "batch": 1, "max_tokens": max_tokens, "output_tokens": num_out,
            "elapsed_s": round(elapsed, 3), "output_tok_s": round(num_out / elapsed, 2)}
    if spec is not None:
        line.update(k=spec["num_speculative_tokens"], drafts=totals.drafts,
                    draft_tokens=totals.draft_tokens, accepted_tokens=totals.accepted,
                    acceptance_rate=round(totals.accepted / max(totals.draft_tokens, 1), 3),
                    mean_accepted_length=round(1 + totals.accepted / max(totals.drafts, 1), 3))
    del llm
    return line, tokens


def random_eagle3_head(draft_vocab: int) -> str:
    """A temporary folder holding a random-weight EAGLE-3 head for the default model."""
    import tempfile

    import torch

    from vllm_core.model_executor.loader import load_arch_config, resolve_model
    from vllm_core.model_executor.testing import write_random_eagle3_head

    arch = load_arch_config(resolve_model(None))
    size = min(draft_vocab, arch.vocab_size)
    vocab = torch.randperm(arch.vocab_size, generator=torch.Generator().manual_seed(0))
    target = {"hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
              "num_attention_heads": arch.num_attention_heads,
              "num_key_value_heads": arch.num_key_value_heads, "vocab_size": arch.vocab_size,
              "max_position_embeddings": arch.max_position_embeddings,
              "rms_norm_eps": arch.rms_norm_eps, "rope_theta": arch.rope_theta}
    folder = tempfile.mkdtemp(prefix="eagle3-head-")
    return write_random_eagle3_head(folder, target, vocab[:size].sort().values, seed=0,
                                    weight_scale=0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    ap.add_argument("--lookup-max", type=int, default=4)
    ap.add_argument("--lookup-min", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--num-prompts", type=int, default=None, help="the first N prompts only")
    ap.add_argument("--output", default=None, help="append the JSON lines to this file")
    ap.add_argument("--systems", default="ngram",
                    help="comma list of proposers measured against the baseline: ngram, "
                         "draft_model, eagle3")
    ap.add_argument("--draft-layers", type=int, default=8,
                    help="draft_model: the target's first N layers")
    ap.add_argument("--draft-vocab", type=int, default=32000,
                    help="eagle3: the random head's draft vocabulary (at most the target's)")
    ap.add_argument("--bracket", action="store_true",
                    help="run the baseline again last; report both and the ratio to their mean")
    ap.add_argument("--load-format", default="auto",
                    help="'dummy': random weights of the default model's shape (its tokenizer)")
    args = ap.parse_args()
    prompts = json.loads(PROMPTS.read_text())[:args.num_prompts]
    from vllm_core.model_executor.loader import resolve_model

    specs = {
        "ngram": {"method": "ngram", "num_speculative_tokens": args.k,
                  "prompt_lookup_max": args.lookup_max, "prompt_lookup_min": args.lookup_min},
        "draft_model": {"method": "draft_model", "num_speculative_tokens": args.k,
                        "model": resolve_model(None), "num_hidden_layers": args.draft_layers},
    }
    if "eagle3" in args.systems.split(","):
        specs["eagle3"] = {"method": "eagle3", "num_speculative_tokens": args.k,
                           "model": random_eagle3_head(args.draft_vocab)}
    base, base_tokens = run("vllm-core", None, prompts, args.max_tokens, args.max_model_len,
                            args.load_format)
    results = []
    for name in args.systems.split(","):
        line, tokens = run(f"vllm-core+{name}", specs[name], prompts, args.max_tokens,
                           args.max_model_len, args.load_format)
        line["speedup"] = round(line["output_tok_s"] / base["output_tok_s"], 3)
        line["identical_to_baseline"] = tokens == base_tokens
        if name == "draft_model":
            line["draft_layers"] = args.draft_layers
        if name == "eagle3":
            line["head"] = "random weights, published EAGLE-3 layout"
            line["draft_vocab"] = args.draft_vocab
        line["load_format"] = args.load_format
        results.append(line)
    if args.bracket:        # the baseline again after the others: how much the machine drifted
        again, again_tokens = run("vllm-core", None, prompts, args.max_tokens,
                                  args.max_model_len, args.load_format)
        base["baseline_runs_tok_s"] = [base["output_tok_s"], again["output_tok_s"]]
        mean = (base["output_tok_s"] + again["output_tok_s"]) / 2
        for line in results:
            line["speedup_vs_bracket_mean"] = round(line["output_tok_s"] / mean, 3)
    env = {"cpu": cpu_name(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    lines = [json.dumps({**line, **env}) for line in [base, *results]]
    for line in lines:
        print(line, flush=True)
    if args.output:
        with open(args.output, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
