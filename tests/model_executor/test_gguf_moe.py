"""Mixture-of-experts GGUF files (Mixtral as ``llama`` + ``expert_count``, ``qwen2moe``,
``qwen3moe``) written from random-weight HF models in llama.cpp's layout
(``gguf_moe_writer``): metadata -> MoE config; the loaded expert tensors equal the ``gguf``
package's own reader + de-quantization of the file; fp32 greedy tokens equal HF transformers on
the same weights (and transformers' own GGUF loader reads the same weights from our files);
expert / tensor parallel ranks read only their experts / slices; unsupported MoE files are
refused by name."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf_moe_writer import write_moe_gguf
from model_test_utils import hf_logits, new_kv_caches, run_step, tiny_hf_model

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.distributed.communicator import SingleRankCommunicator
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.gguf_loader import iter_gguf_weights_lazy
from vllm_core.model_executor.layers.fused_moe import FusedMoE, moe_config_from_arch
from vllm_core.model_executor.loader import build_model, get_model, load_arch_config
from vllm_core.model_executor.quantization.quantized_weights import dequantize_wna16
from vllm_core.model_executor.testing import hf_greedy_tokens
from vllm_core.model_executor.weight_source import LazyTensor

Q8, Q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0
# GGUF architecture -> (HF model_type, config overrides); intermediate sizes are multiples of
# 32 so every weight can be stored in a 32-block type
CASES = {
    "llama": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2,
                              intermediate_size=64)),
    # a dense first layer (decoder_sparse_step=2) and a shared expert
    "qwen2moe": ("qwen2_moe", dict(num_experts=6, num_experts_per_tok=2,
                                   moe_intermediate_size=32, norm_topk_prob=False,
                                   shared_expert_intermediate_size=64, decoder_sparse_step=2,
                                   num_hidden_layers=3, intermediate_size=96)),
    "qwen3moe": ("qwen3_moe", dict(num_experts=8, num_experts_per_tok=4,
                                   moe_intermediate_size=32, norm_topk_prob=True, head_dim=16,
                                   num_hidden_layers=3, mlp_only_layers=[1],
                                   intermediate_size=96)),
}


def make_file(tmp_path, arch_name: str, layout: str = "stacked", quant=None, **kwargs):
    model_type, overrides = CASES[arch_name]
    hf = tiny_hf_model(model_type, **overrides)
    path = str(tmp_path / f"{arch_name}-{layout}.gguf")
    write_moe_gguf(hf, path, arch_name, layout=layout, quant=quant, **kwargs)
    return hf, path


def load(path: str, dequantize: bool = True):
    return get_model(ModelConfig(model=path, dtype="float32", gguf_dequantize=dequantize),
                     ReferenceAttentionBackend, torch.device("cpu"))


@pytest.mark.parametrize("arch_name", sorted(CASES))
def test_metadata_maps_to_the_moe_config(tmp_path, arch_name):
    model_type, overrides = CASES[arch_name]
    _, path = make_file(tmp_path, arch_name)
    arch = load_arch_config(path)
    moe = moe_config_from_arch(arch)
    assert arch.model_type == model_type
    experts = overrides.get("num_local_experts") or overrides["num_experts"]
    assert (moe.num_experts, moe.top_k) == (experts, overrides["num_experts_per_tok"])
    assert moe.expert_intermediate_size == overrides.get("moe_intermediate_size",
                                                         overrides["intermediate_size"])
    assert arch.intermediate_size == overrides["intermediate_size"]
    assert moe.renormalize == (arch_name != "qwen2moe")          # llama.cpp's per-arch rule
    assert moe.shared_expert_intermediate_size == overrides.get(
        "shared_expert_intermediate_size", 0)
    sparse = [moe.is_sparse_layer(i) for i in range(arch.num_hidden_layers)]
    assert sparse == {"llama": [True, True], "qwen2moe": [False, True, False],
                      "qwen3moe": [True, False, True]}[arch_name]


def _reference_tensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of ``path`` through the ``gguf`` package's reader, de-quantized."""
    reader = gguf.GGUFReader(path)
    return {t.name: np.array(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(
        tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors}


@pytest.mark.parametrize("arch_name,layout,quant", [
    ("llama", "per_expert", Q8), ("qwen2moe", "stacked", Q8), ("qwen3moe", "fused", Q4),
    ("qwen3moe", "stacked", None)])
def test_loaded_experts_equal_gguf_dequantize(tmp_path, arch_name, layout, quant):
    """With the CPU default (kept quantized), a quantized file's experts stay integers
    (``GGUFMoEMethod``) whose values equal the ``gguf`` package's de-quantization (Q8_0 and
    Q4_0 convert bit exactly); a float file's experts load as floats."""
    _, path = make_file(tmp_path, arch_name, layout, quant)
    ref = _reference_tensors(path)
    model = load(path, dequantize=False)
    arch = load_arch_config(path)
    moe = moe_config_from_arch(arch)
    inter = moe.expert_intermediate_size
    checked = 0
    for i, layer in enumerate(model.model.layers):
        if not moe.is_sparse_layer(i):
            continue
        experts = layer.mlp.experts
        assert hasattr(experts, "w13_qweight") == (quant is not None)
        assert hasattr(experts, "w13_weight") == (quant is None)
        blk = f"blk.{i}"
        for e in range(moe.num_experts):
            if layout == "fused":
                gate_up = ref[f"{blk}.ffn_gate_up_exps.weight"][e]
            elif layout == "per_expert":
                gate_up = np.concatenate([ref[f"{blk}.ffn_gate.{e}.weight"],
                                          ref[f"{blk}.ffn_up.{e}.weight"]])
            else:
                gate_up = np.concatenate([ref[f"{blk}.ffn_gate_exps.weight"][e],
                                          ref[f"{blk}.ffn_up_exps.weight"][e]])
            down = (ref[f"{blk}.ffn_down.{e}.weight"] if layout == "per_expert"
                    else ref[f"{blk}.ffn_down_exps.weight"][e])
            assert gate_up.shape == (2 * inter, arch.hidden_size)
            w13, w2 = expert_weights(experts, e)
            assert torch.equal(w13, torch.from_numpy(gate_up))
            assert torch.equal(w2, torch.from_numpy(down))
            checked += 1
        router = torch.from_numpy(ref[f"{blk}.ffn_gate_inp.weight"].copy())
        assert torch.equal(layer.mlp.gate.weight, router)
        if moe.shared_expert_intermediate_size:
            assert torch.equal(layer.mlp.shared_expert_gate.weight.reshape(-1),
                               torch.from_numpy(ref[f"{blk}.ffn_gate_inp_shexp.weight"]))
    assert checked == moe.num_experts * sum(map(moe.is_sparse_layer,
                                                range(arch.num_hidden_layers)))


def expert_weights(experts: FusedMoE, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Local expert ``e``'s float ``[2I, H]`` and ``[H, I]``: the stacked floats, or the
    de-quantized GGUF integers of a kept-quantized layer."""
    if hasattr(experts, "w13_experts"):
        return (dequantize_wna16(experts.w13_experts[e]),
                dequantize_wna16(experts.w2_experts[e]))
    return experts.w13_weight[e], experts.w2_weight[e]


@pytest.mark.parametrize("dequantize", [True, False])
@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quant_experts(tmp_path, kind, dequantize):
    """Experts in the K types real MoE GGUFs use (random blocks: ``gguf`` cannot quantize to
    them; hidden and expert sizes 256, one super-block): equal to ``gguf.quants.dequantize``
    (kept quantized: within float32 rounding of the zero points) and the logits equal HF's on
    the de-quantized weights. Kept quantized, the experts take at most 3/8 of the float32
    bytes: 4 (Q4_K) or 8 (Q5_K, Q6_K) bits a weight plus a float32 scale and zero per group of
    32 (16 for Q6_K): 6, 10 and 12 bits."""
    quant = getattr(gguf.GGMLQuantizationType, kind)
    hf = tiny_hf_model("qwen3_moe", hidden_size=256, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=256, head_dim=64, intermediate_size=256,
                       norm_topk_prob=True)
    path = str(tmp_path / f"{kind}.gguf")
    write_moe_gguf(hf, path, "qwen3moe", quant=quant, quantize=("_exps",))
    ref = _reference_tensors(path)
    ours = load(path, dequantize)
    for i, layer in enumerate(ours.model.layers):
        gate_up = np.concatenate([ref[f"blk.{i}.ffn_gate_exps.weight"],
                                  ref[f"blk.{i}.ffn_up_exps.weight"]], axis=1)
        experts = layer.mlp.experts
        for e in range(4):
            w13, w2 = expert_weights(experts, e)
            want13 = torch.from_numpy(gate_up[e])
            want2 = torch.from_numpy(ref[f"blk.{i}.ffn_down_exps.weight"][e])
            if dequantize or kind == "Q6_K":
                assert torch.equal(w13, want13) and torch.equal(w2, want2)
            else:
                torch.testing.assert_close(w13, want13, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(w2, want2, rtol=1e-5, atol=1e-6)
        kept = sum(p.numel() * p.element_size() for p in experts.parameters())
        float_bytes = 4 * 3 * 256 * 256 * 4             # 4 experts, gate / up / down, fp32
        assert (kept <= 0.375 * float_bytes) == (not dequantize)
    prompt = [3, 17, 42, 8, 90, 11, 4]
    (logits,) = run_step(ours, new_kv_caches(load_arch_config(path), 8), [prompt], [0])
    torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch_name,layout,quant,dequantize", [
    ("llama", "stacked", None, True), ("qwen2moe", "stacked", None, True),
    ("qwen3moe", "stacked", None, True), ("llama", "per_expert", None, True),
    ("qwen2moe", "fused", Q8, False), ("qwen3moe", "stacked", Q8, False)])
def test_greedy_tokens_match_hf(tmp_path, arch_name, layout, quant, dequantize):
    """fp32 prefill logits within tolerance and 6 greedy decode steps identical to HF on the
    same weights (for a quantized file: HF holds the de-quantized values; ``dequantize=False``
    keeps the non-expert linears quantized, the CPU default). The Q8_0 Qwen2-MoE file stores
    its shared-expert gate 2-D ``[1, H]`` (the F32 one 1-D, as llama.cpp does)."""
    hf, path = make_file(tmp_path, arch_name, layout, quant, shared_gate_2d=quant is not None)
    arch = load_arch_config(path)
    ours = load(path, dequantize)
    prompt = torch.randint(0, arch.vocab_size, (7,),
                           generator=torch.Generator().manual_seed(4)).tolist()
    kv = new_kv_caches(arch, num_blocks=12)
    (logits,) = run_step(ours, kv, [prompt], [0])
    torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=1e-4, rtol=1e-4)
    tokens = list(prompt)
    for _ in range(6):
        tokens.append(int(logits[-1].argmax()))
        (logits,) = run_step(ours, kv, [tokens[-1:]], [len(tokens) - 1])
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6,
                          do_sample=False)[0].tolist()
    assert tokens == ref


@pytest.mark.parametrize("arch_name", ["qwen2moe", "qwen3moe"])
def test_transformers_gguf_loader_reads_the_same_model(tmp_path, arch_name):
    """An independent reader of our test files: transformers' own GGUF loader (which supports
    all-sparse qwen2moe / qwen3moe files) recovers the HF weights the file was written from,
    and its logits equal ours. Transformers does not read ``expert_feed_forward_length`` /
    ``expert_shared_feed_forward_length``, so those two sizes are given to it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, overrides = CASES[arch_name]
    overrides = {k: v for k, v in overrides.items()
                 if k not in ("decoder_sparse_step", "mlp_only_layers", "num_hidden_layers")}
    hf = tiny_hf_model(model_type, **overrides)
    path = str(tmp_path / "m.gguf")
    write_moe_gguf(hf, path, arch_name, quant=Q8)
    cfg = AutoConfig.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    cfg.moe_intermediate_size = overrides["moe_intermediate_size"]
    if "shared_expert_intermediate_size" in overrides:
        cfg.shared_expert_intermediate_size = overrides["shared_expert_intermediate_size"]
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf",
                                                  config=cfg, dtype=torch.float32)
    ref_state, their_state = hf.state_dict(), theirs.state_dict()
    assert set(ref_state) == set(their_state)
    for name, tensor in ref_state.items():
        assert torch.equal(their_state[name], tensor), name
    ours = load(path)
    prompt = [3, 17, 42, 8, 90, 11, 4]
    (logits,) = run_step(ours, new_kv_caches(load_arch_config(path), 8), [prompt], [0])
    torch.testing.assert_close(logits, hf_logits(theirs, prompt), atol=1e-4, rtol=1e-4)


def _context(tp_rank: int, tp: int, expert_parallel: bool) -> ParallelContext:
    def comm(rank: int, size: int) -> SingleRankCommunicator:
        return SingleRankCommunicator(rank=rank, ranks=list(range(size)))

    return ParallelContext(tp_size=tp, tp_rank=tp_rank, pp_size=1, pp_rank=0,
                           tp=comm(tp_rank, tp), pp=comm(0, 1), world=comm(0, tp),
                           enable_expert_parallel=expert_parallel)


@pytest.mark.parametrize("expert_parallel", [True, False], ids=["ep2-rank1", "tp2-rank1"])
def test_rank_reads_only_its_experts(tmp_path, expert_parallel):
    """Rank 1 of 2: under expert parallelism it reads (whole) only experts 2..3 of 4, under
    tensor parallelism every expert's second half of the intermediate dimension; the loaded
    values are those slices of the single-rank model's."""
    _, path = make_file(tmp_path, "llama", "stacked", Q8)
    arch = load_arch_config(path)
    full = load(path)
    model = build_model(arch, ReferenceAttentionBackend, torch.device("cpu"), torch.float32,
                        parallel=_context(1, 2, expert_parallel))
    reads: list[tuple[str, int | None]] = []

    def recording():
        for name, src in iter_gguf_weights_lazy(path, arch):
            def reader(dim, start, size, src=src, name=name):
                reads.append((name, dim))
                return src.read(dim, start, size)
            yield name, LazyTensor(src.shape, reader)

    model.load_weights(recording())
    expert_reads = {(n.split(".experts.")[1].split(".")[0], d) for n, d in reads
                    if ".experts." in n}
    for mine, theirs in zip(model.model.layers, full.model.layers, strict=True):
        ex, ref = mine.mlp.experts, theirs.mlp.experts
        assert isinstance(ex, FusedMoE)
        if expert_parallel:
            assert {e for e, _ in expert_reads} == {"2", "3"}
            assert torch.equal(ex.w13_weight, ref.w13_weight[2:])
            assert torch.equal(ex.w2_weight, ref.w2_weight[2:])
        else:
            inter = ref.w2_weight.shape[2]
            half = inter // 2
            assert {e for e, _ in expert_reads} == {"0", "1", "2", "3"}
            gate, up = ref.w13_weight[:, half:inter], ref.w13_weight[:, inter + half:]
            assert torch.equal(ex.w13_weight, torch.cat([gate, up], dim=1))
            assert torch.equal(ex.w2_weight, ref.w2_weight[:, :, half:])


@pytest.mark.parametrize("expert_parallel", [True, False], ids=["ep2-rank1", "tp2-rank1"])
def test_rank_keeps_its_quantized_expert_slices(tmp_path, expert_parallel):
    """Kept-quantized Q4_K experts at rank 1 of 2: whole experts 2..3 under expert
    parallelism, else every expert's second half of the intermediate dimension (gate / up
    rows, down input columns on group boundaries); their values are those slices of the
    single-rank model's. A slice off the group grid is refused, naming the way out."""
    from vllm_core.model_executor.loader import process_weights_after_loading
    from vllm_core.model_executor.quantization.gguf import GGUFConfig

    def file(name: str, inter: int, quant) -> str:
        hf = tiny_hf_model("qwen3_moe", hidden_size=256, num_experts=4, num_experts_per_tok=2,
                           moe_intermediate_size=inter, head_dim=64, intermediate_size=256,
                           norm_topk_prob=True, num_hidden_layers=1)
        path = str(tmp_path / name)
        write_moe_gguf(hf, path, "qwen3moe", quant=quant, quantize=("_exps",))
        return path

    path = file("q4k.gguf", 256, gguf.GGMLQuantizationType.Q4_K)
    arch, quant = load_arch_config(path), GGUFConfig.for_file(path)
    full = load(path, dequantize=False)
    model = build_model(arch, ReferenceAttentionBackend, torch.device("cpu"), torch.float32,
                        parallel=_context(1, 2, expert_parallel), quant_config=quant)
    model.load_weights(iter_gguf_weights_lazy(path, arch, quant))
    process_weights_after_loading(model, quant)
    mine, ref = model.model.layers[0].mlp.experts, full.model.layers[0].mlp.experts
    for e in range(2 if expert_parallel else 4):
        w13, w2 = expert_weights(mine, e)
        r13, r2 = expert_weights(ref, e + 2 if expert_parallel else e)
        if not expert_parallel:
            r13, r2 = torch.cat([r13[128:256], r13[384:]]), r2[:, 128:]
        assert torch.equal(w13, r13) and torch.equal(w2, r2)
    odd = file("q8.gguf", 96, Q8)                       # down: inputs 48..95 on rank 1
    with pytest.raises(ValueError, match="group size 32.*--enable-expert-parallel"):
        build_model(load_arch_config(odd), ReferenceAttentionBackend, torch.device("cpu"),
                    torch.float32, parallel=_context(1, 2, False),
                    quant_config=GGUFConfig.for_file(odd))


def _header_only(path: str, arch: str, extra: dict) -> None:
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    for key, value in extra.items():
        if isinstance(value, int):
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_moe_architecture_is_named(tmp_path):
    path = str(tmp_path / "ds.gguf")
    _header_only(path, "deepseek2", {"deepseek2.expert_count": 64,
                                     "deepseek2.expert_used_count": 6})
    with pytest.raises(ValueError, match="mixture-of-experts architecture 'deepseek2'.*"
                                         "supported MoE architectures: llama \\(Mixtral\\), "
                                         "qwen2moe, qwen3moe"):
        load_arch_config(path)
    path = str(tmp_path / "sig.gguf")
    _header_only(path, "qwen3moe", {"qwen3moe.expert_count": 4, "qwen3moe.expert_used_count": 2,
                                    "qwen3moe.expert_gating_func": 2,
                                    "qwen3moe.embedding_length": 64,
                                    "qwen3moe.attention.head_count": 4,
                                    "qwen3moe.vocab_size": 10})
    with pytest.raises(ValueError, match="sigmoid expert gating"):
        load_arch_config(path)


def test_stacked_tensor_with_wrong_expert_count_is_refused(tmp_path):
    _, path = make_file(tmp_path, "qwen3moe")
    bad = str(tmp_path / "bad.gguf")
    reader = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(bad, "qwen3moe")
    for field in reader.fields.values():
        if field.name.startswith("qwen3moe.") and len(field.types) == 1:
            value = 6 if field.name == "qwen3moe.expert_count" else field.contents()
            w.add_key_value(field.name, value, field.types[0])
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="ffn_.*_exps.weight.*expected \\[6, rows, columns\\]"):
        load(bad)


def test_engine_runs_a_moe_gguf_with_its_tokenizer(tmp_path):
    """``LLM(file.gguf)`` end to end (CPU platform, continuous batching, chunked prefill under a
    small token budget, Q8_0 file, non-expert linears kept quantized by default): the tokenizer
    comes from the file and greedy tokens equal HF ``generate`` on the same weights."""
    from vllm_core import LLM, SamplingParams

    hf = tiny_hf_model("qwen3_moe", vocab_size=257, num_experts=8, num_experts_per_tok=4,
                       moe_intermediate_size=32, norm_topk_prob=True, head_dim=16,
                       intermediate_size=96)
    path = str(tmp_path / "tiny-moe-Q8_0.gguf")
    write_moe_gguf(hf, path, "qwen3moe", quant=Q8, tokenizer=True)
    prompts = ["Hello, MoE world!", "GGUF experts", "x"]
    llm = LLM(path, dtype="float32", max_model_len=64, num_gpu_blocks_override=32,
              max_num_batched_tokens=8, max_num_seqs=4, enforce_eager=True)
    try:
        tok = llm.get_tokenizer()
        outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=6,
                                                    ignore_eos=True), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    for text, out in zip(prompts, outs, strict=True):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == list(text.encode("utf-8"))        # the file's byte-level vocabulary
        assert list(out.prompt_token_ids) == ids
        ref = hf_greedy_tokens(hf, ids, 6)
        assert list(out.outputs[0].token_ids) == ref
        # (random bytes: an incomplete UTF-8 tail is held back by the detokenizer)
        assert out.outputs[0].text and tok.decode(ref).startswith(out.outputs[0].text)


@pytest.mark.slow
def test_expert_parallel_engine_on_a_gguf(tmp_path):
    """Two ranks (mp executor, gloo) with ``--enable-expert-parallel`` on a Q8_0 Qwen2-MoE GGUF:
    each rank keeps its 3 of 6 experts quantized, the shared expert stays kept-quantized and cut
    by rows; greedy tokens equal HF ``generate`` on the same weights."""
    from vllm_core import LLM, SamplingParams

    hf = tiny_hf_model("qwen2_moe", vocab_size=257, num_experts=6, num_experts_per_tok=2,
                       moe_intermediate_size=32, norm_topk_prob=False,
                       shared_expert_intermediate_size=64, intermediate_size=96)
    path = str(tmp_path / "tiny-qwen2moe-Q8_0.gguf")
    write_moe_gguf(hf, path, "qwen2moe", quant=Q8, tokenizer=True)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 19, 2)]
    llm = LLM(path, dtype="float32", max_model_len=64, num_gpu_blocks_override=32,
              enforce_eager=True, tensor_parallel_size=2, enable_expert_parallel=True)
    try:
        assert llm.llm_engine.executor.world_size == 2
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                            use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    for prompt, out in zip(prompts, outs, strict=True):
        assert list(out.outputs[0].token_ids) == hf_greedy_tokens(hf, prompt, 8)
