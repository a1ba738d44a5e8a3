"""Speculative decoding on the GPU, Llama-3.1-8B shape with random bf16 weights, same run A/B.

One engine (``load_format="dummy"``) serves every run; a run without speculation detaches the
engine core's drafter (``engine.core.drafter = None``), so the A and B sides share weights,
KV cache and graphs. Prints one JSON line per run (``"bench": "spec_decode_gpu"``) with output tok/s, the
acceptance figures, and ``speedup`` against the run's baseline::

    python benchmarks/spec_decode_gpu.py --part b1      # gpu-8b-b1: replay draft, n-gram
    python benchmarks/spec_decode_gpu.py --part sweep   # batch sizes: the auto-off threshold
    python benchmarks/spec_decode_gpu.py --part b256    # gpu-8b, 256 requests, auto-off on

Proposers measured:
- ``replay``: drafts replay the target's own greedy continuation (recorded by the baseline run
  of the same prompts), optionally with every other draft run corrupted; this is a draft
  identical to the target with zero draft cost, i.e. the verification-side upper bound of a
  self-draft (no draft-model proposer exists yet);
- ``ngram``: prompt lookup, on prompts made of a repeated motif;
- ``draft-L<n>`` (``--part draft``): the draft-model proposer with a truncated-layer draft,
  the target's first ``n`` layers (shared weights, own KV cache), run on the worker;
- ``eagle3`` (``--part eagle3``): an EAGLE-3 head of the published layout for the 8B shape
  (``--draft-vocab`` draft tokens) with random bf16 weights, on the worker: acceptance ~0, so
  the line is the head's overhead per target step (auxiliary-state capture, catch-up, ``k``
  head steps, verifying rejected drafts) against no speculation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput_gpu import DEFAULT_MODEL_DIR, ensure_model_dir  # noqa: E402

from vllm_core.spec_decode.proposer import (  # noqa: E402
    NgramProposer,
    Proposer,
    WorkerDraftSlots,
)

KEY = 24          # prompt tokens that identify a request for the replay proposer


class ReplayProposer(Proposer):
    """Drafts = the recorded continuation of the request's prompt (keyed by its first tokens);
    every ``corrupt_every``-th call shifts one draft token (0: never)."""

    def __init__(self, prompts: list[list[int]], outputs: list[list[int]],
                 corrupt_every: int = 0) -> None:
        self.key_len = min([KEY] + [len(p) for p in prompts])
        self.table = {tuple(p[:self.key_len]): (len(p), o) for p, o in zip(prompts, outputs)}
        self.corrupt_every = corrupt_every
        self.calls = 0

    def propose(self, token_ids: np.ndarray, max_tokens: int) -> np.ndarray:
        entry = self.table.get(tuple(token_ids[:self.key_len].tolist()))
        if entry is None:
            return token_ids[:0]
        prompt_len, out = entry
        done = len(token_ids) - prompt_len
        drafts = np.asarray(out[done:done + max_tokens], dtype=np.int64)
        self.calls += 1
        if self.corrupt_every and len(drafts) and self.calls % self.corrupt_every == 0:
            i = len(drafts) // 2
            drafts[i] = drafts[i] - 1 if drafts[i] > 0 else 1     # stays in the vocabulary
        return drafts


class SpecTotals:
    def __init__(self) -> None:
        self.drafts = self.draft_tokens = self.accepted = 0

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        spec = scheduler_stats.spec_decoding
        if spec is not None:
            self.drafts += spec.num_drafts
            self.draft_tokens += spec.num_draft_tokens
            self.accepted += spec.num_accepted_tokens


def make_engine(args: argparse.Namespace, max_model_len: int, max_batch: int | None,
                draft_layers: int | None = None, eagle3_head: str | None = None) -> Any:
    from vllm_core import LLM

    folder = Path(args.model_dir)
    if folder == DEFAULT_MODEL_DIR:
        ensure_model_dir(folder)
    spec: dict[str, Any] = {"method": "ngram", "num_speculative_tokens": args.k,
                            "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    if draft_layers is not None:        # the target's first layers as the draft (worker side)
        spec = {"method": "draft_model", "num_speculative_tokens": args.k,
                "model": os.path.abspath(folder), "num_hidden_layers": draft_layers}
    if eagle3_head is not None:         # an EAGLE-3 head (worker side)
        spec = {"method": "eagle3", "num_speculative_tokens": args.k, "model": eagle3_head}
    if max_batch is not None:
        spec["disable_by_batch_size"] = max_batch
    llm = LLM(str(folder), dtype=args.dtype, load_format="dummy", max_model_len=max_model_len,
              max_num_seqs=256, gpu_memory_utilization=0.9, speculative_config=spec,
              enable_prefix_caching=False)     # runs repeat prompts: no cache hits across
    totals = SpecTotals()
    llm.llm_engine.stat_loggers.append(totals)
    llm._spec_totals = totals
    llm._drafter = llm.llm_engine.drafter
    return llm


def timed(llm: Any, prompts: list[list[int]], output_len: int, proposer: Proposer | None,
          label: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    import torch

    from vllm_core import SamplingParams

    core = llm.llm_engine.core          # in-process (LLM's default): its drafter is settable
    core.drafter = None
    if proposer is not None:
        core.drafter = llm._drafter
        core.drafter.proposer = proposer
    totals = llm._spec_totals
    totals.__init__()
    runner = core.executor.worker.runner
    graph0, eager0 = runner.num_graph_steps, runner.num_eager_steps
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True,
                            detokenize=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    n = sum(len(t) for t in tokens)
    line = {"bench": "spec_decode_gpu", **label, "requests": len(prompts),
            "prompt_len": len(prompts[0]), "output_len": output_len, "output_tokens": n,
            "elapsed_s": round(elapsed, 3), "output_tok_s": round(n / elapsed, 1),
            "draft_tokens": totals.draft_tokens, "accepted_tokens": totals.accepted,
            "acceptance_rate": round(totals.accepted / max(totals.draft_tokens, 1), 3),
            "mean_accepted_length": round(1 + totals.accepted / max(totals.drafts, 1), 3),
            "graph_steps": runner.num_graph_steps - graph0,
            "eager_steps": runner.num_eager_steps - eager0,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    return line, tokens


def silence_layers_after(llm: Any, n: int) -> None:
    """Zero the output projections (``o_proj``, ``down_proj``) of the target's layers from
    ``n`` on, in place (captured graphs keep their addresses): those layers add nothing to the
    residual stream, so the target's logits are those of its first ``n`` layers."""
    model = llm.llm_engine.core.executor.worker.runner.model
    for layer in model.model.layers[n:]:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()


def random_eagle3_head(model_dir: Path, draft_vocab: int) -> str:
    """A random bf16 EAGLE-3 head for the target in ``model_dir`` (written once, next to it)."""
    import torch

    from vllm_core.model_executor.testing import write_random_eagle3_head

    cfg = json.loads((model_dir / "config.json").read_text())
    folder = model_dir.parent / f"{model_dir.name}-eagle3-head-{draft_vocab}"
    if (folder / "config.json").is_file():
        return str(folder)
    size = min(draft_vocab, int(cfg["vocab_size"]))
    vocab = torch.randperm(int(cfg["vocab_size"]), generator=torch.Generator().manual_seed(0))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)       # random weights written in bf16
    try:
        write_random_eagle3_head(str(folder), cfg, vocab[:size].sort().values, seed=0,
                                 weight_scale=0.02)
    finally:
        torch.set_default_dtype(default)
    return str(folder)


def emit(line: dict[str, Any], out: Path | None, base: dict[str, Any] | None = None) -> None:
    if base is not None:
        line["speedup"] = round(line["output_tok_s"] / base["output_tok_s"], 3)
        line["identical_to_baseline"] = line.pop("_identical", None)
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(text + "\n")


def profile_runs(llm: Any, prompts: list[list[int]], output_len: int,
                 runs: list[tuple[str, Proposer | None]], out: Path | None) -> None:
    """Each run once more under torch.profiler (host and device); prints the top ops by host
    and by device time and the runner's per-step timing, and writes the tables next to ``out``."""
    from torch.profiler import ProfilerActivity, profile

    runner = llm.llm_engine.core.executor.worker.runner
    for name, proposer in runs:
        timed(llm, prompts, 16, proposer, {})               # warm (graphs, Triton)
        steps0, exec0 = runner.timing.steps, runner.timing.execute_s
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            line, _ = timed(llm, prompts, output_len, proposer, {"system": name})
        steps = runner.timing.steps - steps0
        table_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        table_dev = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30)
        summary = {**line, "profiled": True, "steps": steps,
                   "runner_execute_ms_per_step": round(
                       1e3 * (runner.timing.execute_s - exec0) / max(steps, 1), 3)}
        print(json.dumps(summary), flush=True)
        print(f"=== {name}: by host time\n{table_cpu}\n=== {name}: by device time\n{table_dev}",
              flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            (out.parent / f"profile_{name}.txt").write_text(table_cpu + "\n" + table_dev)


def random_prompts(num: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    return np.random.default_rng(seed).integers(0, vocab, size=(num, length)).tolist()


def repetitive_prompts(num: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        motif = rng.integers(0, vocab, size=16).tolist()
        out.append((motif * (length // 16 + 1))[:length])
    return out


def ab(llm: Any, prompts: list[list[int]], output_len: int, label: dict[str, Any],
       runs: list[tuple[str, Any]], out: Path | None, bracket: bool = False) -> None:
    """A baseline run, then each (name, proposer factory) against it; with ``bracket`` a
    second baseline run after them and a summary line of each run against the mean of the
    two baselines (run-to-run drift of one engine is a few percent on gpu-8b)."""
    base, base_tokens = timed(llm, prompts, output_len, None, {**label, "system": "baseline"})
    emit(base, out)
    lines = []
    for name, factory in runs:
        line, tokens = timed(llm, prompts, output_len, factory(prompts, base_tokens),
                             {**label, "system": name})
        line["_identical"] = tokens == base_tokens
        emit(line, out, base)
        lines.append(line)
    if bracket:
        after, _ = timed(llm, prompts, output_len, None, {**label, "system": "baseline-after"})
        emit(after, out)
        mean = (base["output_tok_s"] + after["output_tok_s"]) / 2
        emit({"kind": "bracket_summary", **label, "baseline_runs_tok_s":
              [base["output_tok_s"], after["output_tok_s"]],
              **{f"{ln['system']}_vs_baseline_mean": round(ln["output_tok_s"] / mean, 3)
                 for ln in lines}}, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["b1", "sweep", "b256", "draft", "eagle3", "profile"],
                    required=True)
    ap.add_argument("--draft-vocab", type=int, default=32000,
                    help="--part eagle3: the random head's draft vocabulary")
    ap.add_argument("--draft-layers", type=int, default=4,
                    help="--part draft: the draft is the target's first N layers")
    ap.add_argument("--target-equals-draft", action="store_true",
                    help="--part draft: zero o_proj and down_proj of the target's layers past "
                         "the draft's, so the truncated draft predicts the target exactly "
                         "(high acceptance at the real cost of both models)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR),
                    help="default: the 8B shape (created); a small HF folder for a dry run")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply request counts and lengths (a CPU dry run: 0.1)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    out = Path(args.output) if args.output else None
    k = args.k
    replay = ("replay", lambda p, t: ReplayProposer(p, t))
    replay_half = ("replay-corrupt-2", lambda p, t: ReplayProposer(p, t, corrupt_every=2))
    ngram = ("ngram", lambda p, t: NgramProposer(2, 4))
    def sz(n: int) -> int:
        return max(1, int(n * args.scale))

    if args.part == "b1":                     # gpu-8b-b1: 1 request, 128 / 512
        p_len, o_len = sz(128), sz(512)
        llm = make_engine(args, p_len + o_len + k + 1, max_batch=0)
        vocab = llm.llm_engine.config.model.arch.vocab_size
        timed(llm, random_prompts(1, p_len, 99, vocab), 16, None, {})
        label = {"workload": "gpu-8b-b1", "k": k}
        ab(llm, random_prompts(1, p_len, 0, vocab), o_len, label,
           [replay, replay_half, ngram], out)
        ab(llm, repetitive_prompts(1, p_len, 1, vocab), o_len,
           {**label, "prompts": "repetitive"}, [ngram], out)
    elif args.part == "profile":              # where a verification step's time goes
        p_len, o_len = sz(128), sz(96)
        llm = make_engine(args, p_len + o_len + k + 1, max_batch=0)
        vocab = llm.llm_engine.config.model.arch.vocab_size
        prompts = random_prompts(1, p_len, 0, vocab)
        _, base_tokens = timed(llm, prompts, o_len, None, {})
        profile_runs(llm, prompts, o_len, [("baseline", None),
                                           ("replay", ReplayProposer(prompts, base_tokens))],
                     out)
    elif args.part == "draft":                # gpu-8b-b1 with a truncated-layer draft model
        p_len, o_len = sz(128), sz(512)
        llm = make_engine(args, p_len + o_len + k + 1, max_batch=0,
                          draft_layers=args.draft_layers)
        if args.target_equals_draft:
            silence_layers_after(llm, args.draft_layers)
        vocab = llm.llm_engine.config.model.arch.vocab_size
        timed(llm, random_prompts(1, p_len, 99, vocab), 16, None, {})
        timed(llm, random_prompts(1, p_len, 98, vocab), 16, WorkerDraftSlots(), {})
        ab(llm, random_prompts(1, p_len, 0, vocab), o_len,
           {"workload": "gpu-8b-b1", "k": k, "draft_layers": args.draft_layers,
            "target_equals_draft": args.target_equals_draft},
           [(f"draft-L{args.draft_layers}", lambda p, t: WorkerDraftSlots())], out)
    elif args.part == "eagle3":               # gpu-8b-b1 with a random EAGLE-3 head
        p_len, o_len = sz(128), sz(512)
        folder = Path(args.model_dir)
        if folder == DEFAULT_MODEL_DIR:
            ensure_model_dir(folder)
        head = random_eagle3_head(folder, args.draft_vocab)
        llm = make_engine(args, p_len + o_len + k + 1, max_batch=0, eagle3_head=head)
        vocab = llm.llm_engine.config.model.arch.vocab_size
        timed(llm, random_prompts(1, p_len, 99, vocab), 16, None, {})
        timed(llm, random_prompts(1, p_len, 98, vocab), 16, WorkerDraftSlots(), {})
        ab(llm, random_prompts(1, p_len, 0, vocab), o_len,
           {"workload": "gpu-8b-b1", "k": k, "head": "eagle3 random weights",
            "draft_vocab": args.draft_vocab},
           [("eagle3", lambda p, t: WorkerDraftSlots())], out)
    elif args.part == "sweep":                # speed-up against batch size, forced on
        p_len, o_len = sz(512), sz(128)
        llm = make_engine(args, p_len + o_len + k + 1, max_batch=0)
        vocab = llm.llm_engine.config.model.arch.vocab_size
        timed(llm, random_prompts(2, p_len, 99, vocab), 16, None, {})
        for batch in (1, 16, 32, 64, 256):
            ab(llm, random_prompts(sz(batch), p_len, batch, vocab), o_len,
               {"workload": f"sweep-b{sz(batch)}", "k": k, "disable_by_batch_size": 0},
               [replay_half], out)
    else:                                     # gpu-8b with the default auto-off threshold
        p_len, o_len = sz(512), sz(256)
        llm = make_engine(args, p_len + o_len + k + 1, max_batch=None)
        vocab = llm.llm_engine.config.model.arch.vocab_size
        timed(llm, random_prompts(2, p_len, 99, vocab), 16, None, {})
        ab(llm, random_prompts(sz(256), p_len, 0, vocab), o_len,
           {"workload": "gpu-8b", "k": k,
            "disable_by_batch_size": llm.llm_engine.config.speculative.max_batch_size},
           [replay_half, ngram], out, bracket=True)


if __name__ == "__main__":
    main()
