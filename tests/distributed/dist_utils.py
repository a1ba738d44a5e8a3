"""Tiny random-weight HF models for the distributed tests (2 processes, gloo)."""

from __future__ import annotations

import os

from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

VOCAB = 503          # odd: the vocab-parallel layers pad the last rank's range

# name -> (model_type, config overrides)
MODELS = {
    # GQA, untied LM head
    "llama": ("llama", dict(num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=False)),
    # biases on q/k/v, one KV head (replicated on both TP ranks), tied embeddings
    "qwen2": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=1,
                            tie_word_embeddings=True)),
    # q/k norms, explicit head_dim, tied embeddings (the last PP stage loads its own LM head)
    "qwen3": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                            tie_word_embeddings=True)),
}


def build_model_folder(root: str, name: str) -> str:
    model_type, extra = MODELS[name]
    path = os.path.join(root, name)
    config = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, **extra)
    model = random_hf_causal_lm(model_type, config, seed=1, weight_scale=0.08)
    model.save_pretrained(path)
    write_wordlevel_tokenizer(path, VOCAB)
    return path


def make_llm(folder: str, tp: int = 1, pp: int = 1, async_scheduling: bool = False,
             **extra):
    from vllm_core import LLM

    extra.setdefault("num_gpu_blocks_override", 48)
    return LLM(folder, dtype="float32", max_model_len=128,
               max_num_seqs=8, max_num_batched_tokens=48, seed=0, enforce_eager=True,
               tensor_parallel_size=tp, pipeline_parallel_size=pp,
               async_scheduling=async_scheduling, **extra)


def one_rank_reference(model_root: str, run) -> tuple[str, list]:
    """The ``llama`` model folder under ``model_root`` (built once) and ``run``'s result on one
    rank with the reference attention: what a parallel layout must reproduce."""
    folder = os.path.join(model_root, "llama")
    if not os.path.isdir(folder):
        folder = build_model_folder(model_root, "llama")
    reference = make_llm(folder, attention_backend="reference")
    try:
        return folder, run(reference)
    finally:
        reference.llm_engine.shutdown()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
