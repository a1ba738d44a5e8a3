"""The decoder hyper-parameters every test GGUF writer stores, as llama.cpp's converter does."""

from __future__ import annotations

import gguf


def add_decoder_hparams(w: gguf.GGUFWriter, cfg, *, rope_theta: float | None = None) -> int:
    """Write block count, lengths, head counts and sizes, rope dimension and base, RMS eps and
    vocabulary size of HF config ``cfg`` into ``w``; returns the head dimension. ``rope_theta``
    overrides ``cfg.rope_parameters["rope_theta"]`` (Gemma 3 keeps one per attention type)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope_theta if rope_theta is not None
                               else cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    return head_dim
