"""The tensor-core W4A16 GEMV (``vllm_core_cuda/wna16_mma.py``, ``csrc/wna16_mma.cu``).

Without a GPU: a lane-by-lane model of the kernel's fragment mapping (which nibble and which
activation each MMA register holds) against the de-quantize-then-matmul reference, and the
plan / routing rules. With one (``gpu`` marker, skipped elsewhere): the kernel against the
reference at the Llama-8B projections and odd shapes, 1-8 rows, bf16 and fp16, every launch
plan, under CUDA-graph capture, and ``CudaLayerOps``' routing and fallbacks.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
import torch
from gpu_models import GPU_ONLY

from vllm_core.model_executor.quantization.quantized_weights import (
    WNA16Weight,
    pack_int32,
    wna16_linear_reference,
)
from vllm_core_cuda import wna16_mma

ON_GPU = torch.cuda.is_available()
SHAPES_8B = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672),
             "down": (14336, 4096)}                                   # (K, N)


def random_wna16(k: int, n: int, group_size: int, dtype: torch.dtype, seed: int = 0,
                 device: str = "cpu", zero: int | None = None, bits: int = 4,
                 act_order: bool = False) -> WNA16Weight:
    """Random GPTQ-layout weight: uniform nibbles, scales in [0.005, 0.025), zero points
    random (or all ``zero``)."""
    gen = torch.Generator().manual_seed(seed)
    gs = k if group_size == -1 else group_size
    q = torch.randint(0, 2 ** bits, (k, n), generator=gen)
    scales = (torch.rand(k // gs, n, generator=gen) * 0.02 + 0.005).to(dtype)
    if zero is None:
        zeros = torch.randint(0, 2 ** bits, (k // gs, n), generator=gen).to(dtype)
    else:
        zeros = torch.full((k // gs, n), float(zero), dtype=dtype)
    g_idx = ((torch.arange(k) // gs)[torch.randperm(k, generator=gen)].to(torch.int32)
             if act_order else None)
    return WNA16Weight(pack_int32(q, bits, 0).to(device), scales.to(device), zeros.to(device),
                       None if g_idx is None else g_idx.to(device), bits, gs, k, n)


# --------------------------------------------------------------------- the mapping, no GPU
OFFSET = 128.0


def _bf16(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]


def _pair(word: int, i: int) -> tuple[float, float]:
    """The bf16 half pair the kernel's LOP3 makes of nibbles i and i + 4 (decoded from the
    bits: ``OFF + q_i``, ``OFF + q_{i+4}``)."""
    r = ((word >> (4 * i)) & 0x000F000F) | 0x43004300
    return _bf16(r), _bf16(r >> 16)


def _emulate(x: torch.Tensor, w: WNA16Weight) -> torch.Tensor:
    """The kernel's arithmetic, lane by lane, in float64: for every block of 32 outputs, unit
    of 128 inputs, step of 32 and MMA half, build each lane's A / B registers as the kernel
    does, place them by the PTX m16n8k16 fragment layout, multiply, and fold the unit with the
    group scale (``s * (tmp - (OFF + z) * sum x)``); returns ``[M, N]``."""
    m, k = x.shape
    n = w.out_features
    qw = w.qweight.to(torch.int64) & 0xFFFFFFFF
    xs, sc, zp = x.double(), w.scales.double(), w.zeros.double()
    y = torch.zeros(m, n, dtype=torch.float64)
    for n0 in range(0, n, 32):
        for u in range(k // 128):
            grp = u * 128 // w.group_size
            tmp = torch.zeros(2, 16, 8, dtype=torch.float64)          # [tile, row, col]
            xsum = torch.zeros(8, dtype=torch.float64)
            for s in range(4):
                for h in range(2):
                    a = torch.zeros(2, 16, 16, dtype=torch.float64)
                    b = torch.zeros(16, 8, dtype=torch.float64)
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        kw = 16 * u + 4 * s + t
                        words = [int(qw[kw, n0 + 4 * g + j]) for j in range(4)]
                        xv = xs[min(g, m - 1), 8 * kw:8 * kw + 8]
                        b0 = (xv[2 * h], xv[2 * h + 4])
                        b1 = (xv[2 * h + 1], xv[2 * h + 5])
                        for e in range(2):
                            b[2 * t + e, g] = b0[e]
                            b[2 * t + 8 + e, g] = b1[e]
                        for tile in range(2):
                            wa, wb = words[2 * tile], words[2 * tile + 1]
                            regs = (_pair(wa, 2 * h), _pair(wb, 2 * h), _pair(wa, 2 * h + 1),
                                    _pair(wb, 2 * h + 1))
                            for e in range(2):
                                a[tile, g, 2 * t + e] = regs[0][e]
                                a[tile, g + 8, 2 * t + e] = regs[1][e]
                                a[tile, g, 2 * t + 8 + e] = regs[2][e]
                                a[tile, g + 8, 2 * t + 8 + e] = regs[3][e]
                    tmp += a @ b
                    xsum += b.sum(0)                                  # the all-ones MMA
            for tile in range(2):
                for r in range(16):
                    out = n0 + 4 * (r % 8) + 2 * tile + r // 8
                    s_, z_ = sc[grp, out], zp[grp, out]
                    for c in range(m):
                        y[c, out] += s_ * (tmp[tile, r, c] - (OFFSET + z_) * xsum[c])
    return y


def test_fragment_mapping_model_matches_reference():
    """The kernel's lane/nibble/activation mapping (modelled in float64) computes x @ W.T:
    every input of every output is multiplied by its own activation exactly once."""
    w = random_wna16(256, 64, 128, torch.float32, seed=5)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(6))
    want = wna16_linear_reference(x.double(), w)    # (weights de-quantized in float32)
    got = _emulate(x, w)
    torch.testing.assert_close(got, want, atol=1e-6 * want.abs().max().item(), rtol=1e-5)
    swapped = WNA16Weight(w.qweight.roll(1, 1), w.scales, w.zeros, None, 4, 128, 256, 64)
    assert not torch.allclose(_emulate(x, swapped), want, atol=1e-2)   # the check can fail


def test_packed_layout_is_the_gptq_vectors_reordered():
    """``pack``'s layout: vector (block b, step kk, lane 4g + t) holds GPTQ words (row
    4 kk + t, outputs 32 b + 4 g .. + 3); scale vector (b, group, g) the halves s s s s z z z z
    of those outputs."""
    w = random_wna16(256, 64, 128, torch.bfloat16, seed=9)
    packed, packed_scales = wna16_mma.packed_layout(w)
    assert packed.dtype == packed_scales.dtype == torch.int32
    vec = packed.reshape(2, 8, 32, 4)
    halves = packed_scales.reshape(2, 2, 8, 4).view(torch.bfloat16)        # [b, group, g, 8]
    for b, kk, g, t in ((0, 0, 0, 0), (1, 5, 3, 2), (1, 7, 7, 3), (0, 2, 6, 1)):
        n = 32 * b + 4 * g
        assert vec[b, kk, 4 * g + t].tolist() == w.qweight[4 * kk + t, n:n + 4].tolist()
        grp = kk * 32 // 128
        assert halves[b, grp, g, :4].tolist() == w.scales[grp, n:n + 4].tolist()
        assert halves[b, grp, g, 4:].tolist() == w.zeros[grp, n:n + 4].tolist()


def test_unsupported_reasons_name_the_miss():
    f32 = torch.float32
    bf16 = torch.bfloat16
    assert "act-order" in wna16_mma.unsupported_reason(
        random_wna16(256, 64, 128, bf16, act_order=True), bf16)
    assert "8-bit" in wna16_mma.unsupported_reason(random_wna16(256, 64, 128, bf16, bits=8),
                                                    bf16)
    assert "activations" in wna16_mma.unsupported_reason(random_wna16(256, 64, 128, f32), f32)
    assert "groups of 64" in wna16_mma.unsupported_reason(random_wna16(256, 64, 64, bf16), bf16)
    assert "N=48" in wna16_mma.unsupported_reason(random_wna16(256, 48, 128, bf16), bf16)
    if not ON_GPU:
        assert "CUDA" in wna16_mma.unsupported_reason(random_wna16(256, 64, 128, bf16), bf16)
    with pytest.raises(ValueError, match="no GEMV plan"):
        wna16_mma.MmaPlan(3)


def test_plan_variables(monkeypatch):
    from vllm_core_cuda import envs

    for name in ("VLLM_CUDA_WNA16_KERNEL", "VLLM_CUDA_WNA16_PACK"):
        monkeypatch.delenv(name, raising=False)
    # the defaults: the CUDA GEMV on the weights as loaded (no second copy)
    assert envs.cuda_wna16_kernel() == "cuda" and envs.cuda_wna16_pack() is False
    monkeypatch.setenv("VLLM_CUDA_WNA16_PLAN", "8")
    monkeypatch.setenv("VLLM_CUDA_WNA16_PDL", "1")
    assert wna16_mma.default_plan(4096) == wna16_mma.MmaPlan(8, pdl=True)
    monkeypatch.setenv("VLLM_CUDA_WNA16_PLAN", "8,2")
    with pytest.raises(ValueError, match="VLLM_CUDA_WNA16_PLAN"):
        envs.cuda_wna16_plan()
    monkeypatch.setenv("VLLM_CUDA_WNA16_PACK", "yes")
    with pytest.raises(ValueError, match="VLLM_CUDA_WNA16_PACK"):
        envs.cuda_wna16_pack()
    monkeypatch.setenv("VLLM_CUDA_WNA16_KERNEL", "cutlass")
    with pytest.raises(ValueError, match="VLLM_CUDA_WNA16_KERNEL"):
        envs.cuda_wna16_kernel()


# --------------------------------------------------------------------------- on the GPU
def gpu_test(fn):
    """Marked ``gpu`` and skipped without a CUDA device (``gpu_models.GPU_ONLY``)."""
    for mark in GPU_ONLY:
        fn = mark(fn)
    return fn


def _check(got: torch.Tensor, x: torch.Tensor, w: WNA16Weight,
           bias: torch.Tensor | None = None) -> None:
    """Against the float32 reference: elementwise within a bf16 / fp16 rounding of the
    largest output, and a relative error norm of the rounding's order."""
    want = wna16_linear_reference(x.float(), w, None if bias is None else bias.float())
    assert got.dtype == x.dtype and got.shape == want.shape
    assert not got.isnan().any()
    tol = 1e-2 if x.dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(got.float(), want, atol=tol * want.abs().max().item(), rtol=tol)
    assert float((got.float() - want).norm() / want.norm()) < tol / 2


PLANS = [wna16_mma.MmaPlan(w, pdl) for w in wna16_mma.WARPS for pdl in (False, True)]


@pytest.mark.parametrize("name", list(SHAPES_8B))
@gpu_test
def test_8b_projections_rows_1_to_8_every_plan_both_layouts(name):
    """The four 8B projections in bf16, rows 1-4 and 8, the default plan and every other, the
    GPTQ and the packed layout (the same bits); a row alone equals that row in the batch."""
    k, n = SHAPES_8B[name]
    w = random_wna16(k, n, 128, torch.bfloat16, seed=k + n, device="cuda")
    packed = wna16_mma.pack(w)
    assert isinstance(packed, wna16_mma.PackedWNA16Weight)
    x = torch.randn(8, k, device="cuda", dtype=torch.bfloat16)
    for rows in (1, 2, 3, 4, 8):
        poison = torch.full((rows, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        del poison                           # the allocator hands this block to the output
        got = wna16_mma.wna16_mma_linear(x[:rows], packed)
        _check(got, x[:rows], w)
        torch.testing.assert_close(wna16_mma.wna16_mma_linear(x[:rows], w), got, atol=0, rtol=0)
        alone = wna16_mma.wna16_mma_linear(x[rows - 1:rows], packed)
        torch.testing.assert_close(alone[0], got[rows - 1], atol=0, rtol=0)
    for plan in PLANS:
        got = wna16_mma.wna16_mma_linear(x[:3], packed, plan=plan)
        _check(got, x[:3], w)
        torch.testing.assert_close(wna16_mma.wna16_mma_linear(x[:3], w, plan=plan), got,
                                   atol=0, rtol=0)


@pytest.mark.parametrize("k,n,group_size,dtype", [
    (256, 64, 128, torch.float16), (1024, 96, -1, torch.bfloat16),
    (1536, 160, 256, torch.float16), (384, 32, 384, torch.bfloat16)])
@gpu_test
def test_odd_shapes_groups_fp16_and_bias(k, n, group_size, dtype):
    """Small and odd shapes (one block, fewer units than warps), per-channel and 256 / 384
    groups, fp16, a bias; both layouts, every plan."""
    w = random_wna16(k, n, group_size, dtype, seed=k, device="cuda")
    x = torch.randn(4, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    for weight in (w, wna16_mma.pack(w)):
        for plan in PLANS:
            _check(wna16_mma.wna16_mma_linear(x, weight, bias, plan), x, w, bias)
            _check(wna16_mma.wna16_mma_linear(x[:1], weight, None, plan), x[:1], w)


@pytest.mark.parametrize("pdl", [False, True])
@gpu_test
def test_cuda_graph_capture_and_replay(pdl):
    """A decode call (1 and 4 rows, the 8B qkv and down shapes, packed, with and without
    programmatic dependent launch, after another kernel wrote x) captured in a CUDA graph and
    replayed gives the eager result exactly, and follows new inputs written in place."""
    plan = wna16_mma.MmaPlan(8, pdl)
    for k, n in ((4096, 6144), (14336, 4096)):
        w = wna16_mma.pack(random_wna16(k, n, 128, torch.bfloat16, seed=3, device="cuda"))
        for rows in (1, 4):
            src = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            x = torch.empty_like(src)

            def step(src=src, x=x, w=w):
                torch.mul(src, 2.0, out=x)                 # the kernel before writes x
                return wna16_mma.wna16_mma_linear(x, w, None, plan)

            eager = step()
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                step()
                torch.cuda.synchronize()
                with torch.cuda.graph(graph):
                    out = step()
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(out, eager, atol=0, rtol=0)
            src.copy_(torch.randn_like(src))
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(out, step(), atol=0, rtol=0)


@gpu_test
def test_layer_ops_route_and_fall_back():
    """``CudaLayerOps(wna16_kernel="cuda", wna16_pack=True)``: weights get the packed layout at
    load; 1-8 rows of a served weight run the GEMV; 9 rows, act-order and 8-bit weights the
    Triton kernels (all against the reference); the start-up name says which and why. The
    default ops run the GEMV on the weights as loaded."""
    from vllm_core_cuda.layer_ops import CudaLayerOps

    ops = CudaLayerOps(wna16_kernel="cuda", wna16_pack=True)
    assert ops.wna16_kernel == "cuda"
    bf16 = torch.bfloat16
    w = random_wna16(1024, 256, 128, bf16, seed=2, device="cuda")
    pw = ops.prepare_quantized("wna16", w)
    assert isinstance(pw, wna16_mma.PackedWNA16Weight)
    default = CudaLayerOps()
    assert default.prepare_quantized("wna16", w) is w
    assert default.quant_kernel_name("wna16", w).startswith(
        wna16_mma.KERNEL_NAME + ", GPTQ layout as loaded")
    x = torch.randn(9, 1024, device="cuda", dtype=bf16)
    torch.testing.assert_close(ops.wna16_linear(x[:2], pw),
                               wna16_mma.wna16_mma_linear(x[:2], w), atol=0, rtol=0)
    _check(ops.wna16_linear(x, pw), x, w)                    # 9 rows: the Triton GEMM
    assert ops.quant_kernel_name("wna16", pw).startswith(wna16_mma.KERNEL_NAME + ", packed")
    for other in (random_wna16(1024, 256, 128, bf16, seed=2, device="cuda", act_order=True),
                  random_wna16(1024, 256, 128, bf16, seed=2, device="cuda", bits=8)):
        assert ops.prepare_quantized("wna16", other) is other
        _check(ops.wna16_linear(x[:1], other), x[:1], other)
        assert "does not serve it" in ops.quant_kernel_name("wna16", other)
    assert CudaLayerOps(wna16_kernel="triton").quant_kernel_name("wna16", w).startswith("triton")


REFUSALS = """
import torch
from vllm_core_cuda.kernels import build_error
assert build_error() is None
op = torch.ops.vllm_core_cuda.wna16_mma_gemv
x = torch.randn(9, 256, device="cuda", dtype=torch.bfloat16)
q = torch.zeros(32, 64, device="cuda", dtype=torch.int32)
s = torch.ones(2, 64, device="cuda", dtype=torch.bfloat16)
for rows, warps, word in ((9, 8, "rows"), (1, 3, "warps")):
    try:
        op(x[:rows], q, s, s, 64, 128, None, warps, False)
    except RuntimeError as e:
        assert word in str(e), e
    else:
        raise AssertionError(f"no error for rows={rows} warps={warps}")
print("refused")
"""


@gpu_test
def test_op_refuses_what_it_does_not_serve():
    """The raw op raises a RuntimeError naming the argument for 9 rows and for 3 warps (in a
    subprocess: a crash on the error path fails this test alone); the default plans exist."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    run = subprocess.run([sys.executable, "-c", REFUSALS], capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0 and "refused" in run.stdout, (run.returncode,
                                                              run.stderr[-3000:])
    assert wna16_mma.default_plan(28672).warps in wna16_mma.WARPS
