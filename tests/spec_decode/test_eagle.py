"""The EAGLE proposer end to end on random weights of the EAGLE-1 checkpoint layout (``fc``
over [embedding, target hidden state], one decoder layer without input norm, the target's
LM head) for a random-weight Llama target (CPU plugin): greedy tokens are identical with and
without speculation, in a mixed batch, with preemption and prefix caching; seeded sampling
runs and is reproducible; a checkpoint without ``fc.weight`` is refused."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from test_draft_model import (
    LLAMA,
    greedy,
    make_llm,
    prompts,
    save_llama,
)

from vllm_core.model_executor.testing import random_hf_causal_lm


def save_eagle_head(path: str, seed: int, with_fc: bool = True) -> str:
    """Random weights of the EAGLE-1 layout for the ``LLAMA`` target shape."""
    os.makedirs(path, exist_ok=True)
    one = random_hf_causal_lm("llama", {**LLAMA, "num_hidden_layers": 1}, seed=seed,
                              weight_scale=0.3)
    tensors = {k[len("model."):]: v.contiguous() for k, v in one.state_dict().items()
               if k.startswith("model.layers.0.") and "input_layernorm" not in k}
    gen = torch.Generator().manual_seed(seed)
    hidden = LLAMA["hidden_size"]
    if with_fc:
        tensors["fc.weight"] = (torch.rand(hidden, 2 * hidden, generator=gen) - 0.5) * 0.3
    save_file(tensors, os.path.join(path, "model.safetensors"))
    config = {**one.config.to_dict(), "architectures": ["LlamaForCausalLM"]}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eagle")
    return {"target": save_llama(str(root / "target"), seed=0),
            "head": save_eagle_head(str(root / "head"), seed=3)}


def eagle(path: str, k: int = 3) -> dict:
    return {"method": "eagle", "model": path, "num_speculative_tokens": k}


def generate(llm, params, prompt_list=None):
    outs = llm.generate([{"prompt_token_ids": p} for p in (prompt_list or prompts())], params,
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.slow
def test_eagle_greedy_identical_mixed_preemption_prefix_cache(folders):
    from vllm_core import SamplingParams

    ref, _ = make_llm(folders["target"], enable_prefix_caching=False)
    base = generate(ref, greedy(24))
    llm, counter = make_llm(folders["target"], eagle(folders["head"], k=2),
                            num_gpu_blocks_override=14, max_num_batched_tokens=32,
                            enable_prefix_caching=True)
    assert generate(llm, greedy(24)) == base
    assert counter.draft_tokens > 0 and counter.preemptions > 0
    params = [greedy(24), SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
              greedy(24), greedy(24), SamplingParams(temperature=0.0, max_tokens=2,
                                                     ignore_eos=True)]
    got = [list(o.outputs[0].token_ids) for o in llm.generate(
        [{"prompt_token_ids": p} for p in prompts()], params, use_tqdm=False)]
    assert got == [b[:p.max_tokens] for b, p in zip(base, params)]


def test_eagle_seeded_sampling_reproducible(folders):
    """Without prefix caching (a prefix-cache hit skips the head's positions whose target
    states were never computed, so its drafts, and a seeded request's samples, depend on the
    cache's state there)."""
    assert_seeded_sampling_reproducible(folders["target"], eagle(folders["head"], k=2))


def assert_seeded_sampling_reproducible(target: str, spec: dict) -> None:
    """A seeded temperature / top-k request gives the same tokens twice (drafts proposed)."""
    from vllm_core import SamplingParams

    params = SamplingParams(temperature=0.9, top_k=30, seed=5, max_tokens=16, ignore_eos=True)
    llm, counter = make_llm(target, spec, enable_prefix_caching=False)
    first = generate(llm, params)
    assert generate(llm, params) == first and counter.draft_tokens > 0


def test_checkpoint_without_fc_is_refused(folders, tmp_path):
    bad = save_eagle_head(str(tmp_path / "nofc"), seed=1, with_fc=False)
    with pytest.raises(ValueError, match="not an EAGLE checkpoint"):
        make_llm(folders["target"], eagle(bad))
