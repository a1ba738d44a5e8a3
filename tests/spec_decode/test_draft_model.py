"""The draft-model proposer end to end on random-weight Llamas (CPU plugin): greedy tokens are
identical with and without speculation for a draft identical to the target (accepted 100%),
a different random draft, and a truncated-layer view of the target; with a mixed batch of
speculating and non-speculating requests, preemption and prefix caching; temperature sampling
keeps the target's distribution with a deliberately different draft (chi-square); a draft
with another vocabulary is refused with a clear error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

LLAMA = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def save_llama(path: str, seed: int, **overrides) -> str:
    model = random_hf_causal_lm("llama", {**LLAMA, **overrides}, seed=seed, weight_scale=0.3)
    model.save_pretrained(path)
    write_wordlevel_tokenizer(path, overrides.get("vocab_size", 256))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("draft_models")
    target = save_llama(str(root / "target"), seed=0)
    same = str(root / "same")
    shutil.copytree(target, same)              # the target's weights at another path
    other = save_llama(str(root / "other"), seed=7, num_hidden_layers=1, hidden_size=32,
                       intermediate_size=64, num_key_value_heads=1)
    return {"target": target, "same": same, "other": other}


def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(1, 250, (n,), generator=gen).tolist() for n in (9, 37, 5, 70, 20)]


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


def greedy(max_tokens: int = 30):
    from vllm_core import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def generate(llm, params, prompt_list=None):
    outs = llm.generate([{"prompt_token_ids": p} for p in (prompt_list or prompts())], params,
                        use_tqdm=False)
    return [[list(c.token_ids) for c in o.outputs] for o in outs]


def draft(path: str, k: int = 4, **extra) -> dict:
    return {"method": "draft_model", "model": path, "num_speculative_tokens": k, **extra}


@pytest.fixture(scope="module")
def baseline(models):
    llm, _ = make_llm(models["target"])
    return generate(llm, greedy())


def test_identical_draft_is_accepted_fully(models, baseline):
    """The target's weights loaded again as the draft (another path: a second model)."""
    llm, counter = make_llm(models["target"], draft(models["same"]))
    assert generate(llm, greedy()) == baseline
    assert counter.draft_tokens > 0 and counter.accepted == counter.draft_tokens
    assert counter.drafts < 5 * 30 / 2           # runs of up to 5 tokens per target step


def test_different_draft_greedy_identical(models, baseline):
    llm, counter = make_llm(models["target"], draft(models["other"], k=3))
    assert generate(llm, greedy()) == baseline
    assert counter.draft_tokens > 0 and counter.accepted < counter.draft_tokens


@pytest.mark.slow
def test_truncated_self_draft_mixed_batch_preemption_prefix_cache(models, baseline):
    """The target's first layer as the draft (shared modules); a mixed batch (requests with
    max_tokens 1 or 2 never get drafts next to ones that do), preemption under a tiny KV cache,
    prefix caching across two rounds."""
    from vllm_core import SamplingParams

    llm, counter = make_llm(models["target"], draft(models["target"], k=2,
                                                    num_hidden_layers=1),
                            num_gpu_blocks_override=16, max_num_batched_tokens=32,
                            enable_prefix_caching=True)
    assert generate(llm, greedy()) == baseline
    assert counter.draft_tokens > 0 and counter.preemptions > 0
    # mixed: plain (non-speculating: one token) requests next to speculating ones
    params = [greedy(), SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
              greedy(), SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
              greedy()]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts()], params, use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    assert got == [b[0][:p.max_tokens] for b, p in zip(baseline, params)]
    # second round: prompt + output hits cached blocks (target and draft caches)
    longer = [p + b[0] for p, b in zip(prompts(), baseline)]
    ref, _ = make_llm(models["target"], enable_prefix_caching=False)
    want = generate(ref, greedy(12), longer)
    assert generate(llm, greedy(12), longer) == want


def test_draft_dtype_and_async_scheduling(models, baseline):
    """A bfloat16 draft of a float32 target (a second model, separate cache dtype) under async
    scheduling: still identical greedy tokens."""
    llm, counter = make_llm(models["target"], draft(models["same"], dtype="bfloat16"),
                            async_scheduling=True)
    assert generate(llm, greedy()) == baseline
    assert counter.accepted > 0


def test_sampling_keeps_the_target_distribution(models):
    """Temperature + top-k sampling of the first generated tokens with a different random draft
    (draft probabilities q != p): the distribution of each of the first three tokens over many
    seeds matches the plain engine's (chi-square on the pooled counts)."""
    from vllm_core import SamplingParams

    prompt = [{"prompt_token_ids": prompts()[2]}]
    num = 300

    def tokens(llm) -> np.ndarray:
        params = [SamplingParams(temperature=1.5, top_k=6, max_tokens=3, ignore_eos=True,
                                 seed=s) for s in range(num)]
        outs = llm.generate(prompt * num, params, use_tqdm=False)
        return np.array([o.outputs[0].token_ids for o in outs])

    plain, _ = make_llm(models["target"], max_num_seqs=64, max_num_batched_tokens=512)
    spec, counter = make_llm(models["target"], draft(models["other"], k=2,
                                                     disable_by_batch_size=0),
                             max_num_seqs=64, max_num_batched_tokens=512)
    a, b = tokens(plain), tokens(spec)
    assert counter.draft_tokens > 0 and 0 < counter.accepted < counter.draft_tokens
    for pos in range(3):
        support = sorted(set(a[:, pos]) | set(b[:, pos]))
        ca = np.array([(a[:, pos] == t).sum() for t in support], dtype=float)
        cb = np.array([(b[:, pos] == t).sum() for t in support], dtype=float)
        keep = (ca + cb) >= 10                   # pool rare tokens into one bin
        ca = np.append(ca[keep], ca[~keep].sum())
        cb = np.append(cb[keep], cb[~keep].sum())
        mask = (ca + cb) > 0
        table = np.stack([ca[mask], cb[mask]])
        expected = table.sum(0) * 0.5
        stat = (((table - expected) ** 2) / expected).sum()
        pvalue = float(chi2.sf(stat, df=mask.sum() - 1))
        assert pvalue > 1e-3, (pos, table)


def test_vocab_mismatch_is_refused(models, tmp_path):
    other_vocab = save_llama(str(tmp_path / "v300"), seed=1, vocab_size=300)
    with pytest.raises(ValueError, match="vocabulary of 300 tokens"):
        make_llm(models["target"], draft(other_vocab))


def test_config_errors():
    from vllm_core.spec_decode.config import parse_speculative_config

    with pytest.raises(ValueError, match="model"):
        parse_speculative_config({"method": "draft_model"})
    with pytest.raises(ValueError, match="num_hidden_layers"):
        parse_speculative_config({"method": "ngram", "num_hidden_layers": 2})
    cfg = parse_speculative_config('{"model": "/x", "num_speculative_tokens": 3}')
    assert cfg.method == "draft_model" and cfg.num_speculative_tokens == 3
