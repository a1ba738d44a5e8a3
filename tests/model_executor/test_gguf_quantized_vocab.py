"""GGUF vocabulary tables kept quantized (``layers/quantized_vocab.py``): the row lookup equals
the de-quantized table's rows bit for bit, and tiny llama GGUFs whose embedding (tied, Q8_0)
or embedding and LM head (untied, Q8_0) are stored quantized keep them as ``WNA16Weight``,
free the float table, and give HF transformers' logits on the de-quantized weights (and
``--gguf-dequantize``'s)."""

from __future__ import annotations

import pytest
import torch
from model_test_utils import hf_logits, new_kv_caches, run_step, tiny_hf_model
from test_gguf_loading import write_gguf

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.layers.quantized_vocab import pad_outputs, wna16_rows
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.gguf import GGUFConfig
from vllm_core.model_executor.quantization.quantized_weights import (
    WNA16Weight,
    dequantize_wna16,
    pack_int32,
)


def random_table(vocab: int, hidden: int, bits: int, group: int, dtype: torch.dtype,
                 seed: int = 0) -> WNA16Weight:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2 ** bits, (hidden, vocab), generator=g)
    scales = (torch.rand(hidden // group, vocab, generator=g) * 0.02 + 1e-3).to(dtype)
    zeros = torch.randint(0, 2 ** bits, (hidden // group, vocab), generator=g).to(dtype)
    return WNA16Weight(pack_int32(q, bits, 0), scales, zeros, None, bits, group, hidden, vocab)


@pytest.mark.parametrize("bits,group", [(8, 32), (4, 32), (8, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_lookup_equals_dequantized_rows(bits, group, dtype):
    w = random_table(80, 64, bits, group, dtype)
    ids = torch.tensor([0, 79, 5, 5, 41])
    assert torch.equal(wna16_rows(w, ids, dtype), dequantize_wna16(w, dtype)[ids])
    assert wna16_rows(w, ids[:0], dtype).shape == (0, 64)


def test_padding_adds_zero_rows_and_act_order_is_refused():
    w = random_table(40, 64, 8, 32, torch.float32)
    padded = pad_outputs(w, 48)
    table = dequantize_wna16(padded)
    assert padded.out_features == 48 and torch.equal(table[:40], dequantize_wna16(w))
    assert not table[40:].any()
    with pytest.raises(ValueError, match="cannot pad"):
        pad_outputs(w, 32)
    act = WNA16Weight(w.qweight, w.scales, w.zeros, torch.zeros(64, dtype=torch.int32), 8, 32,
                      64, 40)
    with pytest.raises(ValueError, match="g_idx"):
        wna16_rows(act, torch.tensor([1]), torch.float32)


def test_table_format_only_for_vocabulary_tables_of_kept_types():
    cfg = GGUFConfig("x.gguf", {"model.embed_tokens.weight": "Q8_0",
                                "lm_head.weight": "Q6_K", "model.norm.weight": "F32"})
    assert cfg.table_format("model.embed_tokens.weight").storage_bits == 8
    assert cfg.table_format("lm_head.weight").group == 16
    assert cfg.table_format("model.norm.weight") is None
    assert "vocabulary tables: embed_tokens Q8_0, lm_head Q6_K" in cfg.summary()
    f16 = GGUFConfig("x.gguf", {"model.embed_tokens.weight": "F16"})
    assert f16.table_format("model.embed_tokens.weight") is None
    assert "vocabulary tables: float" in f16.summary()


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_with_quantized_tables_matches_hf(tmp_path, tied):
    hf = tiny_hf_model("llama", vocab_size=96, hidden_size=128, intermediate_size=256,
                       num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                       tie_word_embeddings=tied)
    path = str(tmp_path / "tables.gguf")
    write_gguf(hf, path, "llama", quantize=("token_embd", "output.weight", "attn_q", "ffn_up"))
    model = get_model(ModelConfig(model=path, dtype="float32"), ReferenceAttentionBackend,
                      torch.device("cpu"))
    tables = [model.model.embed_tokens] + ([] if tied else [model.lm_head])
    assert (model.lm_head is None) == tied
    for table in tables:
        assert table.qweights is not None and table.qweights.bits == 8
        assert table.qweights.out_features == 96 and table.weight.numel() == 0
    arch = load_arch_config(path)
    prompts = [[3, 17, 42, 8, 90, 11, 4], [60, 2]]
    got = run_step(model, new_kv_caches(arch, 8), prompts, [0, 0])
    for prompt, logits in zip(prompts, got, strict=True):
        torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=2e-4, rtol=1e-4)
    deq = get_model(ModelConfig(model=path, dtype="float32", gguf_dequantize=True),
                    ReferenceAttentionBackend, torch.device("cpu"))
    assert deq.model.embed_tokens.qweights is None
    assert deq.model.embed_tokens.weight.shape == (96, 128)
    again = run_step(deq, new_kv_caches(arch, 8), prompts, [0, 0])
    for a, b in zip(got, again, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    # the embedding lookup is the de-quantized table's rows, bit for bit
    ids = torch.tensor([0, 95, 17, 17])
    assert torch.equal(model.model.embed_tokens(ids), deq.model.embed_tokens(ids))


def test_bf16_model_casts_the_tables_scales(tmp_path):
    hf = tiny_hf_model("llama", vocab_size=96, hidden_size=128, intermediate_size=256,
                       num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                       tie_word_embeddings=True)
    path = str(tmp_path / "bf16.gguf")
    write_gguf(hf, path, "llama", quantize=("token_embd",))
    model = get_model(ModelConfig(model=path, dtype="bfloat16"), ReferenceAttentionBackend,
                      torch.device("cpu"))
    qw = model.model.embed_tokens.qweights
    assert qw.scales.dtype == qw.zeros.dtype == torch.bfloat16
    assert model.model.embed_tokens(torch.tensor([3])).dtype == torch.bfloat16
    hidden = torch.randn(2, 128, dtype=torch.bfloat16)
    assert model.compute_logits(hidden).dtype == torch.float32
