"""Dummy weights from a config, the model registry, generation defaults."""

from __future__ import annotations

import json
import time

import pytest
import torch
from model_test_utils import new_kv_caches, run_step

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.hf_config import arch_config_from_hf
from vllm_core.model_executor.loader import get_model, load_arch_config, load_generation_defaults
from vllm_core.model_executor.models import registry
from vllm_core.model_executor.models.decoder import DecoderForCausalLM
from vllm_core.model_executor.models.registry import (
    register_model,
    resolve_model_cls,
    supported_architectures,
)

QWEN3_CFG = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 300,
             "hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 3,
             "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 24,
             "rope_theta": 1000000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
             "max_position_embeddings": 512}


def test_dummy_model_from_config_dict(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_CFG))
    arch = load_arch_config(str(tmp_path), "dummy")
    model = get_model(ModelConfig(model=str(tmp_path), load_format="dummy", seed=3),
                      ReferenceAttentionBackend, torch.device("cpu"))
    params = dict(model.named_parameters())
    assert params["model.embed_tokens.weight"].shape == (300, 128)
    assert params["model.embed_tokens.weight"].dtype == torch.bfloat16   # dtype "auto"
    assert params["model.layers.0.self_attn.qkv_proj.weight"].shape == ((8 + 2 * 2) * 24, 128)
    assert params["model.layers.2.self_attn.o_proj.weight"].shape == (128, 8 * 24)
    assert params["model.layers.0.self_attn.q_norm.weight"].shape == (24,)
    assert params["model.layers.1.mlp.gate_up_proj.weight"].shape == (640, 128)
    assert "lm_head.weight" not in params                                # tied
    assert torch.all(params["model.norm.weight"] == 1)
    w = params["model.layers.0.mlp.down_proj.weight"].float()
    assert w.abs().max() <= 1e-3 and w.std() > 1e-4
    (logits,) = run_step(model, new_kv_caches(arch, 4, torch.bfloat16), [[1, 2, 3]], [0])
    assert logits.shape == (3, 300) and torch.isfinite(logits).all()
    again = get_model(ModelConfig(model=str(tmp_path), load_format="dummy", seed=3),
                      ReferenceAttentionBackend, torch.device("cpu"))
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_dummy_model_from_arch_alone_is_fast():
    """No files at all: ModelConfig.arch given; a ~100M-parameter model inits in well under
    the time a real initialisation would take."""
    arch = arch_config_from_hf({**QWEN3_CFG, "vocab_size": 32000, "hidden_size": 1024,
                                "intermediate_size": 2816, "num_hidden_layers": 6,
                                "head_dim": 128})
    start = time.perf_counter()
    model = get_model(ModelConfig(model="<no files>", load_format="dummy", dtype="bfloat16",
                                  arch=arch), ReferenceAttentionBackend, torch.device("cpu"))
    assert time.perf_counter() - start < 10
    assert sum(p.numel() for p in model.parameters()) > 90_000_000


def test_registry(monkeypatch):
    monkeypatch.setattr(registry.MODELS, "_entries", dict(registry.MODELS._entries))  # undone
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
            "Qwen3ForCausalLM"} <= set(supported_architectures())
    assert issubclass(resolve_model_cls("Qwen2ForCausalLM"), DecoderForCausalLM)
    register_model("MyTestForCausalLM",
                   "vllm_core.model_executor.models.decoder.DecoderForCausalLM")
    assert resolve_model_cls("MyTestForCausalLM") is DecoderForCausalLM
    register_model("MyColonForCausalLM",
                   "vllm_core.model_executor.models.decoder:DecoderForCausalLM")
    assert resolve_model_cls("MyColonForCausalLM") is DecoderForCausalLM
    with pytest.raises(ValueError, match="'Nope' is not supported; supported: .*Llama"):
        resolve_model_cls("Nope")
    register_model("BrokenForCausalLM", "no_such_module.Cls")
    with pytest.raises(ImportError, match="no_such_module.Cls"):
        resolve_model_cls("BrokenForCausalLM")
    with pytest.raises(ValueError, match="class_path"):
        register_model("X", "nodots")
    with pytest.raises(ValueError, match="already registered"):     # one rule for every registry
        register_model("MyTestForCausalLM", "pkg.other.Cls")
    register_model("MyTestForCausalLM", "pkg.other.Cls", override=True)


def test_generation_defaults_from_hf_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_CFG, "eos_token_id": 7}))
    assert load_generation_defaults(str(tmp_path)) == {"eos_token_id": [7]}
    (tmp_path / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.0,
        "repetition_penalty": 1.05, "eos_token_id": [7, 9], "max_new_tokens": 50}))
    assert load_generation_defaults(str(tmp_path)) == {
        "temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.0,
        "repetition_penalty": 1.05, "eos_token_id": [7, 9], "max_tokens": 50}   # max_new_tokens
