"""FP8 KV cache in the CPU backend (``--kv-cache-dtype fp8`` / ``fp8_e4m3`` / ``fp8_e5m2``):
the C++ kernel and the SDPA path write exactly what ``kv_scales.quantize_kv`` writes and attend
over the values it stands for (``stored * scale``); a model's logits follow the reference
backend's on the same fp8 cache step after step; the fused decode stack takes fp8 caches
bitwise; the platform accepts the names and a cache of them holds twice the blocks."""

from __future__ import annotations

import pytest
import torch
from test_cpu_attention import build_case, fused_and_unfused, oracle

from vllm_core.attention.kv_scales import dequantize_kv, quantize_kv
from vllm_core.config import ModelConfig
from vllm_core.model_executor.batch_utils import make_batch_layout
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core_cpu.attention import CpuPagedAttentionBackend
from vllm_core_cpu.kernels import load_kernels

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
# (k_scale, v_scale): the uncalibrated default, and calibrated ones that move every value
SCALES = [(1.0, 1.0), (0.04, 0.3)]


def as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def fp8_case(q_lens, ctx_lens, h, hkv, d, dtype, kv_dtype, scales, seed=0):
    """``build_case`` with the earlier context stored in a ``kv_dtype`` cache (scaled)."""
    common, cache, q, new_k, new_v, qs, full_k, full_v = build_case(q_lens, ctx_lens, h, hkv, d,
                                                                    8, dtype, seed)
    ks, vs = (torch.tensor(s) for s in scales)
    fp8 = torch.stack([quantize_kv(cache[0], ks, kv_dtype), quantize_kv(cache[1], vs, kv_dtype)])
    seen_k = [dequantize_kv(quantize_kv(k, ks, kv_dtype), ks, torch.float32) for k in full_k]
    seen_v = [dequantize_kv(quantize_kv(v, vs, kv_dtype), vs, torch.float32) for v in full_v]
    return common, fp8, q, new_k, new_v, qs, seen_k, seen_v, (ks, vs)


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# the C++ kernel (32, 64, 128) and the SDPA path (40)
@pytest.mark.parametrize("h,hkv,d", [(9, 3, 64), (4, 4, 32), (8, 1, 128), (6, 2, 40)])
def test_fp8_cache_attends_over_the_values_it_stores(kv_dtype, scales, dtype, h, hkv, d):
    q_lens, ctx_lens = [1, 1, 9, 4], [5, 40, 0, 12]       # decodes, a first chunk, a later one
    common, cache, q, k, v, qs, seen_k, seen_v, (ks, vs) = fp8_case(
        q_lens, ctx_lens, h, hkv, d, dtype, kv_dtype, scales)
    builder = CpuPagedAttentionBackend.get_builder_cls()(8, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(h, d, d ** -0.5, hkv)
    assert impl.use_kernel == (d != 40)
    impl.set_kv_scales(ks, vs)
    out = impl.forward(q, k, v, cache, builder.build(common))
    assert out.dtype == dtype
    # the new K / V were stored as quantize_kv stores them, byte for byte
    slots = common.slot_mapping
    assert torch.equal(as_bits(cache[0].view(-1, hkv, d)[slots]),
                       as_bits(quantize_kv(k, ks, kv_dtype)))
    assert torch.equal(as_bits(cache[1].view(-1, hkv, d)[slots]),
                       as_bits(quantize_kv(v, vs, kv_dtype)))
    # the SDPA path widens to the activation dtype (bf16 rounds stored * scale)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    start = 0
    for r, n in enumerate(q_lens):
        ref = oracle(qs[r], seen_k[r], seen_v[r], ctx_lens[r], d ** -0.5)
        torch.testing.assert_close(out[start:start + n].float(), ref, atol=tol, rtol=tol)
        start += n


@pytest.mark.parametrize("kv_dtype", FP8)
def test_kernel_and_sdpa_path_agree_on_an_fp8_cache(kv_dtype):
    common, cache, q, k, v, *_, (ks, vs) = fp8_case([1, 1, 9, 4], [3, 30, 0, 12], 6, 2, 64,
                                                    torch.float32, kv_dtype, (0.5, 2.0))
    builder = CpuPagedAttentionBackend.get_builder_cls()(8, torch.device("cpu"))
    impl = CpuPagedAttentionBackend.get_impl_cls()(6, 64, 0.125, 2)
    impl.set_kv_scales(ks, vs)
    kernel_cache, sdpa_cache = cache.clone(), cache.clone()
    with_kernel = impl.forward(q, k, v, kernel_cache, builder.build(common))
    impl.use_kernel = False
    fallback = impl.forward(q, k, v, sdpa_cache, builder.build(common))
    torch.testing.assert_close(with_kernel, fallback, atol=1e-5, rtol=1e-5)
    assert torch.equal(as_bits(kernel_cache), as_bits(sdpa_cache))


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rotary_writes_fp8_as_rotary_then_forward(kv_dtype, dtype):
    """``forward_with_rotary`` on an fp8 cache against the torch rotary then ``forward``: the
    same attention, the same stored keys up to one fp8 step where the two rotaries' last bits
    differ (a rounding tie), the same stored values exactly."""
    h, hkv, d, q_lens = 9, 3, 64, [1, 6, 13]
    common, cache, q, k, v, *_, (ks, vs) = fp8_case(q_lens, [20, 16, 5], h, hkv, d, dtype,
                                                    kv_dtype, (0.1, 0.5), seed=2)
    impl = CpuPagedAttentionBackend.get_impl_cls()(h, d, d ** -0.5, hkv)
    impl.set_kv_scales(ks, vs)
    got, want, fused_cache = fused_and_unfused(impl, q, k, v, cache, common, q_lens, d, 8)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert torch.equal(as_bits(fused_cache[1]), as_bits(cache[1]))
    step = 2.0 ** -2 if kv_dtype == torch.float8_e5m2 else 2.0 ** -3     # relative fp8 step
    torch.testing.assert_close(fused_cache[0].float(), cache[0].float(), atol=1e-3, rtol=step)


@pytest.mark.parametrize("kv_dtype", FP8)
def test_kernel_widens_every_fp8_code_exactly(kv_dtype):
    """A query over one key returns that key's value row: with a 256-wide head holding all 256
    byte codes, the kernel's float8 -> float widening (cpu_vec ``loadv``) equals torch's on
    every finite code, subnormals included, times v_scale."""
    codes = torch.arange(256, dtype=torch.uint8).view(kv_dtype)
    finite = torch.isfinite(codes.float())
    cache = torch.zeros(2, 2, 16, 1, 256, dtype=kv_dtype)
    cache[1, 1, 0, 0] = codes
    out = torch.ops.vllm_core_cpu.paged_attention(
        torch.randn(1, 1, 256), cache[0], cache[1], torch.tensor([[1]]), torch.tensor([0]),
        torch.tensor([0]), 0.0625, 0, 1.0, 0.375)
    want = codes.float() * 0.375
    assert torch.equal(out.view(256)[finite], want[finite])


def test_a_cache_in_another_float_dtype_is_refused():
    common, cache, q, *_ = build_case([1], [3], 4, 2, 64, 8, torch.float32)
    md = CpuPagedAttentionBackend.get_builder_cls()(8, torch.device("cpu")).build(common)
    with pytest.raises(RuntimeError, match="or float8"):
        torch.ops.vllm_core_cpu.paged_attention(q.contiguous(), cache[0].half(), cache[1].half(),
                                                md.block_table, md.token_request,
                                                md.token_position, 0.125)


# --- a model: the CPU backend on an fp8 cache against the reference backend on one -----------

BLOCK = 16


@torch.no_grad()
def _greedy_logits(model, backend, arch, kv_dtype, prompt: list[int], steps: int):
    """Each step's last logits, greedy, one request, the ``backend``'s metadata builder."""
    shape = backend.get_kv_cache_shape(64, BLOCK, arch.num_key_value_heads, arch.head_dim)
    kv = [torch.zeros(shape, dtype=kv_dtype) for _ in range(arch.num_hidden_layers)]
    builder = backend.get_builder_cls()(BLOCK, torch.device("cpu"))
    tokens, context, out = list(prompt), 0, []
    for _ in range(steps):
        new = tokens[context:]
        layout = make_batch_layout([context], [len(new)], BLOCK)
        hidden = model(torch.tensor(new), layout.positions, kv, builder.build(layout.metadata))
        logits = model.compute_logits(hidden[-1:])[0]
        out.append(logits)
        context = len(tokens)
        tokens.append(int(logits.argmax()))
    return out, kv


@pytest.mark.skipif(not load_kernels(), reason="needs a C++ compiler for the CPU kernels")
@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("calibrated", [False, True])
def test_model_on_fp8_cache_follows_the_reference_backend(tmp_path, kv_dtype, calibrated):
    """A random Llama (head_dim 32, GQA) in fp32, greedy, prefill then decode steps: the CPU
    backend (fused rotary + C++ kernel) and the reference backend (the oracle) store the same
    fp8 bytes and produce the same logits up to float32 reassociation, with the checkpoint's
    scales (``calibrated``) or without."""
    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.model_executor.quantization.testing import tiny_llama
    from vllm_core_cpu.worker import CpuLayerOps

    tiny_llama(seed=3, hidden_size=128, num_attention_heads=4,
               num_key_value_heads=2).save_pretrained(str(tmp_path))
    arch = load_arch_config(str(tmp_path))
    logits, caches = {}, {}
    for backend in (CpuPagedAttentionBackend, ReferenceAttentionBackend):
        model = get_model(ModelConfig(model=str(tmp_path), dtype="float32", arch=arch), backend,
                          torch.device("cpu"), ops=CpuLayerOps())
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn.attn
            if calibrated:
                attn.load_kv_scale("k", torch.tensor(0.05 * (i + 1)))
                attn.load_kv_scale("v", torch.tensor(0.3))
                attn.process_after_loading()
        if backend is CpuPagedAttentionBackend:
            assert model.model.layers[0].self_attn.attn.impl.use_kernel
        logits[backend.name], caches[backend.name] = _greedy_logits(
            model, backend, arch, kv_dtype, [3, 14, 15, 92, 65, 35, 8, 9, 7], 8)
    for got, want in zip(logits["cpu_paged"], logits["reference"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    stored = sum(int((c != 0).sum()) for c in caches["cpu_paged"])
    assert stored > 0
    differ = sum(int((as_bits(a) != as_bits(b)).sum())
                 for a, b in zip(caches["cpu_paged"], caches["reference"], strict=True))
    assert differ <= stored // 1000          # rotary rounding ties at most


def test_platform_accepts_fp8_and_doubles_the_blocks():
    from vllm_core.attention.kv_cache_dtype import kv_cache_torch_dtype
    from vllm_core_cpu.platform import CpuPlatform

    assert {"fp8", "fp8_e4m3", "fp8_e5m2"} <= set(CpuPlatform.supported_kv_cache_dtypes)
    assert not CpuPagedAttentionBackend.unsupported_reasons(
        head_size=64, dtype="bfloat16", kv_cache_dtype="fp8", block_size=16, sliding_window=None)
    per_bf16 = torch.empty((), dtype=kv_cache_torch_dtype("auto", torch.bfloat16)).element_size()
    per_fp8 = torch.empty((), dtype=kv_cache_torch_dtype("fp8", torch.bfloat16)).element_size()
    assert per_bf16 == 2 * per_fp8


def _engine_run(kv_cache_dtype: str):
    """The default model (SmolLM2-135M Q4_1, fp32) through ``LLM``: greedy tokens with their
    top-5 logprobs, the KV blocks of a fixed 64 MiB budget, and the runner's fused-step count."""
    from vllm_core import LLM, SamplingParams

    llm = LLM(dtype="float32", kv_cache_dtype=kv_cache_dtype, max_num_seqs=2,
              enable_prefix_caching=False, kv_cache_space_gib=0.0625,
              max_model_len=1024)
    sp = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=5)
    prompts = [{"prompt_token_ids": [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]},
               {"prompt_token_ids": [1, 4093, 28, 2]}]
    outs = llm.generate(prompts, sp, use_tqdm=False)
    runner = llm.llm_engine.executor.worker.runner
    result = ([o.outputs[0].token_ids for o in outs], [o.outputs[0].logprobs for o in outs],
              llm.llm_engine.config.cache.num_blocks, runner.num_fused_steps,
              runner.kv_caches[0].dtype)
    llm.llm_engine.shutdown()
    return result


@pytest.mark.slow
@pytest.mark.skipif(not load_kernels(), reason="needs a C++ compiler for the CPU kernels")
def test_engine_with_fp8_cache_quadruples_fp32_blocks_and_keeps_the_tokens():
    """``LLM(kv_cache_dtype="fp8")``: one byte per element (4x an fp32 cache's blocks in the
    same memory), decode steps through the fused stack, and greedy tokens equal the float
    cache's or, at the first divergence, among its top 5."""
    tokens, logprobs, blocks, fused, dtype = _engine_run("fp8")
    ref_tokens, ref_logprobs, ref_blocks, _, ref_dtype = _engine_run("auto")
    assert (dtype, ref_dtype) == (torch.float8_e4m3fn, torch.float32)
    assert blocks >= 4 * ref_blocks - 4            # the null block and rounding
    assert fused > 0
    for got, want, want_lp in zip(tokens, ref_tokens, ref_logprobs, strict=True):
        turn = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if turn is not None:
            assert got[turn] in want_lp[turn]
