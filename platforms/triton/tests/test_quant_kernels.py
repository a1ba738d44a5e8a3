"""Quantized linear kernels against the core's de-quantize-then-matmul references.

The Triton W4A16 / W8A16 kernels run under ``TRITON_INTERPRET=1`` on small shapes without a
GPU (conftest.py) and on larger ones, bf16 included, with one. ``TritonLayerOps``' FP8
(``torch._scaled_mm``) and INT8 (``torch._int_mm``) paths need a CUDA GPU (``gpu`` marker).
"""

from __future__ import annotations

import pytest
import torch
from vllm_core_triton.kernels.wna16 import wna16_linear
from vllm_core_triton.ops import TritonLayerOps

from vllm_core.model_executor.quantization.quantized_weights import (
    FP8_MAX,
    Fp8Weight,
    Int8Weight,
    WNA16Weight,
    fp8_linear_reference,
    int8_linear_reference,
    pack_int32,
    wna16_linear_reference,
)

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
K, N = (256, 96) if not ON_GPU else (1024, 544)


def random_wna16(k: int, n: int, bits: int, group_size: int, act_order: bool,
                 dtype: torch.dtype, seed: int = 0) -> WNA16Weight:
    gen = torch.Generator().manual_seed(seed)
    gs = k if group_size == -1 else group_size
    groups = k // gs
    q = torch.randint(0, 2 ** bits, (k, n), generator=gen)
    scales = (torch.rand(groups, n, generator=gen) * 0.02 + 0.005).to(dtype)
    zeros = torch.randint(0, 2 ** bits, (groups, n), generator=gen).to(dtype)
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k) // gs)[torch.randperm(k, generator=gen)].to(torch.int32)
    return WNA16Weight(pack_int32(q, bits, 0).to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE),
                       None if g_idx is None else g_idx.to(DEVICE), bits, gs, k, n)


def _run(w: WNA16Weight, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return wna16_linear(x, w.qweight, w.scales, w.zeros, w.g_idx, w.bits, w.group_size, bias)


@pytest.mark.parametrize("rows", [1, 3, 20])
@pytest.mark.parametrize("bits,group_size,act_order", [(4, 128, False), (4, 32, True),
                                                       (4, -1, False), (8, 64, False),
                                                       (8, 128, True)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["exact", "factored", "tc"])
def test_wna16_matches_dequantize_then_matmul(monkeypatch, mode, rows, bits, group_size,
                                              act_order, dtype):
    """The GEMV kernels (the factored one, the default, serves groups that are a multiple of
    128 without act-order; the exact one the rest; ``tc`` fp16 / bf16 4-bit weights without
    act-order, the factored or exact one the rest) and the GEMM path at 20 rows."""
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", mode)
    _check_against_reference(random_wna16(K, N, bits, group_size, act_order, dtype), rows,
                             dtype, seed=1)


def _check_against_reference(w: WNA16Weight, rows: int, dtype: torch.dtype, seed: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel against the float32 de-quantize-then-matmul reference on ``rows`` random
    rows (with a bias at 3 rows); returns ``(x, got, want)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, K, generator=gen).to(DEVICE, dtype)
    bias = torch.randn(N, generator=gen).to(DEVICE, dtype) if rows == 3 else None
    got = _run(w, x, bias)
    want = wna16_linear_reference(x.float(), w, None if bias is None else bias.float())
    assert got.dtype == dtype and got.shape == (rows, N)
    torch.testing.assert_close(got.float(), want, atol=TOL[dtype] * want.abs().max().item(),
                               rtol=TOL[dtype])
    return x, got, want


def test_wna16_rows_are_independent_of_the_batch():
    """Decode rows (GEMV path) give the same result alone or together."""
    w = random_wna16(K, N, 4, 64, False, torch.float32, seed=3)
    x = torch.randn(4, K, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    together = _run(w, x, None)
    for i in range(4):
        torch.testing.assert_close(_run(w, x[i:i + 1], None)[0], together[i], atol=0, rtol=0)


def _past_k_case() -> tuple[WNA16Weight, WNA16Weight, torch.Tensor]:
    """A weight for a split-K GEMV whose last split runs past K (9 K-steps over 5 splits of
    2), the same weight with its scales and zeros as views of tensors with one more row of
    NaN, and a row of x."""
    k, n, gs = 1152, 64, 128
    w = random_wna16(k, n, 4, gs, False, torch.float32, seed=7)
    groups = k // gs
    pad_s = torch.full((groups + 1, n), float("nan"), device=DEVICE)
    pad_z = torch.full((groups + 1, n), float("nan"), device=DEVICE)
    pad_s[:groups], pad_z[:groups] = w.scales, w.zeros
    w_view = WNA16Weight(w.qweight, pad_s[:groups], pad_z[:groups], None, 4, gs, k, n)
    return w, w_view, torch.randn(1, k, generator=torch.Generator().manual_seed(8)).to(DEVICE)


@pytest.mark.parametrize("chunk", [None, 2])
def test_wna16_gemv_last_split_past_k_reads_no_group_beyond_the_scales(chunk, monkeypatch):
    """Split-K GEMV whose last split runs past K (9 K-steps over 5 splits of 2): the
    per-group scale/zero rows are read only for groups that exist. The scales and zeros are
    views of tensors with one more row of NaN, so a read of group ``K / group_size`` (the bug:
    an out-of-bounds read, an illegal address on the GPU at the 8B shapes) poisons the result.
    With ``chunk`` 2 the 5 partials are summed 2, 2 and 1 a load (the last load short)."""
    if chunk is not None:
        from vllm_core_triton.kernels import wna16

        monkeypatch.setattr(wna16, "_split_chunk", lambda split, elems: chunk)
    w, w_view, x = _past_k_case()
    got = _run(w_view, x, None)
    want = wna16_linear_reference(x, w)
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("bits,group_size", [(4, 128), (4, -1), (8, 128), (4, 256)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_factored_gemv_matches_dequantize_then_matmul(monkeypatch, rows, bits, group_size,
                                                      dtype, pairs):
    """VLLM_TRITON_WNA16_GEMV=factored: the group scale out of the inner product, integers
    turned into floats by bit tricks (every nibble / byte position, 4 and 8 bits; with
    ``pairs`` the half-pair plan, which 8-bit weights ignore), against the float32
    reference; rows alone equal rows together; the exact kernel still serves act-order
    weights and groups under 128 in that mode."""
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", "factored")
    from vllm_core_triton.kernels.wna16 import default_gemv_tiles

    assert default_gemv_tiles("factored").half_pairs   # the default plan converts half pairs
    plan = default_gemv_tiles("factored").tag().rsplit(",", 1)[0] + f",{int(pairs)}"
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV_TILES", plan)
    assert default_gemv_tiles("factored").half_pairs == pairs
    w = random_wna16(K, N, bits, group_size, False, dtype, seed=11)
    x, got, want = _check_against_reference(w, rows, dtype, seed=12)
    if dtype == torch.float32:
        # the float32 result is the reference's product up to summation order (and, with
        # pairs, the cancellation of the 128 offset)
        torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item(), rtol=1e-5)
        if rows == 3:
            for i in range(rows):
                torch.testing.assert_close(_run(w, x[i:i + 1], None)[0],
                                           _run(w, x, None)[i], atol=0, rtol=0)
    w_act = random_wna16(K, N, bits, 32, True, dtype, seed=13)
    torch.testing.assert_close(_run(w_act, x, None).float(),
                               wna16_linear_reference(x.float(), w_act),
                               atol=TOL[dtype] * 10, rtol=TOL[dtype])


def test_factored_gemv_last_split_past_k_and_bad_mode(monkeypatch):
    """The factored kernel's last split past K reads no scale row beyond the groups (NaN
    guard as above); an unknown mode is refused naming the variable."""
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", "factored")
    w, w_view, x = _past_k_case()
    got = _run(w_view, x, None)
    assert not got.isnan().any()
    want = wna16_linear_reference(x, w)
    torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item(), rtol=1e-5)
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", "fast")
    with pytest.raises(ValueError, match="VLLM_TRITON_WNA16_GEMV"):
        _run(w, x, None)


HALF_DTYPES = [torch.float16] + ([torch.bfloat16] if ON_GPU else [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tc_magic_numbers_make_the_nibble_plus_offset(dtype):
    """Each 16-bit half of the tc kernel's magic pattern with a nibble in its low bits is the
    half float ``OFF + q`` exactly, for every nibble (bf16 included: the interpreter cannot
    bit-cast to bf16, the GPU run checks the kernel)."""
    from vllm_core_triton.kernels.wna16 import _TC_HALF

    magic, off = _TC_HALF[dtype]
    q = torch.arange(16, dtype=torch.int32)
    for half in (magic & 0xFFFF, magic >> 16):
        got = (q | half).to(torch.int16).view(dtype).float()
        assert torch.equal(got, q.float() + off)


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("group_size", [128, 256, -1])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_tc_gemv_matches_dequantize_then_matmul(monkeypatch, rows, group_size, dtype):
    """VLLM_TRITON_WNA16_GEMV=tc: tensor-core dots on nibbles made half floats, the offset
    folded into the zero, against the float32 reference at 1, 3 and 16 rows (one M tile),
    with a bias at 3 and 16 rows; two plans (the default one, split in two here, and 16
    outputs a program with one wave, unsplit here: the split follows the SM count); each row alone gives bit for bit its result in the batch (the K split does not
    depend on the rows; x on a grid where float32 sums are exact, so that only a dependence
    on other rows' data can change a bit); a second call gives the same result (the counters
    went back to zero)."""
    from vllm_core_triton.kernels.wna16 import _SPLIT_LOCKS, GemvTiles, wna16_gemv_tc

    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", "tc")
    w = random_wna16(K, N, 4, group_size, False, dtype, seed=31)
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(rows, K, generator=gen).to(DEVICE, dtype)
    bias = torch.randn(N, generator=gen).to(DEVICE, dtype) if rows > 1 else None
    want = wna16_linear_reference(x.float(), w, None if bias is None else bias.float())
    got = _run(w, x, bias)                                  # routed: the default plan
    unsplit = wna16_gemv_tc(x, w.qweight, w.scales, w.zeros, w.group_size, bias,
                            GemvTiles(16, waves=1))
    for out in (got, unsplit):
        assert out.dtype == dtype and out.shape == (rows, N)
        torch.testing.assert_close(out.float(), want, atol=TOL[dtype] * want.abs().max().item(),
                                   rtol=TOL[dtype])
    torch.testing.assert_close(_run(w, x, bias), got, atol=0, rtol=0)
    if rows > 1:
        # multiples of 1/4 under 4: every sum is exact in float32 whatever its order (under
        # the interpreter a dot's summation order depends on the row's place in the tile)
        xq = (torch.randint(-15, 16, (rows, K), generator=gen) / 4).to(DEVICE, dtype)
        together = _run(w, xq, bias)
        for i in sorted({0, rows // 2, rows - 1}):
            torch.testing.assert_close(_run(w, xq[i:i + 1], bias)[0], together[i], atol=0,
                                       rtol=0)
    assert int(_SPLIT_LOCKS[x.device].abs().sum()) == 0


def test_tc_gemv_last_split_past_k():
    """The tc kernel's last split runs past K (9 steps over 5 splits of 2): it reads no step
    and no scale row beyond K (scales and zeros are views of tensors with a row of NaN
    after them)."""
    from vllm_core_triton.kernels.wna16 import GemvTiles, wna16_gemv_tc

    w, _, x = _past_k_case()
    groups, n = w.scales.shape
    pad_s = torch.full((groups + 1, n), float("nan"), device=DEVICE, dtype=torch.float16)
    pad_z = pad_s.clone()
    pad_s[:groups], pad_z[:groups] = w.scales, w.zeros
    x = x.half()
    got = wna16_gemv_tc(x, w.qweight, pad_s[:groups], pad_z[:groups], 128, None,
                        GemvTiles(64, waves=2))
    assert not got.isnan().any()
    want = wna16_linear_reference(x.float(), WNA16Weight(
        w.qweight, pad_s[:groups], pad_z[:groups], None, 4, 128, w.in_features, n))
    torch.testing.assert_close(got.float(), want, atol=1e-2 * want.abs().max().item(),
                               rtol=1e-2)


def test_tc_mode_falls_back_for_what_it_cannot_serve(monkeypatch):
    """In tc mode the tensor-core GEMV takes fp16 / bf16 x of 1-16 rows with 4-bit weights
    without act-order and groups a multiple of 128; 8-bit weights, float32 x and groups of
    64 go to the factored kernel, act-order to the exact one (1-4 rows) or the GEMM (more),
    17 rows to the GEMM; other modes never pick tc. The fallbacks match the reference."""
    from vllm_core_triton.kernels.wna16 import GemvTiles, gemv_kernel, wna16_gemv_tc

    f16, f32, g = torch.float16, torch.float32, torch.zeros(8, dtype=torch.int32)
    pick = {args: (None if r is None else r[0])
            for args in [("tc", f16, 4, None, 128, 1), ("tc", f16, 4, None, 256, 16),
                         ("tc", torch.bfloat16, 4, None, 128, 9), ("tc", f16, 4, None, 128, 17),
                         ("tc", f16, 8, None, 128, 1), ("tc", f32, 4, None, 128, 2),
                         ("tc", f16, 4, None, 64, 2), ("tc", f16, 4, g, 128, 2),
                         ("tc", f16, 8, None, 128, 5), ("factored", f16, 4, None, 128, 1),
                         ("factored", f16, 4, None, 128, 8), ("exact", f16, 4, None, 128, 1)]
            for r in [gemv_kernel(*args)]}
    assert list(pick.values()) == ["tc", "tc", "tc", None, "factored", "factored", "exact",
                                   "exact", None, "factored", None, "exact"]
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV_TILES", "128,64,4,1,2")   # block_k 64: not tc
    assert gemv_kernel("tc", f16, 4, None, 128, 1)[0] == "factored"
    monkeypatch.delenv("VLLM_TRITON_WNA16_GEMV_TILES")
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", "tc")
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(33)).to(DEVICE)
    for bits, gs, act, dtype in ((8, 128, False, torch.float16), (4, 128, False, torch.float32),
                                 (4, 32, True, torch.float16)):
        w = random_wna16(K, N, bits, gs, act, dtype, seed=34)
        want = wna16_linear_reference(x.to(dtype).float(), w)
        torch.testing.assert_close(_run(w, x.to(dtype), None).float(), want,
                                   atol=TOL[dtype] * want.abs().max().item(), rtol=TOL[dtype])
    w = random_wna16(K, N, 4, 128, False, torch.float16, seed=35)
    for bad in (x.half()[:, :128], x, torch.zeros(17, K, dtype=torch.float16, device=DEVICE)):
        with pytest.raises(ValueError, match="tc GEMV needs|qweight packs"):
            wna16_gemv_tc(bad, w.qweight, w.scales, w.zeros, 128, None, GemvTiles(128))
    for tiles in (GemvTiles(96), GemvTiles(8), GemvTiles(128, 64)):
        with pytest.raises(ValueError, match="tc GEMV needs"):
            wna16_gemv_tc(x.half(), w.qweight, w.scales, w.zeros, 128, None, tiles)


def test_layer_ops_route_wna16_to_the_kernel(monkeypatch):
    """The layer ops call the kernel; the kernel name (start-up log) says which GEMV serves a
    decode step of the weight under the mode and up to how many rows."""
    w = random_wna16(K, N, 4, 64, True, torch.float32, seed=5)
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    ops = TritonLayerOps()
    torch.testing.assert_close(ops.wna16_linear(x, w), wna16_linear_reference(x, w),
                               atol=1e-4, rtol=1e-4)
    assert ops.quant_kernel_name("wna16", w).endswith("GEMV exact to 4 rows, then GEMM)")
    w16 = random_wna16(K, N, 4, 128, False, torch.float16, seed=5)
    assert "GEMV factored to 4 rows" in ops.quant_kernel_name("wna16", w16)
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", "tc")
    assert "GEMV tc to 16 rows" in ops.quant_kernel_name("wna16", w16)


# ------------------------------------------------------------------------------- GPU only
def _fp8_weight(n: int, k: int, static: bool) -> Fp8Weight:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(n, k, generator=gen) * 0.05
    scale = w.abs().amax(1) / FP8_MAX
    q = (w / scale[:, None]).to(torch.float8_e4m3fn)
    input_scale = torch.tensor(0.02) if static else None
    return Fp8Weight(q.cuda(), scale.cuda(), None, None,
                     None if input_scale is None else input_scale.cuda())


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_scaled_mm_matches_reference(rows, static):
    w = _fp8_weight(512, 1024, static)
    x = (torch.randn(rows, 1024, generator=torch.Generator().manual_seed(8)) * 2).cuda()
    x = x.to(torch.bfloat16)
    ops = TritonLayerOps()
    assert "scaled_mm" in ops.quant_kernel_name("fp8", w)
    got = ops.fp8_linear(x, w)
    want = fp8_linear_reference(x, w)
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2 * want.abs().max().item(),
                               rtol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 40])
def test_int8_int_mm_matches_reference(rows):
    gen = torch.Generator().manual_seed(9)
    w = torch.randint(-127, 128, (512, 1024), generator=gen, dtype=torch.int8)
    qw = Int8Weight(w.cuda(), (torch.rand(512, generator=gen) * 1e-3).cuda(), None)
    x = torch.randn(rows, 1024, generator=gen).cuda().to(torch.bfloat16)
    ops = TritonLayerOps()
    assert "_int_mm" in ops.quant_kernel_name("int8", qw)
    got, want = ops.int8_linear(x, qw), int8_linear_reference(x, qw)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2 * want.abs().max().item(),
                               rtol=2e-2)


def _check_decode_graph_replay_equals_eager() -> None:
    """A bf16 decode call (1 row, the 8B qkv shape) captured in a CUDA graph and replayed
    gives the eager result exactly (the kernel the environment selects)."""
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    w = random_wna16(4096, 6144, 4, 128, False, torch.bfloat16, seed=11)
    eager = _run(w, x, None)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _run(w, x, None)                       # warm up (compiles) outside the capture
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            out = _run(w, x, None)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, atol=0, rtol=0)


@pytest.mark.gpu
def test_wna16_8b_shapes_and_cuda_graph_capture():
    """The 8B model's projections at decode (1 row) and prefill (512 rows) in bf16, and a
    captured-then-replayed decode call gives the eager result."""
    for k, n in ((4096, 6144), (4096, 28672), (14336, 4096)):
        w = random_wna16(k, n, 4, 128, False, torch.bfloat16, seed=k)
        for rows in (1, 512):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            want = wna16_linear_reference(x, w)
            torch.testing.assert_close(_run(w, x, None).float(), want.float(),
                                       atol=2e-2 * want.abs().max().item(), rtol=2e-2)
    _check_decode_graph_replay_equals_eager()


@pytest.mark.gpu
def test_tc_gemv_8b_shapes_bf16_and_cuda_graph_capture(monkeypatch):
    """VLLM_TRITON_WNA16_GEMV=tc at the 8B projections in bf16 (1, 5 and 16 rows) against the
    reference, rows alone equal rows in the batch, and a captured-then-replayed decode call
    gives the eager result."""
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV", "tc")
    for k, n in ((4096, 6144), (4096, 28672), (14336, 4096)):
        w = random_wna16(k, n, 4, 128, False, torch.bfloat16, seed=k)
        x = torch.randn(16, k, device="cuda", dtype=torch.bfloat16)
        for rows in (1, 5, 16):
            want = wna16_linear_reference(x[:rows], w)
            got = _run(w, x[:rows], None)
            torch.testing.assert_close(got.float(), want.float(),
                                       atol=2e-2 * want.abs().max().item(), rtol=2e-2)
            torch.testing.assert_close(_run(w, x[rows - 1:rows], None)[0], got[rows - 1],
                                       atol=0, rtol=0)
    _check_decode_graph_replay_equals_eager()


# ------------------------------------------------------------------------ per-token FP8 quant
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + (
    [torch.bfloat16] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("rows,cols", [(1, 64), (5, 3000), (3, 4097)])
@pytest.mark.parametrize("static", [False, True])
def test_per_token_quant_fp8_equals_the_reference(dtype, rows, cols, static):
    """One launch gives ``quantize_per_token``'s float8 values and scales bit for bit (rows
    with large and zero values, K not a multiple of the block, several blocks per row)."""
    from vllm_core_triton.kernels.quant_fp8 import per_token_quant_fp8

    from vllm_core.model_executor.quantization.quantized_weights import (
        FP8_MAX,
        quantize_per_token,
    )

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(rows * cols)
    x = (torch.randn(rows, cols, generator=gen) * torch.logspace(-3, 3, rows).view(-1, 1))
    x[0, :7] = torch.tensor([1e4, -1e4, 0.0, 1e-6, -3.5, 448.0, 449.0]) if cols >= 7 else 0
    if rows > 2:
        x[2] = 0.0                                  # an all-zero row: scale 1e-12 / 448
    x = x.to(dtype)
    scale = torch.tensor(0.37) if static else None
    want_q, want_s = quantize_per_token(x, FP8_MAX, scale, torch.float8_e4m3fn)
    got_q, got_s = per_token_quant_fp8(x.to(dev), None if scale is None else scale.to(dev))
    assert got_q.dtype == torch.float8_e4m3fn and got_s.shape == (rows, 1)
    torch.testing.assert_close(got_s.cpu(), want_s.expand(rows, 1), rtol=0, atol=0)
    assert torch.equal(got_q.cpu().view(torch.uint8), want_q.view(torch.uint8))


@pytest.mark.parametrize("chunks", ["one load", "two splits a load"])
@pytest.mark.parametrize("factored", [False, True])
def test_gemv_split_k_reduced_in_kernel_leaves_counters_at_zero(factored, chunks, monkeypatch):
    """The split-K GEMV sums its partials inside the kernel (the last program of each output
    block, a chunk of splits per load): several plans, split and unsplit, give the
    reference's result, the same result on a second call (the arrival counters were set back
    to zero), and a bias is added; also summing two splits a load."""
    from vllm_core_triton.kernels import wna16
    from vllm_core_triton.kernels.wna16 import _SPLIT_LOCKS, GemvTiles, wna16_gemv

    if chunks == "two splits a load":
        monkeypatch.setattr(wna16, "SPLIT_SUM_VALUES", 2 * 128)
        assert wna16._split_chunk(8, 128) == 2

    w = random_wna16(K, N, 4, 128, False, torch.float32, seed=21)
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, K, generator=gen).to(DEVICE)
    bias = torch.randn(N, generator=gen).to(DEVICE)
    want = wna16_linear_reference(x, w, bias)
    for tiles in (GemvTiles(32, 64, waves=1), GemvTiles(64, 128, waves=8),
                  GemvTiles(128, 32, num_warps=8, num_stages=1, waves=64),
                  GemvTiles(64, 128, waves=8, early_scales=True),
                  GemvTiles(64, 128, waves=8, half_pairs=True),
                  GemvTiles(128, 32, num_warps=8, num_stages=1, waves=64, half_pairs=True),
                  GemvTiles(32, 64, num_stages=3, waves=1),
                  GemvTiles(64, 128, num_stages=4, waves=1, half_pairs=True)):
        got = [wna16_gemv(x, w.qweight, w.scales, w.zeros, None, 4, 128, bias, factored, tiles)
               for _ in range(2)]
        torch.testing.assert_close(got[0], want, atol=1e-4 * want.abs().max().item(),
                                   rtol=1e-4)
        torch.testing.assert_close(got[1], got[0], atol=0, rtol=0)
    assert int(_SPLIT_LOCKS[x.device].abs().sum()) == 0
    with pytest.raises(ValueError, match="factored GEMV needs"):
        wna16_gemv(x, w.qweight, w.scales, w.zeros, None, 4, 128, None, True,
                   GemvTiles(64, 256))


@pytest.mark.parametrize("factored", [False, True])
def test_pipelined_gemv_loop_equals_unpipelined(factored):
    """A plan's ``num_stages`` only pipelines the K loop's loads: at the same blocks and split
    the result is bit-identical to the unpipelined plan's (the 8B projections on a GPU, long
    programs of many steps)."""
    from vllm_core_triton.kernels.wna16 import GemvTiles, wna16_gemv

    shapes = ((4096, 6144), (4096, 28672), (14336, 4096)) if ON_GPU else ((1024, 64),)
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    for k, n in shapes:
        w = random_wna16(k, n, 4, 128, False, dtype, seed=k + n)
        x = torch.randn(1, k, device=DEVICE, dtype=dtype)
        want = wna16_linear_reference(x, w)
        got = {stages: wna16_gemv(x, w.qweight, w.scales, w.zeros, None, 4, 128, None,
                                  factored, GemvTiles(64, 128, num_stages=stages, waves=1,
                                                      half_pairs=factored))
               for stages in (1, 3)}
        torch.testing.assert_close(got[3], got[1], atol=0, rtol=0)
        torch.testing.assert_close(got[3].float(), want.float(),
                                   atol=2e-2 * want.abs().max().item(), rtol=2e-2)


def test_gemv_tiles_variable(monkeypatch):
    """VLLM_TRITON_WNA16_GEMV_TILES picks the plan; a malformed one is refused by name."""
    from vllm_core_triton.kernels.wna16 import GemvTiles, default_gemv_tiles

    assert default_gemv_tiles("tc") == GemvTiles(128, 128, 4, 2, 2)
    with pytest.raises(ValueError, match="unknown wna16 GEMV kernel"):
        default_gemv_tiles(True)  # type: ignore[arg-type]   # the old boolean signature
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV_TILES", "256,64,8,3,1")
    assert default_gemv_tiles("factored") == GemvTiles(256, 64, 8, 3, 1)
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV_TILES", "256,64,8,3,1,1")
    assert default_gemv_tiles("factored") == GemvTiles(256, 64, 8, 3, 1, early_scales=True)
    assert default_gemv_tiles("tc").tag() == "256,64,8,3,1,1,0"
    monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV_TILES", "256,64,8,3,1,0,1")
    assert default_gemv_tiles("factored") == GemvTiles(256, 64, 8, 3, 1, half_pairs=True)
    w = random_wna16(K, N, 4, 128, False, torch.float32, seed=23)
    x = torch.randn(1, K, generator=torch.Generator().manual_seed(24)).to(DEVICE)
    want = wna16_linear_reference(x, w)
    torch.testing.assert_close(_run(w, x, None), want, atol=1e-4 * want.abs().max().item(),
                               rtol=1e-4)
    for bad in ("128,128,4,2", "100,128,4,2,2", "128,16,4,2,2", "a,b,c,d,e", "64,64,4,1,4,2",
                "64,64,4,1,4,0,2", "64,64,4,1,4,0,0,0"):
        monkeypatch.setenv("VLLM_TRITON_WNA16_GEMV_TILES", bad)
        with pytest.raises(ValueError, match="VLLM_TRITON_WNA16_GEMV_TILES"):
            default_gemv_tiles("exact")
