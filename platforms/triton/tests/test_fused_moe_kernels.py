"""The fused-MoE Triton kernels against the per-(token, expert) torch reference: decode and
prefill-like batches, experts on another rank (-1), several tile configurations, and the
``TritonLayerOps.fused_moe`` entry point. Under ``TRITON_INTERPRET=1`` without a GPU."""

from __future__ import annotations

import pytest
import torch
from vllm_core_triton.kernels.fused_moe import fused_moe
from vllm_core_triton.kernels.fused_moe_configs import MoETileConfig, default_config
from vllm_core_triton.ops import TritonLayerOps

from vllm_core.model_executor.layers.fused_moe import select_experts
from vllm_core.model_executor.layers.fused_moe.torch_moe import reference_fused_moe

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# the interpreter computes tl.dot on bf16's raw bits (see test_kernels.py): fp16 there
LOW = torch.bfloat16 if ON_GPU else torch.float16
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}


def _problem(t, e, k, h, i, dtype, drop=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=gen)
    w13 = 0.1 * torch.randn(e, 2 * i, h, generator=gen)
    w2 = 0.1 * torch.randn(e, h, i, generator=gen)
    w, ids = select_experts(torch.randn(t, e, generator=gen), k, renormalize=True)
    if drop:
        ids = torch.where(torch.rand(ids.shape, generator=gen) < drop, -1, ids)
    return [a.to(DEVICE) for a in (x.to(dtype), w13.to(dtype), w2.to(dtype), w, ids)]


SHAPES = [  # tokens, experts, top_k, hidden, intermediate (I and H not multiples of tiles)
    (1, 8, 2, 64, 48),
    (5, 6, 3, 40, 24),
    (37, 16, 4, 64, 80),
]
if ON_GPU:
    SHAPES += [(256, 128, 8, 2048, 768), (3, 128, 8, 2048, 768)]


@pytest.mark.parametrize("dtype", [torch.float32, LOW])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_moe_matches_reference(shape, dtype):
    t, e, k, h, i = shape
    args = _problem(t, e, k, h, i, dtype)
    got = fused_moe(*args)
    if t * k <= 64:
        ref = reference_fused_moe(*[a.cpu() for a in args])
        torch.testing.assert_close(got.float().cpu(), ref.float().cpu(), atol=TOL[dtype],
                                   rtol=TOL[dtype])
        return
    # large shapes: against the float32 reference, by the norm of the error (a bf16 product
    # over H=2048 and I=768 is off by ~0.3 element-wise where the output is ~50)
    ref = reference_fused_moe(*[a.float() for a in args])
    err = ((got.float() - ref).norm() / ref.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 1e-2), err


@pytest.mark.parametrize("cfg", [MoETileConfig(block_m=16, block_n_gate_up=16, block_n_down=32,
                                               block_k=16),
                                 MoETileConfig(block_m=32, block_n_gate_up=32, block_n_down=16,
                                               block_k=32)])
def test_tile_configs_and_other_ranks_experts(cfg):
    """Rows routed to experts of another rank (-1) contribute nothing, with any tiles."""
    args = _problem(11, 8, 3, 48, 40, torch.float32, drop=0.4, seed=3)
    assert (args[4] == -1).any()
    got = fused_moe(*args, config=cfg)
    torch.testing.assert_close(got.cpu(), reference_fused_moe(*[a.cpu() for a in args]),
                               atol=1e-4, rtol=1e-4)


def test_layer_ops_entry_point_and_default_tiles():
    args = _problem(4, 8, 2, 32, 32, torch.float32, seed=5)
    got = TritonLayerOps().fused_moe(*args)
    torch.testing.assert_close(got.cpu(), reference_fused_moe(*[a.cpu() for a in args]),
                               atol=1e-4, rtol=1e-4)
    assert default_config(8, 128).block_m == 16 and default_config(8192, 8).block_m == 64


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_fused_moe_under_cuda_graph():
    """Captured once, replayed on new routing of the same batch size: same as eager."""
    x, w13, w2, w, ids = _problem(16, 32, 4, 256, 128, torch.bfloat16)
    static = [x.clone(), w.clone(), ids.clone()]
    fused_moe(static[0], w13, w2, static[1], static[2])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(static[0], w13, w2, static[1], static[2])
    x2, _, _, w_2, ids2 = _problem(16, 32, 4, 256, 128, torch.bfloat16, seed=9)
    for dst, src in zip(static, (x2, w_2, ids2), strict=True):
        dst.copy_(src)
    graph.replay()
    torch.testing.assert_close(out, fused_moe(x2, w13, w2, w_2, ids2), atol=0, rtol=0)


def test_sweep_file_overrides_tiles(tmp_path, monkeypatch):
    """A ``moe_tile_sweep.py --write`` file named by VLLM_MOE_TILE_CONFIG is used per shape
    and batch size; the kernels still match the reference with its tiles."""
    import json

    from vllm_core_triton.kernels.fused_moe_configs import moe_tile_config

    small = MoETileConfig(block_m=16, block_n_gate_up=16, block_n_down=16, block_k=16)
    large = MoETileConfig(block_m=32, block_n_gate_up=32, block_n_down=32, block_k=32)
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps({"6,40,24,float32": [[8, _fields(small)],
                                                    [64, _fields(large)]]}))
    monkeypatch.setenv("VLLM_MOE_TILE_CONFIG", str(path))
    assert moe_tile_config(6, 6, 40, 24, torch.float32) == small
    assert moe_tile_config(40, 6, 40, 24, torch.float32) == large
    assert moe_tile_config(4000, 6, 40, 24, torch.float32) == large
    assert moe_tile_config(6, 7, 40, 24, torch.float32) == default_config(6, 7)
    args = _problem(5, 6, 3, 40, 24, torch.float32, seed=4)
    torch.testing.assert_close(fused_moe(*args).cpu(),
                               reference_fused_moe(*[a.cpu() for a in args]),
                               atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("VLLM_MOE_TILE_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not a tile configuration file"):
        moe_tile_config(6, 6, 40, 24, torch.float32)


def test_swept_tiles_of_qwen3_moe_experts_are_in_the_table():
    """The Qwen3-30B-A3B expert shape gets its swept tiles by batch size, not the default."""
    from vllm_core_triton.kernels.fused_moe_configs import moe_tile_config

    decode = moe_tile_config(256 * 8, 128, 2048, 768, torch.bfloat16)
    prefill = moe_tile_config(8192 * 8, 128, 2048, 768, torch.bfloat16)
    assert (decode.block_m, decode.block_k) == (32, 128)
    assert (prefill.block_m, prefill.block_n_gate_up, prefill.num_warps) == (128, 128, 8)
    assert decode != default_config(256 * 8, 128)


def _fields(cfg: MoETileConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


# ------------------------------------------------------------------------ FP8 experts
FP8_SHAPES = [(1, 8, 2, 64, 48), (37, 16, 4, 64, 80)]
if ON_GPU:
    FP8_SHAPES += [(256, 128, 8, 2048, 768), (3, 128, 8, 2048, 768)]


@pytest.mark.parametrize("shape", FP8_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, LOW])
def test_fused_moe_fp8_matches_the_dequantize_reference(shape, dtype):
    """FP8 experts (float8 products, row / channel scales) against the core's reference
    (de-quantized weights, activations quantized per row the same way), with rows of another
    rank's experts (-1)."""
    from vllm_core_triton.kernels.fused_moe import fused_moe_fp8

    from vllm_core.model_executor.quantization.fp8_moe import (
        Fp8MoEWeight,
        fp8_fused_moe_reference,
        quantize_experts,
    )

    t, e, k, h, i = shape
    x, w13, w2, weights, ids = _problem(t, e, k, h, i, torch.float32, drop=0.1, seed=3)
    q13, s13 = quantize_experts(w13)
    q2, s2 = quantize_experts(w2)
    w = Fp8MoEWeight(q13, s13, q2, s2)
    x = x.to(dtype)
    got = fused_moe_fp8(x, w, weights, ids)
    cpu = Fp8MoEWeight(*(a.cpu() for a in (q13, s13, q2, s2)))
    ref = fp8_fused_moe_reference(x.cpu().float(), cpu, weights.cpu(), ids.cpu())
    tol = 2e-3 if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(got.float().cpu(), ref, atol=tol * ref.abs().max().item(),
                               rtol=tol)
    # and through the LayerOps entry point
    torch.testing.assert_close(TritonLayerOps().fused_moe_fp8(x, w, weights, ids), got)
