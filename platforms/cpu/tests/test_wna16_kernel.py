"""The CPU plugin's C++ int4 / int8 weight-only linear (``csrc/wna16_gemm.cpp``) against the
core's de-quantize-then-matmul reference, its fallbacks, and the default model (SmolLM2 Q4_1
GGUF) kept quantized against the same weights de-quantized in fp32 (greedy tokens)."""

from __future__ import annotations

import pytest
import torch

from vllm_core.model_executor.quantization.quantized_weights import (
    WNA16Weight,
    dequantize_wna16,
    pack_int32,
    wna16_linear_reference,
)
from vllm_core_cpu import quant_ops
from vllm_core_cpu.worker import CpuLayerOps

pytestmark = pytest.mark.skipif(not quant_ops.kernels_available(),
                                reason="the CPU plugin's C++ kernels did not build here")


def random_weight(k: int, n: int, bits: int, group: int, dtype: torch.dtype,
                  g: torch.Generator) -> WNA16Weight:
    q = torch.randint(0, 2 ** bits, (k, n), generator=g)
    groups = k // group
    scales = (torch.rand(groups, n, generator=g) * 0.02 + 1e-3).to(dtype)
    zeros = (torch.rand(groups, n, generator=g) * 2 ** bits).to(dtype)
    return WNA16Weight(pack_int32(q, bits, 0), scales, zeros, None, bits, group, k, n)


def activation_block(group: int) -> int:
    """The kernel's int8 activation block on x86 AVX2 (``csrc/wna16_avx2.h``)."""
    return 32 if group % 32 == 0 else group


def int8_activations(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as the AVX2 kernel sees it, d * round(x / d), and d per input) with
    d = max|x| / 127 per ``block`` inputs of a row, computed as the kernel does in fp32."""
    xb = x.float().reshape(x.shape[0], -1, block)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv).clamp(-127, 127)
    d = amax / 127.0
    return (q * d).reshape(x.shape), d.expand_as(xb).reshape(x.shape)


def kernel_reference(x: torch.Tensor, w: WNA16Weight, bias: torch.Tensor | None = None,
                     int8: bool = False) -> torch.Tensor:
    """The reference on the activations the kernel multiplies (``int8``: quantized), rows
    flattened to [T, K]."""
    x = x.reshape(-1, x.shape[-1])
    if int8:
        x = int8_activations(x, activation_block(w.group_size))[0]
    return wna16_linear_reference(x, w, bias)


#: the kernel's paths: fp32 products (default, every build) and int8 activations (x86 AVX2)
MODES = [False, pytest.param(True, marks=pytest.mark.skipif(
    not quant_ops.int8_activations_available(), reason="int8 activations: x86 AVX2 builds"))]


@pytest.mark.parametrize("int8", MODES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [16, 32, 128])
@pytest.mark.parametrize("k,n", [(256, 48), (384, 160), (128, 16)])
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 16, 20])
def test_kernel_matches_reference_fp32(bits, group, k, n, rows, int8):
    g = torch.Generator().manual_seed(bits * 1000 + group + k + rows)
    w = random_weight(k, n, bits, group, torch.float32, g)
    x = torch.randn(rows, k, generator=g)
    bias = torch.randn(n, generator=g)
    got = quant_ops.wna16_linear(x, w, bias, int8)
    assert got is not None and got.dtype == torch.float32
    # fp32 rounding: the kernel sums x * q per group, then subtracts z * sum(x) (terms up to
    # 255 * |x| that cancel), so the bound scales with sum |x| * q * s, not with |y|
    fp32 = 1e-6 * (x.abs() @ (w.scales.float().max() * 2 ** bits * torch.ones(k, n))) + 1e-6
    ref = wna16_linear_reference(x, w, bias)
    if not int8:
        assert bool(((got - ref).abs() <= fp32).all()), (got - ref).abs().max()
        return
    # x86 AVX2: int8 activations. Exact integer sums, so against the reference on the
    # activations the kernel saw only fp32 rounding remains ...
    seen, d = int8_activations(x, activation_block(group))
    ref_seen = wna16_linear_reference(seen, w, bias)
    assert bool(((got - ref_seen).abs() <= fp32).all()), (got - ref_seen).abs().max()
    # ... and against the float product, at most half a step d per input times |W|
    step = (d / 2) @ dequantize_wna16(w).abs().t()
    assert bool(((got - ref).abs() <= step + fp32).all()), ((got - ref).abs() - step).max()


@pytest.mark.parametrize("int8", MODES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 5, 24])
def test_kernel_matches_reference_bf16(bits, rows, int8):
    g = torch.Generator().manual_seed(rows + bits)
    w = random_weight(512, 96, bits, 32, torch.bfloat16, g)
    x = torch.randn(rows, 512, generator=g).bfloat16()
    got = quant_ops.wna16_linear(x, w, None, int8)
    assert got.dtype == torch.bfloat16
    ref = wna16_linear_reference(x.float(), WNA16Weight(
        w.qweight, w.scales.float(), w.zeros.float(), None, bits, 32, 512, 96))
    # bf16 rounding of the output (and, from 17 rows on, of the de-quantized weight)
    err = (got.float() - ref).abs().max() / ref.abs().max()
    assert err < 1e-2, err


@pytest.mark.parametrize("int8", MODES)
@pytest.mark.parametrize("bits,rows", [(4, 16), (4, 45), (8, 9)])
def test_batches_are_row_independent(bits, rows, int8):
    """Each row is computed alone, in one order, at any batch size (batch invariant: a token's
    result does not depend on its prefill chunk, its batch or prefix-cache hits)."""
    g = torch.Generator().manual_seed(3)
    w = random_weight(576, 960, bits, 32, torch.float32, g)
    x = torch.randn(rows, 576, generator=g)
    batched = quant_ops.wna16_linear(x, w, None, int8)
    for r in range(rows):
        assert torch.equal(quant_ops.wna16_linear(x[r:r + 1], w, None, int8)[0], batched[r])
    part = slice(3, 40 if rows > 40 else 9)
    assert torch.equal(quant_ops.wna16_linear(x[part], w, None, int8), batched[part])


@pytest.mark.parametrize("bits", [4, 8])
def test_prescaled_float_form_is_bitwise_the_shifted_one(bits):
    """The float path's fast form (activations pre-scaled by 2^-(bits * j), weights converted
    in place, ``tile_float<PRE>``) is taken only when every scaled activation stays a normal
    float; a batch holding a row with a tiny (subnormal) activation takes the shifted form.
    Batch invariance across the two calls shows the two forms give the same bits."""
    g = torch.Generator().manual_seed(5)
    w = random_weight(576, 960, bits, 32, torch.float32, g)
    x = torch.randn(3, 576, generator=g)
    x[2, 7] = 1e-39                                    # subnormal: forces the shifted form
    batched = quant_ops.wna16_linear(x, w, None, False)
    for r in range(2):
        assert torch.equal(quant_ops.wna16_linear(x[r:r + 1], w, None, False)[0], batched[r])
    torch.testing.assert_close(batched, kernel_reference(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("int8", MODES)
def test_layer_ops_use_the_kernel_and_fall_back(int8):
    g = torch.Generator().manual_seed(4)
    ops = CpuLayerOps(int8_activations=int8)
    w = random_weight(256, 48, 4, 32, torch.float32, g)
    assert ops.quant_kernel_name("wna16", w) == quant_ops.kernel_name(int8)
    x = torch.randn(2, 3, 256, generator=g)             # [..., K] inputs keep their shape
    y = ops.wna16_linear(x, w)
    assert y.shape == (2, 3, 48)
    torch.testing.assert_close(y.reshape(6, 48), kernel_reference(x, w, int8=int8), atol=2e-5,
                               rtol=2e-5)
    # act-order g_idx and output widths the kernel does not tile: the reference
    perm = torch.randperm(256, generator=g).int() // 32
    act = WNA16Weight(w.qweight, w.scales, w.zeros, perm, 4, 32, 256, 48)
    assert not quant_ops.kernel_fits(x, act, None)
    torch.testing.assert_close(ops.wna16_linear(x, act), wna16_linear_reference(x, act))
    odd = random_weight(256, 40, 4, 32, torch.float32, g)
    assert not quant_ops.kernel_fits(x, odd, None)
    assert ops.quant_kernel_name("wna16", odd).startswith("torch reference")
    torch.testing.assert_close(ops.wna16_linear(x, odd), wna16_linear_reference(x, odd))


def assert_greedy_close(model, ref_model, arch, prompt: list[int], steps: int) -> None:
    """``model``'s greedy tokens equal ``ref_model``'s, or at the first divergence ``model``'s
    token is in ``ref_model``'s top 5 there."""
    got, _ = greedy(model, arch, prompt, steps)
    ref, ref_logits = greedy(ref_model, arch, prompt, steps)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        if a != b:
            top5 = ref_logits[i].topk(5).indices.tolist()
            assert a in top5, (i, got, ref)
            break


@torch.no_grad()
def greedy(model, arch, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "model_executor"))
    from model_test_utils import new_kv_caches, run_step

    tokens, logits_seen = list(prompt), []
    kv = new_kv_caches(arch, 16)
    context = 0
    new = list(prompt)
    for _ in range(steps):
        (logits,) = run_step(model, kv, [new], [context])
        context += len(new)
        last = logits[-1]
        logits_seen.append(last)
        new = [int(last.argmax())]
        tokens.append(new[0])
    return tokens[len(prompt):], logits_seen


@pytest.mark.slow
@pytest.mark.parametrize("int8", MODES)
def test_default_model_kept_quantized_greedy_matches_dequantized_fp32(int8):
    """SmolLM2-135M Q4_1 with the C++ kernel (its Q8_0 tied embedding / LM head kept
    quantized too) vs the same file de-quantized to fp32: greedy tokens identical, or the
    kept-quantized token is in the fp32 model's top 5 where they first differ."""
    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.config import ModelConfig
    from vllm_core.model_executor.loader import get_model, load_arch_config, resolve_model

    path = resolve_model(None)
    arch = load_arch_config(path)
    kept = get_model(ModelConfig(model=path, dtype="float32"), ReferenceAttentionBackend,
                     torch.device("cpu"), ops=CpuLayerOps(int8_activations=int8))
    qkv = kept.model.layers[0].self_attn.qkv_proj
    assert qkv.qweights.bits == 4 and not hasattr(qkv, "weight")
    table = kept.model.embed_tokens                 # the tied Q8_0 embedding / LM head
    assert kept.lm_head is None and table.weight.numel() == 0
    assert table.qweights.bits == 8
    assert CpuLayerOps().quant_kernel_name("wna16", table.qweights) == quant_ops.kernel_name(
        False)
    deq = get_model(ModelConfig(model=path, dtype="float32", gguf_dequantize=True),
                    ReferenceAttentionBackend, torch.device("cpu"), ops=CpuLayerOps())
    prompt = [1780, 314, 260, 3575, 282, 4649, 47]           # "What is the capital of France?"
    assert_greedy_close(kept, deq, arch, prompt, 24)


def test_quantized_vocab_table_runs_the_kernel():
    """A vocabulary table kept in 8 bits: the LM head's logits by the C++ kernel equal the
    de-quantized table's, the lookup returns its rows."""
    from vllm_core.model_executor.layers.vocab_parallel import (
        VocabParallelEmbedding,
        local_logits,
    )
    from vllm_core.model_executor.quantization.quantized_weights import dequantize_wna16

    g = torch.Generator().manual_seed(5)
    w = random_weight(128, 96, 8, 32, torch.float32, g)       # hidden 128, vocab 96
    table = VocabParallelEmbedding(96, 128)
    table.load_quantized(w)
    assert quant_ops.kernel_fits(torch.empty(1, 128), table.qweights, None)
    hidden = torch.randn(3, 128, generator=g)
    for int8 in (False, quant_ops.int8_activations_available()):
        ref = kernel_reference(hidden, w, int8=int8)
        torch.testing.assert_close(local_logits(hidden, table, CpuLayerOps(int8)), ref,
                                   atol=2e-4, rtol=2e-5)
    ids = torch.tensor([[4, 95], [0, 4]])
    assert torch.equal(table(ids), dequantize_wna16(w)[ids])


def test_activation_mode_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_WNA16_ACTIVATIONS", raising=False)
    assert not CpuLayerOps().int8_activations                 # default: fp32 products
    monkeypatch.setenv("VLLM_CPU_WNA16_ACTIVATIONS", "int8")
    assert CpuLayerOps().int8_activations == quant_ops.int8_activations_available()
    monkeypatch.setenv("VLLM_CPU_WNA16_ACTIVATIONS", "int4")
    with pytest.raises(ValueError, match="VLLM_CPU_WNA16_ACTIVATIONS must be one of"):
        CpuLayerOps()
