"""``LLM.beam_search`` driver: beams as one-token engine requests sharing cached prefixes.

Each round submits, for every live beam of every prompt, a greedy one-token request over
``prompt + beam.tokens`` asking for ``2 * beam_width`` logprobs; prefix caching makes the shared
prompt and beam prefixes free to recompute. The pure bookkeeping lives in
``vllm_core.sampling.beam_search``.

With ``params.structured_outputs`` each step request carries the grammar with the beam's tokens
as ``prefix_token_ids`` (its matcher starts after them), so the grammar bitmask masks that
beam's next-token logits: its top logprobs are over the allowed tokens only (renormalised;
the disallowed ones, -inf, are dropped from the candidates).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from vllm_core.sampling.beam_search import (
    BeamSearchOutput,
    BeamSearchParams,
    BeamSearchSequence,
    beam_search_step,
    finalize_beams,
    is_search_done,
)
from vllm_core.sampling.params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.entrypoints.llm import LLM


def run_beam_search(llm: LLM, prompts: list[Any], params: BeamSearchParams,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
    engine = llm.llm_engine
    tokenizer = engine.tokenizer
    eos = engine.eos_token_ids[0] if engine.eos_token_ids else None
    prompt_ids = [engine.process_inputs(p).prompt_token_ids for p in prompts]
    max_len = engine.config.model.max_model_len
    for ids in prompt_ids:
        if len(ids) + params.max_tokens > max_len:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) "
                             f"exceeds max_model_len={max_len}")
    step_params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=params.num_logprobs,
                                 ignore_eos=True, detokenize=False)
    grammar = params.structured_outputs
    if grammar is not None:
        engine.structured_output_manager.prepare(grammar)     # ValueError naming the field

    def step_params_for(beam: BeamSearchSequence) -> SamplingParams:
        if grammar is None:
            return step_params
        beam_params = step_params.clone()
        beam_params.structured_outputs = dataclasses.replace(
            grammar, prefix_token_ids=list(beam.tokens))
        return beam_params

    live: list[list[BeamSearchSequence]] = [[BeamSearchSequence()] for _ in prompts]
    done: list[list[BeamSearchSequence]] = [[] for _ in prompts]
    active = set(range(len(prompts)))
    bar = tqdm(total=params.max_tokens, desc="Beam search", disable=not use_tqdm)
    while active:
        order = [(i, b) for i in sorted(active) for b in range(len(live[i]))]
        requests = [{"prompt_token_ids": prompt_ids[i] + live[i][b].tokens} for i, b in order]
        outputs = llm.generate(requests, [step_params_for(live[i][b]) for i, b in order],
                               use_tqdm=False)
        tops: dict[int, list[dict]] = {i: [] for i in active}
        for (i, _), out in zip(order, outputs):
            if not out.outputs[0].logprobs:            # the grammar refused the beam's prefix
                raise RuntimeError(f"beam search step failed: {out.outputs[0].finish_reason}")
            top = out.outputs[0].logprobs[0]
            if grammar is not None:
                top = {t: lp for t, lp in top.items() if lp.logprob > -math.inf}
            tops[i].append(top)
        for i in list(active):
            step = beam_search_step(live[i], tops[i], params, eos)
            done[i].extend(step.completed)
            live[i] = step.live
            if is_search_done(live[i], done[i], params, eos):
                active.discard(i)
        bar.update(1)
    bar.close()
    results = []
    for i in range(len(prompts)):
        out = finalize_beams(live[i], done[i], params, eos)
        for seq in out.sequences:
            seq.text = tokenizer.decode(seq.tokens, skip_special_tokens=True)
        results.append(out)
    return results
