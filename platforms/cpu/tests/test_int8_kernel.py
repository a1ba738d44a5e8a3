"""The CPU plugin's C++ W8A8 INT8 linear (``csrc/int8_gemm.cpp``) against the core's reference
(``int8_linear_reference``: bit for bit, the activation quantization included), its batch
invariance and fallbacks, and online ``--quantization int8`` of the default model (SmolLM2 Q4_1
GGUF, de-quantized then re-quantized) against the same weights in fp32 (greedy tokens)."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.quantization.quantized_weights import (
    Int8Weight,
    int8_linear_reference,
)
from vllm_core_cpu import int8_ops
from vllm_core_cpu.worker import CpuLayerOps

pytestmark = pytest.mark.skipif(not int8_ops.kernels_available(),
                                reason="the CPU plugin's C++ kernels did not build here")


def random_weight(n: int, k: int, g: torch.Generator, per_tensor: bool = False,
                  static: bool = False) -> Int8Weight:
    # the full int8 range, -128 included (compressed-tensors checkpoints may hold it)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, generator=g) * 1e-2 + 1e-4
    if per_tensor:                    # what the loader makes of a per-tensor scale
        scale = scale[:1].expand(n).contiguous()
    input_scale = torch.tensor(0.03) if static else None
    return Int8Weight(q, scale, input_scale)


SHAPES = [(1, 576, 960), (2, 100, 33), (4, 577, 64), (7, 1536, 576), (16, 63, 5),
          (45, 130, 50), (300, 200, 97), (3, 1000, 3)]


@pytest.mark.parametrize("rows,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("static", [False, True])
def test_kernel_equals_reference(rows, k, n, dtype, per_tensor, static):
    """Exact: the kernel's int8 activations, int32 sums and scale products are the
    reference's (rows 1..300, K and N not multiples of the vector widths)."""
    g = torch.Generator().manual_seed(rows * 7 + k + n + static)
    w = random_weight(n, k, g, per_tensor, static)
    x = (torch.randn(rows, k, generator=g) * 3).to(dtype)
    x[0, :5] = 0.0
    if static:
        x[-1, 0] = 50.0                # beyond 127 * input_scale: clamped like the reference
    bias = torch.randn(n, generator=g)
    got = int8_ops.int8_linear(x, w, bias)
    assert got is not None and got.dtype == dtype and got.shape == (rows, n)
    assert torch.equal(got, int8_linear_reference(x, w, bias))
    assert torch.equal(int8_ops.int8_linear(x, w, None), int8_linear_reference(x, w, None))


def test_zero_rows_and_float16():
    g = torch.Generator().manual_seed(1)
    w = random_weight(24, 40, g)
    assert int8_ops.int8_linear(torch.zeros(0, 40), w, None).shape == (0, 24)
    x = torch.randn(3, 40, generator=g).half()
    assert torch.equal(int8_ops.int8_linear(x, w, None), int8_linear_reference(x, w))


@pytest.mark.parametrize("rows", [16, 45])
def test_batches_are_row_independent(rows):
    """A row's result does not depend on the batch it is computed in (prefix caching and
    chunked prefill do not change a seeded sample)."""
    g = torch.Generator().manual_seed(3)
    w = random_weight(960, 576, g)
    x = torch.randn(rows, 576, generator=g)
    batched = int8_ops.int8_linear(x, w, None)
    for r in range(rows):
        assert torch.equal(int8_ops.int8_linear(x[r:r + 1], w, None)[0], batched[r])
    assert torch.equal(int8_ops.int8_linear(x[3:9], w, None), batched[3:9])


PATH_SHAPES = [(16, 576, 960), (33, 1536, 576), (64, 64, 32), (100, 130, 50), (17, 63, 5),
               (203, 66, 130), (389, 8, 64), (9, 200, 70), (1, 576, 960), (2, 100, 33),
               (4, 577, 64), (7, 1536, 576), (40, 256, 96), (1, 64, 96)]


@pytest.mark.parametrize("rows,k,n", PATH_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_amx_packed_and_vector_paths_agree(rows, k, n, dtype):
    """The ``[N, K]`` weight: calls of 16 rows or more take the AMX tiles where the CPU has
    them (repacked per call, rows padded to 32; the gather repack when K is a multiple of 64
    and the column block is full, the scalar one otherwise), else the unpacked vector dot
    products. The weight packed at load (AVX-512 VNNI builds): the packed VNNI dot products at
    every row count (row tiles of 3 and their tails, row chunks, partial column blocks and
    input quads), from 16 rows the AMX tiles reading the packed words. All give the
    reference's output bit for bit; a CPU without AMX / VNNI runs what it has."""
    g = torch.Generator().manual_seed(rows + k + n)
    w = random_weight(n, k, g)
    x = (torch.randn(rows, k, generator=g) * 2).to(dtype)
    bias = torch.randn(n, generator=g)
    ref = int8_linear_reference(x, w, bias)
    layouts = [w]
    if int8_ops.packed_built():
        packed = int8_ops.pack(w)
        assert isinstance(packed, int8_ops.PackedInt8Weight)
        layouts.append(packed)
    for layout in layouts:
        for amx in (True, False):
            got = int8_ops.int8_linear(x, layout, bias, allow_amx=amx)
            assert torch.equal(got, ref), (type(layout).__name__, amx)
        # a row's result does not depend on the rows around it, whichever path the call took
        assert torch.equal(int8_ops.int8_linear(x[rows // 3:], layout, bias, allow_amx=False),
                           ref[rows // 3:])


@pytest.mark.skipif(not int8_ops.packed_built(), reason="no AVX-512 VNNI in this build")
@pytest.mark.parametrize("n,k", [(960, 576), (5, 63), (130, 66), (64, 1), (48, 128)])
def test_packed_layout_round_trips(n, k):
    """The packed layout holds the weight exactly (``unpack``), in 16-column panels padded to
    an even count and 64 inputs, and a packed weight the kernel cannot take (activations of another dtype) runs the
    reference on the unpacked weight."""
    w = random_weight(n, k, torch.Generator().manual_seed(n + k), static=True)
    p = int8_ops.pack(w)
    assert p.packed.dtype == torch.int32
    assert p.packed.shape == ((n + 31) // 32 * 2, (k + 63) // 64 * 16, 16)
    back = p.unpack()
    assert torch.equal(back.weight, w.weight) and back.input_scale is w.input_scale
    x = torch.randn(3, k, dtype=torch.float64)
    assert torch.equal(int8_ops.int8_linear(x, p, None), int8_linear_reference(x, w, None))


def test_kernel_name_says_which_path_runs():
    from vllm_core_cpu.isa import detect_isa

    if "AVX512_VNNI" in detect_isa().features:       # the build is -march=native
        assert int8_ops.packed_built()
    assert int8_ops.kernel_name(False) == int8_ops.KERNEL_NAME
    assert int8_ops.kernel_name(False, packed=True) == int8_ops.KERNEL_NAME_PACKED
    amx = int8_ops.amx_ready()
    assert int8_ops.kernel_name(True) == (int8_ops.KERNEL_NAME_AMX if amx
                                          else int8_ops.KERNEL_NAME)
    assert int8_ops.kernel_name(True, packed=True) == (
        int8_ops.KERNEL_NAME_PACKED_AMX if amx else int8_ops.KERNEL_NAME_PACKED)
    w = random_weight(32, 64, torch.Generator().manual_seed(0))
    unpacked_ops = CpuLayerOps(int8_amx=False, int8_packed=False)
    assert unpacked_ops.prepare_quantized("int8", w) is w
    assert unpacked_ops.quant_kernel_name("int8", w) == int8_ops.KERNEL_NAME
    ops = CpuLayerOps(int8_amx=False)
    prepared = ops.prepare_quantized("int8", w)
    if int8_ops.packed_built():
        assert isinstance(prepared, int8_ops.PackedInt8Weight)
        assert ops.quant_kernel_name("int8", prepared) == int8_ops.KERNEL_NAME_PACKED
    else:
        assert prepared is w


def test_layer_ops_use_the_kernel_and_fall_back():
    g = torch.Generator().manual_seed(4)
    ops = CpuLayerOps()
    w = random_weight(48, 256, g)
    assert ops.quant_kernel_name("int8", w) == int8_ops.kernel_name(True)
    x = torch.randn(2, 3, 256, generator=g)             # [..., K] inputs keep their shape
    y = ops.int8_linear(x, w)
    assert y.shape == (2, 3, 48)
    assert torch.equal(y, int8_linear_reference(x, w))
    # a weight scale the loader did not flatten to [N] float32: the reference
    odd = Int8Weight(w.weight, w.weight_scale.double(), None)
    assert not int8_ops.kernel_fits(x, odd)
    assert ops.quant_kernel_name("int8", odd).startswith("torch reference")
    torch.testing.assert_close(ops.int8_linear(x, odd), int8_linear_reference(x, odd))


@pytest.mark.slow
def test_default_model_online_int8_greedy_matches_fp32():
    """SmolLM2-135M (the Q4_1 GGUF de-quantized) with ``--quantization int8`` through the C++
    kernel vs the same weights in fp32: greedy tokens identical, or the int8 token is in the
    fp32 model's top 5 where they first differ."""
    from test_wna16_kernel import assert_greedy_close

    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.config import ModelConfig
    from vllm_core.model_executor.loader import get_model, load_arch_config, resolve_model

    path = resolve_model(None)
    arch = load_arch_config(path)
    q = get_model(ModelConfig(model=path, dtype="float32", quantization="int8"),
                  ReferenceAttentionBackend, torch.device("cpu"), ops=CpuLayerOps())
    qkv = q.model.layers[0].self_attn.qkv_proj
    assert not hasattr(qkv, "weight")
    if int8_ops.packed_built():          # packed once at load (LayerOps.prepare_quantized)
        assert isinstance(qkv.qweights, int8_ops.PackedInt8Weight)
    else:
        assert qkv.qweights.weight.dtype == torch.int8
    ref_model = get_model(ModelConfig(model=path, dtype="float32", gguf_dequantize=True),
                          ReferenceAttentionBackend, torch.device("cpu"), ops=CpuLayerOps())
    prompt = [1780, 314, 260, 3575, 282, 4649, 47]           # "What is the capital of France?"
    assert_greedy_close(q, ref_model, arch, prompt, 24)
