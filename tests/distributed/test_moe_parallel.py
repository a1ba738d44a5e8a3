"""Mixture-of-experts models across two ranks (mp executor, gloo): tensor parallelism (every
expert's intermediate dimension split) and expert parallelism (``--enable-expert-parallel``:
whole experts split, EP = TP = 2) give the single-rank engine's greedy tokens and logprobs;
layouts the experts cannot be split into are refused before any process starts."""

from __future__ import annotations

import os

import pytest
from dist_utils import VOCAB
from test_parallel_equivalence import assert_same, run

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

MOE_MODELS = {
    # top-8 of 8 experts with norm_topk_prob, one dense layer (mlp_only_layers)
    "qwen3_moe": ("qwen3_moe", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    num_experts=8, num_experts_per_tok=8,
                                    moe_intermediate_size=32, norm_topk_prob=True,
                                    mlp_only_layers=[1], tie_word_embeddings=False)),
    # shared expert with its sigmoid gate, q/k/v biases, top-2 of 6 without renormalisation
    "qwen2_moe": ("qwen2_moe", dict(num_attention_heads=4, num_key_value_heads=2,
                                    num_experts=6, num_experts_per_tok=2,
                                    moe_intermediate_size=32, norm_topk_prob=False,
                                    shared_expert_intermediate_size=48,
                                    tie_word_embeddings=False)),
}
CASES = [("qwen3_moe", False), ("qwen3_moe", True), ("qwen2_moe", True)]
_REFERENCE: dict[str, list] = {}


def _folder(root: str, name: str) -> str:
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        model_type, extra = MOE_MODELS[name]
        config = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                      num_hidden_layers=3, max_position_embeddings=256, bos_token_id=None,
                      eos_token_id=None, pad_token_id=None, **extra)
        random_hf_causal_lm(model_type, config, seed=2, weight_scale=0.08).save_pretrained(path)
        write_wordlevel_tokenizer(path, VOCAB)
    return path


def _llm(folder: str, tp: int = 1, ep: bool = False):
    from vllm_core import LLM

    return LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=48,
               max_num_seqs=8, max_num_batched_tokens=48, seed=0, enforce_eager=True,
               tensor_parallel_size=tp, enable_expert_parallel=ep)


@pytest.mark.parametrize("name,ep", CASES,
                         ids=[f"{n}-{'ep2' if e else 'tp2'}" for n, e in CASES])
def test_moe_two_ranks_match_single_rank(model_root, name, ep):
    folder = _folder(model_root, name)
    if name not in _REFERENCE:
        llm = _llm(folder)
        try:
            _REFERENCE[name] = run(llm)
        finally:
            llm.llm_engine.shutdown()
    llm = _llm(folder, tp=2, ep=ep)
    try:
        assert llm.llm_engine.executor.world_size == 2
        assert_same(run(llm), _REFERENCE[name])
    finally:
        llm.llm_engine.shutdown()


def test_expert_layouts_that_do_not_split_are_refused(model_root):
    import argparse

    from vllm_core.engine.arg_utils import EngineArgs

    folder = _folder(model_root, "qwen2_moe")          # 6 experts
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    parser.add_argument("--model")
    args = EngineArgs.from_cli_args(parser.parse_args(
        ["--model", folder, "-tp", "2", "--enable-expert-parallel"]))
    config, _ = args.create_engine_config()
    assert config.parallel.enable_expert_parallel and config.parallel.world_size == 2
    with pytest.raises(ValueError, match="6 experts are not divisible"):
        EngineArgs(model=folder, tensor_parallel_size=4,
                   enable_expert_parallel=True).create_engine_config()
    dense = os.path.join(model_root, "dense")
    if not os.path.isdir(dense):
        random_hf_causal_lm("llama", dict(vocab_size=VOCAB, hidden_size=64,
                                          intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4)).save_pretrained(dense)
        write_wordlevel_tokenizer(dense, VOCAB)
    with pytest.raises(ValueError, match="needs a mixture-of-experts model"):
        EngineArgs(model=dense, tensor_parallel_size=2,
                   enable_expert_parallel=True).create_engine_config()
