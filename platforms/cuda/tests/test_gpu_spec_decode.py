"""Speculative decoding on an NVIDIA GPU: the rejection sampler on the device (exponential-race
sampling of the residual) preserves the target distribution, greedy outputs are identical
with and without n-gram speculation, and verification steps replay CUDA graphs of k + 1 tokens
per request with the tokens of eager verification.

Marked ``gpu``; skipped with the reason when torch sees no CUDA device.
"""

from __future__ import annotations

import numpy as np
import torch
from gpu_models import GPU_ONLY

pytestmark = GPU_ONLY


def test_rejection_sampling_on_gpu_preserves_target():
    from scipy.stats import chisquare

    from vllm_core.sampling.metadata import RequestSamplingState, build_sampling_metadata
    from vllm_core.sampling.params import SamplingParams
    from vllm_core.sampling.sampler import Sampler
    from vllm_core.spec_decode.rejection_sampler import rejection_sample

    vocab, num = 512, 20000
    torch.manual_seed(0)
    logits = (torch.randn(2, vocab) * 3).cuda()
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.9)
    states = [RequestSamplingState(params, [1], [])] * (2 * num)
    md = build_sampling_metadata(states, vocab, "cuda")
    p0 = Sampler.probs(logits.clone(), build_sampling_metadata(states[:2], vocab, "cuda"))[0]
    p0 = p0.double().cpu().numpy()
    support = np.flatnonzero(p0 > 0)
    bad = support[np.argmin(p0[support])]
    drafts = torch.tensor([bad, -1], device="cuda").repeat(num)
    row_start = torch.arange(num, device="cuda").repeat_interleave(2) * 2
    out = rejection_sample(logits.repeat(num, 1), md, drafts, row_start)
    first = out.token_ids.view(num, 2)[:, 0].cpu().numpy()
    counts = np.bincount(first, minlength=vocab).astype(np.float64)
    assert counts[p0 == 0].sum() == 0
    expected = p0[support] / p0[support].sum() * num
    keep = expected >= 5                   # chi-square needs populated cells: pool the tail
    obs, exp = counts[support][keep], expected[keep]
    if not keep.all():
        obs = np.append(obs, counts[support][~keep].sum())
        exp = np.append(exp, expected[~keep].sum())
    assert chisquare(obs, exp).pvalue > 1e-3


def tiny_llama(folder, seed: int) -> None:
    """A random-weight 2-layer Llama (vocabulary 256) and its word-level tokenizer."""
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    model = random_hf_causal_lm("llama", dict(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=seed, weight_scale=0.3)
    model.save_pretrained(str(folder))
    write_wordlevel_tokenizer(str(folder), 256)


def test_greedy_identical_with_ngram_on_gpu(tmp_path):
    from vllm_core import LLM, SamplingParams

    tiny_llama(tmp_path, seed=0)
    rng = np.random.default_rng(0)
    motif = rng.integers(1, 250, 11).tolist()
    prompts = [motif * 4, rng.integers(1, 250, 50).tolist(), motif * 2 + [7, 8, 9]]
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)

    def run(**kwargs):
        llm = LLM(str(tmp_path), dtype="float32", max_model_len=256,
                  num_gpu_blocks_override=256, max_num_seqs=8, **kwargs)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs], llm.llm_engine.core.executor.worker.runner

    spec = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
    with_spec, runner = run(speculative_config=spec)
    assert with_spec == run()[0]
    # the verification steps replayed graphs of k + 1 = 5 tokens per request: only the
    # prefill steps ran eagerly
    assert runner.verify_graphs is not None and runner.verify_graphs.query_len == 5
    assert runner.num_graph_steps > 0 and runner.num_eager_steps <= len(prompts)


def test_verification_graphs_match_eager_verification(tmp_path):
    """A perfect draft (the target's own greedy continuation) verified by replayed graphs and
    eagerly (``enforce_eager``): the tokens of no speculation, and with graphs no verification
    step runs eagerly."""
    from vllm_core import LLM, SamplingParams
    from vllm_core.spec_decode.proposer import Proposer

    tiny_llama(tmp_path, seed=1)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(1, 250, n).tolist() for n in (9, 30, 17, 5, 41)]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}

    class Replay(Proposer):
        def __init__(self, outputs: dict[tuple, list[int]]) -> None:
            self.outputs = outputs

        def propose(self, token_ids: np.ndarray, max_tokens: int) -> np.ndarray:
            for prompt, out in self.outputs.items():
                if tuple(token_ids[:len(prompt)].tolist()) == prompt:
                    done = len(token_ids) - len(prompt)
                    return np.asarray(out[done:done + max_tokens], dtype=np.int64)
            return token_ids[:0]

    def run(enforce_eager: bool, replay: dict | None):
        llm = LLM(str(tmp_path), dtype="float32", max_model_len=256, max_num_seqs=8,
                  num_gpu_blocks_override=256, enforce_eager=enforce_eager,
                  speculative_config=spec)
        if replay is not None:
            llm.llm_engine.core.drafter.proposer = Replay(replay)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs], llm.llm_engine.core.executor.worker.runner

    plain, _ = run(True, None)
    replay = {tuple(p): o for p, o in zip(prompts, plain)}
    eager, _ = run(True, replay)
    graphed, runner = run(False, replay)
    assert eager == plain and graphed == plain
    assert runner.verify_graphs is not None and runner.num_eager_steps <= len(prompts)
