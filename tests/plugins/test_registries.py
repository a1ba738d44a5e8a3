"""Attention backend registry + selector, quantization registry."""

from __future__ import annotations

import sys
import types

import pytest

from vllm_core.attention.backend import AttentionBackend
from vllm_core.attention.registry import (
    get_backend_cls,
    list_backends,
    register_backend,
    unregister_backend,
)
from vllm_core.attention.selector import select_attention_backend
from vllm_core.model_executor.quantization.registry import (
    get_quantization_method_cls,
    register_quantization_method,
    unregister_quantization_method,
)
from vllm_core.platforms.interface import Platform


class _Base(AttentionBackend):
    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def get_builder_cls():
        raise NotImplementedError

    @staticmethod
    def get_impl_cls():
        raise NotImplementedError


class Fp16Only(_Base):
    name = "t_fp16"
    supported_dtypes = ("float16",)
    supported_head_sizes = (64, 128)


class Anything(_Base):
    name = "t_any"
    supports_sliding_window = True


@pytest.fixture
def fake_backends(monkeypatch):
    module = types.ModuleType("vc_test_backends")
    module.Fp16Only, module.Anything, module.NotABackend = Fp16Only, Anything, object
    monkeypatch.setitem(sys.modules, "vc_test_backends", module)
    names = {"t_fp16": "vc_test_backends.Fp16Only", "t_any": "vc_test_backends.Anything",
             "t_missing": "vc_missing_kernel_lib.Backend", "t_wrong": "vc_test_backends.NotABackend"}
    for name, path in names.items():
        register_backend(name, path)
    yield names
    for name in names:
        unregister_backend(name)


def platform_with(backends):
    class P(Platform):
        name = "p"

        @classmethod
        def attention_backends(cls):
            return list(backends)

    return P


def select(platform, **kw):
    args = dict(head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
                sliding_window=None, requested=None)
    args.update(kw)
    return select_attention_backend(platform, **args)


def test_registry_round_trip_and_conflicts(fake_backends):
    assert get_backend_cls("t_any") is Anything
    assert list_backends()["t_fp16"] == "vc_test_backends.Fp16Only"
    register_backend("t_any", "vc_test_backends.Anything")          # same pair: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_backend("t_any", "elsewhere.Backend")
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        get_backend_cls("nope")
    with pytest.raises(ValueError, match="not an AttentionBackend"):
        get_backend_cls("t_wrong")
    with pytest.raises(ImportError):
        get_backend_cls("t_missing")
    with pytest.raises(ValueError, match="dotted path"):
        register_backend("x", "nodots")


def test_builtin_reference_backend_is_registered():
    assert list_backends()["reference"].endswith("reference.ReferenceAttentionBackend")


def test_selector_walks_preference_list(fake_backends):
    plat = platform_with(["t_missing", "t_fp16", "t_any"])
    assert select(plat) is Anything
    assert select(plat, dtype="float16") is Fp16Only
    import torch

    assert select(plat, dtype=torch.float16) is Fp16Only


def test_selector_error_lists_every_refusal(fake_backends):
    plat = platform_with(["t_missing", "t_fp16", "nope"])
    with pytest.raises(ValueError) as info:
        select(plat, head_size=80, sliding_window=4096)
    msg = str(info.value)
    assert "no attention backend of platform 'p' can serve head_size=80" in msg
    assert "t_missing: cannot be imported (ModuleNotFoundError" in msg
    assert "t_fp16: dtype bfloat16 not in ['float16']; head size 80 not in [64, 128]; " \
           "sliding window attention is not supported" in msg
    assert "nope: unknown attention backend 'nope'" in msg


def test_selector_requested_backend(fake_backends):
    plat = platform_with(["t_any"])
    assert select(plat, requested="t_fp16", dtype="float16") is Fp16Only
    with pytest.raises(ValueError, match="requested explicitly"):
        select(plat, requested="t_fp16")


def test_quantization_registry(monkeypatch):
    module = types.ModuleType("vc_test_quant")
    module.Q = type("Q", (), {})
    monkeypatch.setitem(sys.modules, "vc_test_quant", module)
    register_quantization_method("t_q", "vc_test_quant.Q")
    try:
        assert get_quantization_method_cls("t_q") is module.Q
        with pytest.raises(ValueError, match="already registered"):
            register_quantization_method("t_q", "other.Q")
        with pytest.raises(ValueError, match="unknown quantization method 'zz'"):
            get_quantization_method_cls("zz")
    finally:
        unregister_quantization_method("t_q")
