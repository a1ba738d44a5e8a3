"""The fused decode stack (``vllm_core_cpu/decode_stack.py``, ``csrc/decode_stack.cpp``): its
logits and KV-cache writes are bitwise the unfused module forward's, step after step, at batch
1 and in a batch (random-weight GPTQ Llama, both wna16 activation modes, the default SmolLM2
Q4_1 GGUF, and W8A8 INT8 weights packed at load); the runner uses it for decode-only steps only; models it does not take
are refused with a reason and run the module forward."""

from __future__ import annotations

import pytest
import torch

from vllm_core.config import ModelConfig
from vllm_core.model_executor.batch_utils import make_batch_layout
from vllm_core.model_executor.loader import get_model, load_arch_config
from vllm_core.model_executor.quantization.testing import tiny_llama, write_gptq
from vllm_core_cpu import int8_ops, quant_ops
from vllm_core_cpu.attention import CpuPagedAttentionBackend
from vllm_core_cpu.decode_stack import build_decode_stack
from vllm_core_cpu.worker import CpuLayerOps

pytestmark = pytest.mark.skipif(not quant_ops.kernels_available(),
                                reason="needs a C++ compiler for the CPU kernels")

BLOCK = 16
MODES = [False] + ([True] if quant_ops.int8_activations_available() else [])
# head_dim 32 (the attention kernel's smallest), GQA 2, group size 32 divides every input
ARCH = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=3)


def kv_caches(arch, num_blocks: int = 40, dtype=torch.float32) -> list[torch.Tensor]:
    shape = CpuPagedAttentionBackend.get_kv_cache_shape(num_blocks, BLOCK,
                                                        arch.num_key_value_heads, arch.head_dim)
    return [torch.zeros(shape, dtype=dtype) for _ in range(arch.num_hidden_layers)]


def metadata(context_lens: list[int], query_lens: list[int]):
    layout = make_batch_layout(context_lens, query_lens, BLOCK)
    builder = CpuPagedAttentionBackend.get_builder_cls()(BLOCK, torch.device("cpu"))
    return layout.positions, builder.build(layout.metadata)


@torch.no_grad()
def assert_stack_matches_modules(model, arch, prompts: list[list[int]], steps: int,
                                 int8: bool, dtype=torch.float32, int8_amx: bool = True,
                                 kv_dtype: torch.dtype | None = None) -> None:
    """Prefill every prompt with the module forward into two equal caches (in ``kv_dtype``,
    default the activation dtype), then decode ``steps`` greedy tokens for the whole batch
    twice: the module forward on one cache, the fused stack on the other. Logits, hidden
    states and caches must be equal bitwise."""
    kv_dtype = kv_dtype or dtype
    unfused, fused = kv_caches(arch, dtype=kv_dtype), kv_caches(arch, dtype=kv_dtype)
    stack = build_decode_stack(model, fused, dtype, int8, int8_amx)
    assert not isinstance(stack, str), stack
    assert stack.num_layers == arch.num_hidden_layers
    lens = [len(p) for p in prompts]
    positions, md = metadata([0] * len(prompts), lens)
    ids = torch.tensor([t for p in prompts for t in p])
    for caches in (unfused, fused):
        hidden = model(ids, positions, caches, md)
    last = torch.tensor(lens).cumsum(0) - 1
    new = model.compute_logits(hidden[last]).argmax(-1)
    for step in range(steps):
        context = [n + step for n in lens]
        positions, md = metadata(context, [1] * len(prompts))
        ref_hidden = model(new, positions, unfused, md)
        got_hidden = stack.forward(new, positions, md)
        assert torch.equal(got_hidden, ref_hidden), step
        ref, got = model.compute_logits(ref_hidden), model.compute_logits(got_hidden)
        assert torch.equal(got, ref), step
        new = ref.argmax(-1)
    for a, b in zip(unfused, fused, strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.fixture(scope="module")
def gptq_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("gptq"))
    write_gptq(folder, tiny_llama(**ARCH), bits=4, group_size=32)
    return folder


@pytest.mark.parametrize("int8", MODES)
def test_random_gptq_llama_fused_equals_unfused(gptq_folder, int8):
    arch = load_arch_config(gptq_folder)
    model = get_model(ModelConfig(model=gptq_folder, dtype="float32", arch=arch),
                      CpuPagedAttentionBackend, torch.device("cpu"),
                      ops=CpuLayerOps(int8_activations=int8))
    prompts = [[3, 50, 7, 91, 12, 40, 5, 66, 23], [8, 1, 77, 30], [60, 2, 9]]
    assert not build_decode_stack(model, kv_caches(arch), torch.float32, int8).embeds_in_stack
    assert_stack_matches_modules(model, arch, prompts[:1], 5, int8)       # batch 1
    assert_stack_matches_modules(model, arch, prompts, 4, int8)           # batch 3


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_cache_fused_equals_unfused(gptq_folder, kv_dtype):
    """An fp8 KV cache with calibrated per-layer scales: the stack passes each layer's scales
    to the attention as the module forward does (bitwise, caches included)."""
    arch = load_arch_config(gptq_folder)
    model = get_model(ModelConfig(model=gptq_folder, dtype="float32", arch=arch),
                      CpuPagedAttentionBackend, torch.device("cpu"), ops=CpuLayerOps())
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.attn.load_kv_scale("k", torch.tensor(0.1 * (i + 1)))
        layer.self_attn.attn.load_kv_scale("v", torch.tensor(0.5))
        layer.self_attn.attn.process_after_loading()
    prompts = [[3, 50, 7, 91, 12, 40, 5, 66, 23], [8, 1, 77, 30], [60, 2, 9]]
    assert_stack_matches_modules(model, arch, prompts, 4, False, kv_dtype=kv_dtype)


@pytest.mark.parametrize("dtype,int8", [("float32", m) for m in MODES] + [
    pytest.param("bfloat16", False, marks=pytest.mark.slow)])
def test_default_model_fused_equals_unfused(dtype, int8):
    from vllm_core.model_executor.loader import resolve_model

    path = resolve_model(None)
    arch = load_arch_config(path)
    model = get_model(ModelConfig(model=path, dtype=dtype), CpuPagedAttentionBackend,
                      torch.device("cpu"), ops=CpuLayerOps(int8_activations=int8))
    dt = getattr(torch, dtype)
    assert build_decode_stack(model, kv_caches(arch, dtype=dt), dt, int8).embeds_in_stack
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]
    assert_stack_matches_modules(model, arch, [prompt], 4, int8, dt)
    assert_stack_matches_modules(model, arch, [prompt, prompt[:4], [1, 2]], 3, int8, dt)


@pytest.mark.skipif(not int8_ops.packed_built(), reason="no AVX-512 VNNI in this build")
@pytest.mark.parametrize("amx", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_llama_fused_equals_unfused(tmp_path, dtype, amx):
    """``--quantization int8`` (weights packed at load): the stack runs the packed kernel as
    the modules do (AMX from 16 rows when allowed: 18 rows take it), bitwise."""
    arch = load_arch_config(_float_llama(tmp_path))
    ops = CpuLayerOps(int8_amx=amx)
    model = get_model(ModelConfig(model=str(tmp_path), dtype=dtype, arch=arch,
                                  quantization="int8"),
                      CpuPagedAttentionBackend, torch.device("cpu"), ops=ops)
    assert isinstance(model.model.layers[0].mlp.down_proj.qweights, int8_ops.PackedInt8Weight)
    dt = getattr(torch, dtype)
    prompts = [[3, 50, 7, 91, 12, 40, 5, 66, 23], [8, 1, 77, 30], [60, 2, 9]]
    assert_stack_matches_modules(model, arch, prompts[:1], 4, False, dt, int8_amx=amx)
    batch = [[(7 * i + j) % 90 + 1 for j in range(3 + i % 5)] for i in range(18)]
    assert_stack_matches_modules(model, arch, batch, 3, False, dt, int8_amx=amx)


def test_unpacked_int8_is_refused(tmp_path):
    arch = load_arch_config(_float_llama(tmp_path))
    model = get_model(ModelConfig(model=str(tmp_path), dtype="float32", arch=arch,
                                  quantization="int8"),
                      CpuPagedAttentionBackend, torch.device("cpu"),
                      ops=CpuLayerOps(int8_packed=False))
    reason = build_decode_stack(model, kv_caches(arch), torch.float32, False)
    assert isinstance(reason, str) and "not packed at load" in reason


def test_refusals_name_the_reason(tmp_path):
    """A float model (no WNA16 projections) and a missing KV cache are refused in words."""
    arch = load_arch_config(_float_llama(tmp_path))
    model = get_model(ModelConfig(model=str(tmp_path), dtype="float32", arch=arch),
                      CpuPagedAttentionBackend, torch.device("cpu"), ops=CpuLayerOps())
    reason = build_decode_stack(model, kv_caches(arch), torch.float32, False)
    assert isinstance(reason, str) and "WNA16" in reason
    reason = build_decode_stack(model, [], torch.float32, False)
    assert isinstance(reason, str) and "KV cache" in reason


def _float_llama(folder) -> str:
    import json

    from safetensors.torch import save_file

    hf = tiny_llama(**ARCH)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()},
              str(folder / "model.safetensors"))
    cfg = hf.config.to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def _generate(monkeypatch, fused: str) -> tuple[list[int], list, object]:
    from vllm_core import LLM, SamplingParams

    monkeypatch.setenv("VLLM_CPU_FUSED_DECODE", fused)
    llm = LLM(dtype="float32", max_num_seqs=2, enable_prefix_caching=False)
    sp = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=3)
    prompts = [{"prompt_token_ids": [1, 9690, 198, 2683, 359, 253]},
               {"prompt_token_ids": [1, 4093, 28, 2]}]
    outs = llm.generate(prompts, sp, use_tqdm=False)
    runner = llm.llm_engine.executor.worker.runner
    result = ([o.outputs[0].token_ids for o in outs], [o.outputs[0].logprobs for o in outs],
              runner)
    llm.llm_engine.shutdown()
    return result


@pytest.mark.slow
def test_engine_runs_decode_steps_fused_with_the_same_outputs(monkeypatch):
    """Through the engine (default model, two requests): with the stack on, the decode steps
    (and only they) run fused, and tokens and logprobs equal VLLM_CPU_FUSED_DECODE=0's."""
    tokens, logprobs, runner = _generate(monkeypatch, "1")
    assert runner.decode_stack_reason is None
    steps = runner.num_eager_steps
    assert 0 < runner.num_fused_steps < steps         # the prefill steps ran the modules
    off_tokens, off_logprobs, off_runner = _generate(monkeypatch, "0")
    assert off_runner.num_fused_steps == 0
    assert off_runner.decode_stack_reason == "VLLM_CPU_FUSED_DECODE=0"
    assert tokens == off_tokens
    assert logprobs == off_logprobs
