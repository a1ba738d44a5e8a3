"""The CPU plugin's RMS norm kernels (``csrc/rms_norm.cpp``) against the core's torch
reference (``TorchLayerOps``): same roundings to the activation dtype, rows independent of
the batch, the reference where the kernel does not apply."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.layers.ops import TorchLayerOps
from vllm_core_cpu import norm_ops
from vllm_core_cpu.worker import CpuLayerOps

pytestmark = pytest.mark.skipif(not norm_ops.kernel_fits(torch.empty(1), torch.empty(1)),
                                reason="the CPU plugin's C++ kernels did not build here")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 576), (7, 64), (3, 4, 64), (130, 96)])
def test_norms_match_reference(dtype, shape):
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    x = (torch.randn(*shape, generator=g) * 3).to(dtype)
    res = torch.randn(*shape, generator=g).to(dtype)
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(dtype)
    ours, ref = CpuLayerOps(), TorchLayerOps()
    # fp32: the mean of squares summed in another order (a few ulp); 16-bit: one rounding
    # of the activation dtype either way
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    got = ours.rms_norm(x, w, 1e-5)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, ref.rms_norm(x, w, 1e-5), atol=tol, rtol=tol)
    got_n, got_r = ours.fused_add_rms_norm(x, res, w, 1e-5)
    want_n, want_r = ref.fused_add_rms_norm(x, res, w, 1e-5)
    assert torch.equal(got_r, want_r)                 # the residual sum is one rounding
    torch.testing.assert_close(got_n, want_n, atol=tol, rtol=tol)


def test_rows_do_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 576, generator=g).bfloat16()
    w = torch.rand(576, generator=g).bfloat16()
    batched = CpuLayerOps().rms_norm(x, w, 1e-6)
    for r in (0, 63, 64, 149):
        assert torch.equal(CpuLayerOps().rms_norm(x[r:r + 1], w, 1e-6)[0], batched[r])


def test_falls_back_to_the_reference_on_a_weight_of_another_dtype():
    x = torch.randn(2, 64).bfloat16()
    w = torch.rand(64)                                     # float32 weight, bf16 activations
    assert norm_ops.rms_norm(x, w, 1e-6) is None
    got = CpuLayerOps().rms_norm(x, w, 1e-6)
    assert torch.equal(got, TorchLayerOps().rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 3072), (5, 128), (2, 3, 64), (70, 32)])
def test_silu_and_mul_matches_reference(dtype, shape):
    g = torch.Generator().manual_seed(shape[-1])
    x = (torch.randn(*shape, generator=g) * 4).to(dtype)
    got = CpuLayerOps().silu_and_mul(x)
    want = TorchLayerOps().silu_and_mul(x)
    assert got.shape == want.shape and got.dtype == dtype
    # fp32: exp differs from torch's vectorised one by an ulp; 16-bit: one rounding
    tol = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_at_extreme_gates(dtype):
    """The vector exp clamps its argument to [-87, 88]: gates far outside that range still
    give silu(g) = g for large g and ~0 for very negative g, as the reference."""
    gate = torch.tensor([-1e4, -500.0, -100.0, -88.5, -87.0, -20.0, -1e-3, 0.0, 1e-3, 20.0,
                         87.0, 88.5, 100.0, 500.0, 1e4, 3.0], dtype=torch.float32)
    x = torch.cat((gate, torch.linspace(-2, 2, 16))).repeat(2, 1).to(dtype)
    got = CpuLayerOps().silu_and_mul(x)
    want = TorchLayerOps().silu_and_mul(x)
    tol = {torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
