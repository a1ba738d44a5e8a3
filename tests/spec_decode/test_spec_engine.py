"""Speculative decoding end to end on a random-weight Llama (CPU plugin): greedy tokens are
identical with and without speculation (n-gram lookup, a perfect draft, a partly wrong draft),
with preemption, prefix caching, chunked budgets, async scheduling, stop tokens inside an
accepted run, max_tokens, n > 1 and logprobs; seeded sampling is reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer
from vllm_core.spec_decode.proposer import Proposer

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
         "prompt_lookup_min": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("spec_llama"))
    model = random_hf_causal_lm("llama", dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=0, weight_scale=0.3)
    model.save_pretrained(path)
    write_wordlevel_tokenizer(path, 256)
    return path


def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    motif = torch.randint(1, 250, (9,), generator=gen).tolist()
    return [motif * 3 + motif[:4],                                   # lookup applies
            torch.randint(1, 250, (37,), generator=gen).tolist(),
            motif * 2 + torch.randint(1, 250, (20,), generator=gen).tolist() + motif[:5],
            [5, 6, 7, 8, 5, 6, 7],
            torch.randint(1, 250, (70,), generator=gen).tolist()]


class SpecCounter:
    def __init__(self) -> None:
        self.drafts = self.draft_tokens = self.accepted = self.preemptions = 0

    def record(self, scheduler_stats, iteration_stats) -> None:
        self.preemptions += scheduler_stats.num_preemptions
        spec = scheduler_stats.spec_decoding
        if spec is not None:
            self.drafts += spec.num_drafts
            self.draft_tokens += spec.num_draft_tokens
            self.accepted += spec.num_accepted_tokens


def make_llm(folder: str, spec=None, **kwargs):
    from vllm_core import LLM

    opts = dict(dtype="float32", max_model_len=192, num_gpu_blocks_override=64,
                max_num_seqs=8, max_num_batched_tokens=64, seed=0, enforce_eager=True,
                async_scheduling=False, speculative_config=spec)
    opts.update(kwargs)
    llm = LLM(folder, **opts)
    counter = SpecCounter()
    llm.llm_engine.stat_loggers.append(counter)
    return llm, counter


def generate(llm, params, prompt_list=None):
    outs = llm.generate([{"prompt_token_ids": p} for p in (prompt_list or prompts())], params,
                        use_tqdm=False)
    return [[(list(c.token_ids), c.finish_reason) for c in o.outputs] for o in outs]


def greedy_params():
    from vllm_core import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def baseline(folder):
    llm, _ = make_llm(folder)
    return generate(llm, greedy_params())


class TableProposer(Proposer):
    """Drafts from known continuations (prompt tuple -> its greedy output), corrupting every
    ``wrong_every``-th draft token (0: never): a draft model that is perfect, or partly
    wrong, for tests."""

    def __init__(self, baseline_by_prompt: dict[tuple, list[int]], wrong_every: int = 0):
        self.table = baseline_by_prompt
        self.wrong_every = wrong_every
        self.calls = 0

    def propose(self, token_ids: np.ndarray, max_tokens: int) -> np.ndarray:
        tokens = token_ids.tolist()
        for prompt, out in self.table.items():
            n = len(prompt)
            if tokens[:n] == list(prompt):
                done = len(tokens) - n
                drafts = list(out[done:done + max_tokens])
                if self.wrong_every:
                    self.calls += 1
                    if drafts and self.calls % self.wrong_every == 0:
                        drafts[len(drafts) // 2] = (drafts[len(drafts) // 2] + 1) % 256
                return np.asarray(drafts, dtype=np.int64)
        return token_ids[:0]


def test_ngram_greedy_identical(folder, baseline):
    llm, counter = make_llm(folder, NGRAM)
    assert generate(llm, greedy_params()) == baseline
    assert counter.draft_tokens > 0     # (a random model rarely repeats itself: the table
    #                                      proposer below exercises acceptance)


def test_perfect_draft_is_accepted_fully_and_saves_steps(folder, baseline):
    llm, counter = make_llm(folder, NGRAM)
    table = {tuple(p): out[0][0] for p, out in zip(prompts(), baseline)}
    llm.llm_engine.drafter.proposer = TableProposer(table)
    assert generate(llm, greedy_params()) == baseline
    assert counter.draft_tokens > 0 and counter.accepted == counter.draft_tokens
    # 40 tokens per request in runs of up to 5: far fewer verifying steps than tokens
    assert counter.drafts < 5 * 40 / 2


def test_partly_wrong_drafts_identical_with_preemption_and_small_budget(folder, baseline):
    """Rejected drafts are rolled back (KV slots rewritten) while requests are preempted and
    recomputed and the token budget truncates drafts."""
    llm, counter = make_llm(folder, NGRAM, num_gpu_blocks_override=16,
                            max_num_batched_tokens=24)
    table = {tuple(p): out[0][0] for p, out in zip(prompts(), baseline)}
    llm.llm_engine.drafter.proposer = TableProposer(table, wrong_every=2)
    assert generate(llm, greedy_params()) == baseline
    assert 0 < counter.accepted < counter.draft_tokens
    assert counter.preemptions > 0


def test_prefix_cache_holds_only_accepted_tokens(folder, baseline):
    """Wrong drafts never reach the prefix cache: a second round whose prompts are the first
    round's prompt + output hits cached blocks and still decodes the same tokens."""
    llm, counter = make_llm(folder, NGRAM, enable_prefix_caching=True)
    table = {tuple(p): out[0][0] for p, out in zip(prompts(), baseline)}
    llm.llm_engine.drafter.proposer = TableProposer(table, wrong_every=3)
    assert generate(llm, greedy_params()) == baseline
    from vllm_core import SamplingParams

    longer = [p + out[0][0] for p, out in zip(prompts(), baseline)]
    ref, _ = make_llm(folder, enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm.llm_engine.drafter.proposer = make_ngram()
    assert generate(llm, params, longer) == generate(ref, params, longer)
    assert llm.llm_engine.scheduler.kv_cache_manager.prefix_cache_stats is not None


def make_ngram():
    from vllm_core.spec_decode.proposer import NgramProposer

    return NgramProposer(2, 4)


def test_async_scheduling_and_auto_off_identical(folder, baseline):
    """Async scheduling stays on for steps that do not speculate (here: more than 2 running
    requests); the steps that do (once requests with fewer tokens have finished) run without
    overlap."""
    from vllm_core import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
              for n in (6, 12, 40, 18, 40)]
    spec = dict(NGRAM, disable_by_batch_size=2)
    llm, counter = make_llm(folder, spec, async_scheduling=True)
    table = {tuple(p): out[0][0] for p, out in zip(prompts(), baseline)}
    llm.llm_engine.drafter.proposer = TableProposer(table, wrong_every=2)
    got = generate(llm, params)
    assert [g[0][0] for g in got] == [b[0][0][:p.max_tokens] for b, p in zip(baseline, params)]
    assert counter.draft_tokens > 0
    assert llm.llm_engine.executor.worker.runner.num_fed_rows > 0


def test_stops_max_tokens_n_and_logprobs(folder):
    """A stop token inside an accepted run ends the output there; max_tokens is never
    exceeded; n > 1 children speculate independently; each emitted token has its logprobs."""
    from vllm_core import SamplingParams

    ref, _ = make_llm(folder)
    p = prompts()
    base = ref.generate([{"prompt_token_ids": p[0]}], SamplingParams(
        temperature=0.0, max_tokens=30, ignore_eos=True), use_tqdm=False)[0].outputs[0]
    stop = base.token_ids[13]
    params = [SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[stop],
                             ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True, n=2),
              SamplingParams(temperature=0.0, max_tokens=11, ignore_eos=True, logprobs=0)]
    expected = [[(c.token_ids, c.finish_reason, [sorted(lp) for lp in c.logprobs or []])
                 for c in o.outputs]
                for o in ref.generate([{"prompt_token_ids": q} for q in p[:3]], params,
                                      use_tqdm=False)]
    llm, counter = make_llm(folder, NGRAM)
    table = {tuple(q): base.token_ids for q in p[:1]}
    llm.llm_engine.drafter.proposer = TableProposer(table)
    got = [[(c.token_ids, c.finish_reason, [sorted(lp) for lp in c.logprobs or []])
            for c in o.outputs]
           for o in llm.generate([{"prompt_token_ids": q} for q in p[:3]], params,
                                 use_tqdm=False)]
    assert got == expected
    assert got[0][0][1] == "stop" and got[0][0][0][-1] == stop
    assert len(got[0][0][0]) == 14 and len(got[0][0][2]) == 14
    assert all(len(c[0]) == 7 for c in got[1]) and len(got[2][0][0]) == 11
    assert counter.accepted > 0


def test_seeded_sampling_reproducible_with_penalties(folder):
    from vllm_core import SamplingParams

    params = [SamplingParams(temperature=0.9, seed=3, max_tokens=25, ignore_eos=True),
              SamplingParams(temperature=0.7, top_k=20, top_p=0.9, seed=11, max_tokens=25,
                             ignore_eos=True, repetition_penalty=1.2, presence_penalty=0.3,
                             logprobs=1)]
    runs = []
    for _ in range(2):
        llm, counter = make_llm(folder, NGRAM)
        runs.append(generate(llm, params, prompts()[:2]))
    assert runs[0] == runs[1]
    assert all(len(c[0]) == 25 for r in runs[0] for c in r)


def test_stop_string_inside_an_accepted_run(folder):
    """A stop string completed in the middle of a verified run ends the output at that token,
    exactly as without speculation (the run's later tokens are dropped)."""
    from vllm_core import SamplingParams

    ref, _ = make_llm(folder)
    p = prompts()[0]
    plain = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    base = ref.generate([{"prompt_token_ids": p}], plain, use_tqdm=False)[0].outputs[0]
    stop = base.text.split()[13]
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop],
                            logprobs=1)
    want = ref.generate([{"prompt_token_ids": p}], params, use_tqdm=False)[0].outputs[0]
    llm, counter = make_llm(folder, NGRAM)
    llm.llm_engine.drafter.proposer = TableProposer({tuple(p): base.token_ids})
    got = llm.generate([{"prompt_token_ids": p}], params, use_tqdm=False)[0].outputs[0]
    assert (got.token_ids, got.text, got.finish_reason, got.stop_reason) == (
        want.token_ids, want.text, "stop", stop)
    assert len(got.logprobs) == len(got.token_ids) < 30
    assert counter.accepted > 0
