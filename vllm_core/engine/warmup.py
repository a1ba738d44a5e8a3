"""Start-up warm-up: real steps through the engine core before it serves, so that every kernel
a request can hit is compiled (Triton autotuning and JIT, inductor, lazy CUDA modules, oneDNN
primitives) during start-up instead of inside the first requests.

``run_warmup(core)`` sends requests through the core's own scheduler and workers (the same code
as serving, nothing faked):

1. one short request per sampling variant (``SAMPLING_VARIANTS``: greedy, random, top-k, top-p,
   min-p, logprobs with prompt logprobs, penalties), admitted together: a batched prefill;
2. once they decode, a long prompt (up to one step's token budget): a mixed step, the long
   prefill chunk next to the decodes (and, when the budget is large, pure prefill chunks);
3. the variants decode together to the end: decode steps where every sampler path runs in one
   batch.

Contract: when it returns, no warm-up request is left in the core, the prefix cache holds none
of their blocks (``reset_prefix_cache``; the requests also carry their own ``cache_salt``), and
the step counters they produced were consumed (they never reach a stat logger). Speculative
decoding and the two-phase step run if the engine has them, like for any request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from vllm_core.engine.request import Request
from vllm_core.logger import init_logger
from vllm_core.sampling.params import SamplingParams

logger = init_logger(__name__)

WARMUP_SALT = "vllm-core-warmup"
SHORT_PROMPT = 16                 # tokens of each sampling-variant request
DECODE_TOKENS = 8                 # tokens each sampling-variant request generates
MAX_STEPS = 1000                  # a bound: a warm-up that does not finish is a bug

SAMPLING_VARIANTS: dict[str, dict[str, Any]] = {
    "greedy": dict(temperature=0.0),
    "random": dict(temperature=1.0, seed=1),
    "top_k": dict(temperature=0.8, top_k=20, seed=2),
    "top_p": dict(temperature=0.8, top_p=0.9, seed=3),
    "min_p": dict(temperature=0.8, min_p=0.05, seed=4),
    "logprobs": dict(temperature=0.0, logprobs=5, prompt_logprobs=2),
    "penalties": dict(temperature=0.7, repetition_penalty=1.2, frequency_penalty=0.5,
                      presence_penalty=0.5, seed=5),
}


@dataclass(slots=True)
class WarmUpReport:
    """What the warm-up ran. ``tokens`` maps each request (a sampling variant, or "prefill"
    for the long prompt) to the tokens it generated; ``logprobs`` the variants that got
    logprobs back; ``mixed_steps`` the steps that computed prefill and decode tokens together;
    ``max_decode_batch`` the most requests that decoded in one step."""

    seconds: float = 0.0
    steps: int = 0
    long_prompt_tokens: int = 0
    mixed_steps: int = 0
    max_decode_batch: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    logprobs: list[str] = field(default_factory=list)


def _prompt(seed: int, length: int, vocab_size: int) -> list[int]:
    """Deterministic token ids spread over the vocabulary (no special meaning needed)."""
    return [(seed * 7919 + j * 104729) % vocab_size for j in range(length)]


def _params(fields: dict[str, Any], max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, detokenize=False, **fields)


def long_prompt_len(core: Any) -> int:
    """The long prompt: one step's token budget, bounded by the context and by what the KV
    cache holds beside the variants (0 when nothing is left)."""
    config = core.config
    budget = config.scheduler.max_num_batched_tokens
    per_variant = SHORT_PROMPT + DECODE_TOKENS
    cache_tokens = (core.num_blocks - 1) * config.cache.block_size
    room = cache_tokens - len(SAMPLING_VARIANTS) * (per_variant + config.cache.block_size)
    return max(0, min(budget, config.model.max_model_len - 2, room - config.cache.block_size))


def run_warmup(core: Any) -> WarmUpReport:
    """Run the warm-up on ``core`` (an ``EngineCore`` with nothing queued); see the module
    docstring for what it covers and leaves behind."""
    t0 = time.perf_counter()
    vocab = core.config.model.arch.vocab_size
    report = WarmUpReport(long_prompt_tokens=long_prompt_len(core))
    names = {f"warmup-{name}": name for name in SAMPLING_VARIANTS}
    for i, (rid, name) in enumerate(names.items()):
        core.add_request(Request(rid, _prompt(i + 1, SHORT_PROMPT, vocab),
                                 _params(SAMPLING_VARIANTS[name], DECODE_TOKENS),
                                 cache_salt=WARMUP_SALT))
    long_added = report.long_prompt_tokens == 0
    while core.has_unfinished_requests():
        if report.steps >= MAX_STEPS:
            raise RuntimeError(f"the warm-up did not finish in {MAX_STEPS} steps")
        scheduler = core.scheduler
        decoding = sum(1 for r in scheduler.running
                       if r.num_computed_tokens >= r.num_prompt_tokens)
        if not long_added and decoding:
            core.add_request(Request("warmup-prefill",
                                     _prompt(97, report.long_prompt_tokens, vocab),
                                     _params({"temperature": 0.0}, 2), cache_salt=WARMUP_SALT))
            names["warmup-prefill"] = "prefill"
            long_added = True
        step = core.step()
        report.steps += 1
        report.max_decode_batch = max(report.max_decode_batch, decoding)
        if step.stats is not None and step.stats.num_prompt_tokens and decoding:
            report.mixed_steps += 1
        for out in step.outputs:
            name = names.get(out.req_id, out.req_id)
            report.tokens[name] = report.tokens.get(name, 0) + len(out.new_token_ids)
            if out.new_logprobs and name not in report.logprobs:
                report.logprobs.append(name)
    core.scheduler.reset_prefix_cache()
    core.scheduler.make_stats()                 # drop the counters the warm-up produced
    report.seconds = time.perf_counter() - t0
    logger.info("start-up: warm-up ran %d steps in %.1f s (%d sampling variants, a %d-token "
                "prefill, %d mixed steps, decode batches up to %d)", report.steps,
                report.seconds, len(SAMPLING_VARIANTS), report.long_prompt_tokens,
                report.mixed_steps, report.max_decode_batch)
    return report
