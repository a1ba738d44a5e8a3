"""Calibrated FP8 KV-cache scales (``k_scale`` / ``v_scale`` per layer) read from checkpoints
and applied by the reference backend: K/V far outside float8's range are stored as
``fp8(k / k_scale)`` and the model tracks a float cache; without the scales the same
checkpoint's fp8 cache saturates and the logits are far off."""

from __future__ import annotations

import pytest
import torch
from model_test_utils import new_kv_caches, run_step

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.attention.kv_scales import check_kv_cache_scheme, kv_scale_target
from vllm_core.config import ModelConfig
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.testing import (
    add_kv_cache_scales,
    amplify_kv,
    tiny_llama,
    write_compressed_tensors,
)

PROMPT = [5, 17, 33, 2, 80, 41, 9, 12, 60]
FACTOR = 3000.0


def test_checkpoint_names_and_schemes():
    assert kv_scale_target("model.layers.3.self_attn.k_scale") == (
        "model.layers.3.self_attn.attn", "k")
    assert kv_scale_target("model.layers.0.self_attn.v_proj.output_scale") == (
        "model.layers.0.self_attn.attn", "v")
    assert kv_scale_target("model.layers.0.self_attn.v_proj.weight_scale") is None
    check_kv_cache_scheme({"num_bits": 8, "type": "float", "strategy": "tensor",
                           "dynamic": False})
    for bad in ({"num_bits": 8, "type": "int", "strategy": "tensor"},
                {"num_bits": 8, "type": "float", "strategy": "attn_head"},
                {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": True}):
        with pytest.raises(ValueError, match="kv_cache_scheme .* is not supported"):
            check_kv_cache_scheme(bad)


def _model(folder: str):
    arch = load_arch_config(folder)
    return get_model(ModelConfig(model=folder, dtype="float32", arch=arch),
                     ReferenceAttentionBackend, torch.device("cpu")), arch


def _calibrate(folder: str) -> list[tuple[float, float]]:
    """Per-layer (k, v) scales from a float-cache prefill of PROMPT: amax / 448, doubled
    for headroom (what a calibration run writes, up to the headroom)."""
    model, arch = _model(folder)
    caches = new_kv_caches(arch, 16)
    run_step(model, caches, [PROMPT], [0])
    return [(2 * float(c[0].abs().max()) / 448, 2 * float(c[1].abs().max()) / 448)
            for c in caches]


def _run(folder: str, kv_dtype: torch.dtype, steps: int = 4):
    model, arch = _model(folder)
    caches = new_kv_caches(arch, 16, dtype=kv_dtype)
    logits = [run_step(model, caches, [PROMPT], [0])[0][-1]]
    for i in range(steps):
        nxt = int(logits[-1].argmax())
        logits.append(run_step(model, caches, [[nxt]], [len(PROMPT) + i])[0][-1])
    return torch.stack(logits), model


def test_calibrated_scales_keep_large_kv_in_fp8_range(tmp_path):
    hf = tiny_llama(seed=3)
    amplify_kv(hf, FACTOR)
    plain, scaled = str(tmp_path / "plain"), str(tmp_path / "scaled")
    hf.save_pretrained(plain)
    hf.save_pretrained(scaled)
    scales = _calibrate(plain)
    assert min(k for k, _ in scales) * 448 / 2 > 448     # K really leaves e4m3's range
    add_kv_cache_scales(scaled, scales, output_scale_layers=(1,))   # both naming styles

    want, _ = _run(plain, torch.float32)
    got, model = _run(scaled, torch.float8_e4m3fn)
    impls = [layer.self_attn.attn.impl for layer in model.model.layers]
    held = [float(s) for i in impls for s in (i.k_scale, i.v_scale)]
    assert held == pytest.approx([s for kv in scales for s in kv])
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=0.1 * want.abs().max().item(), rtol=0.1)
    # the float cache ignores the scales
    same, _ = _run(scaled, torch.float32)
    torch.testing.assert_close(same, want)
    # without them the fp8 cache saturates at 448 and the model is lost
    unscaled, _ = _run(plain, torch.float8_e4m3fn)
    assert (unscaled - want).abs().max() > 5 * (got - want).abs().max()


def test_compressed_tensors_kv_cache_scheme_loads_the_scales(tmp_path):
    hf = tiny_llama(seed=5)
    write_compressed_tensors(str(tmp_path), hf, "w8a8-fp8-dynamic")
    add_kv_cache_scales(str(tmp_path), [(0.5, 0.25), (0.125, 2.0)], kv_cache_scheme=True)
    model, _ = _model(str(tmp_path))
    got = [(float(layer.self_attn.attn.k_scale), float(layer.self_attn.attn.v_scale))
           for layer in model.model.layers]
    assert got == [(0.5, 0.25), (0.125, 2.0)]


def test_a_backend_without_scale_support_refuses_calibrated_scales():
    from vllm_core.attention.backend import AttentionImpl

    class NoScales(AttentionImpl):
        def forward(self, query, key, value, kv_cache, attn_metadata):  # pragma: no cover
            raise NotImplementedError

    impl = NoScales(4, 16, 0.25, 2)
    impl.set_kv_scales(torch.ones(()), torch.ones(()))            # 1.0: nothing to apply
    with pytest.raises(ValueError, match="cannot apply the checkpoint's calibrated KV-cache"):
        impl.set_kv_scales(torch.tensor(0.5), torch.ones(()))
