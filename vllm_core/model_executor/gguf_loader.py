"""GGUF files: architecture from metadata, weights dequantized to HF-named tensors.

The header is read by ``gguf_fast_reader`` (milliseconds; ``gguf.GGUFReader`` takes seconds on a
large vocabulary); quantized tensors are dequantized with ``gguf.quants.dequantize`` to float32
(F32/F16 tensors are taken as stored). llama.cpp's
converter permutes the rows of the q and k projections of ``llama`` models so that its
interleaved (GPT-J style) rope can be used; ``iter_gguf_weights`` undoes that permutation, so the
tensors match the HF checkpoint and our neox-style rope. Opened files are cached by (path,
mtime, size).

Gemma 3 (``gemma3``): llama.cpp stores every RMSNorm weight as ``1 + w`` (its norm multiplies by
the weight), so 1 is subtracted back on load; the sandwich norms have their own names
(``post_attention_norm``, ``ffn_norm`` = pre-feed-forward, ``post_ffw_norm``); the layer pattern
(every 6th layer global), the local rope base (10000) and the query scale (head_dim, or
hidden / heads for the 62-layer 27B) are fixed by llama.cpp rather than stored, and are set the
same way here.

Mixture-of-experts files (Mixtral as ``llama`` + ``expert_count``, ``qwen2moe``, ``qwen3moe``):
``gguf_moe`` maps their metadata to the MoE config and splits the stacked expert tensors into
per-expert memory-map views named like the HF per-expert tensors (``named_tensors``), so every
path below sees ordinary 2-D tensors; the experts are always de-quantized (never in the
kept-quantized plan).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_core.config import ModelArchConfig
from vllm_core.model_executor.gguf_fast_reader import GGUFTensor, read_gguf
from vllm_core.model_executor.gguf_moe import (
    GGUF_MOE_ARCHITECTURES,
    MOE_BLOCK_NAMES,
    check_moe_architecture,
    expert_views,
    is_moe_gguf,
    moe_arch_fields,
)

# GGUF architecture -> (HF architecture, HF model_type)
# (mixture-of-experts files: ``gguf_moe.GGUF_MOE_ARCHITECTURES``)
GGUF_ARCHITECTURES = {"llama": ("LlamaForCausalLM", "llama"),
                      "qwen2": ("Qwen2ForCausalLM", "qwen2"),
                      "qwen3": ("Qwen3ForCausalLM", "qwen3"),
                      "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}
# architectures whose q/k rows llama.cpp permuted for interleaved rope
_PERMUTED_QK = ("llama",)

_TOP_LEVEL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                    "output": "lm_head"}
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
                **MOE_BLOCK_NAMES}
# per-architecture block names that differ from the above
_ARCH_BLOCK_NAMES = {"gemma3": {"ffn_norm": "pre_feedforward_layernorm",
                                "post_attention_norm": "post_attention_layernorm",
                                "post_ffw_norm": "post_feedforward_layernorm"}}
# architectures whose norm weights llama.cpp stored as 1 + w
_NORM_PLUS_ONE = ("gemma3",)
GEMMA3_SLIDING_PATTERN = 6          # llama.cpp's fixed Gemma 3 layout: every 6th layer global
GEMMA3_LOCAL_ROPE_THETA = 10000.0
_SAMPLING_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                  "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
                  "general.sampling.penalty_repeat": "repetition_penalty"}


@dataclass(slots=True)
class GGUFFile:
    """An opened GGUF file: its scalar/string metadata and its tensors (memory-mapped)."""

    path: str
    metadata: dict[str, Any]          # scalar and string fields only (arrays: their length)
    tensors: list[GGUFTensor]

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensors]


def open_gguf(path: str) -> GGUFFile:
    """Open (or reuse) ``path``; ``FileNotFoundError`` / ``ValueError`` name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    st = os.stat(path)
    return _open_cached(os.path.realpath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _open_cached(path: str, mtime_ns: int, size: int) -> GGUFFile:
    try:
        metadata, tensors = read_gguf(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"corrupted or unreadable GGUF file {path}: {e}") from e
    return GGUFFile(path, metadata, tensors)


def gguf_arch_config(path: str) -> ModelArchConfig:
    """Architecture facts from the GGUF metadata (and tensor names for the layout switches)."""
    g = open_gguf(path)
    md = g.metadata
    arch_name = md.get("general.architecture")
    check_moe_architecture(md, path)
    if arch_name not in GGUF_ARCHITECTURES and not is_moe_gguf(md):
        raise ValueError(f"GGUF architecture {arch_name!r} in {path} is not supported; "
                         f"supported: {', '.join(GGUF_ARCHITECTURES)} (and the "
                         f"mixture-of-experts {', '.join(GGUF_MOE_ARCHITECTURES)})")
    architecture, model_type = GGUF_ARCHITECTURES.get(arch_name, ("", ""))   # MoE: below

    def key(suffix: str, default: Any = None, required: bool = False) -> Any:
        value = md.get(f"{arch_name}.{suffix}", default)
        if required and value is None:
            raise ValueError(f"GGUF file {path} lacks metadata {arch_name}.{suffix}")
        return value

    hidden = int(key("embedding_length", required=True))
    num_heads = int(key("attention.head_count", required=True))
    head_dim = int(key("attention.key_length", hidden // num_heads))
    rot_dim = int(key("rope.dimension_count", head_dim))
    if rot_dim != head_dim:
        raise ValueError(f"GGUF file {path}: partial rotary (rope.dimension_count {rot_dim} != "
                         f"head_dim {head_dim}) is not supported")
    names = set(g.tensor_names)
    vocab = key("vocab_size") or md.get("tokenizer.ggml.tokens")
    if not vocab:
        raise ValueError(f"GGUF file {path} declares no vocab size")
    eos = md.get("tokenizer.ggml.eos_token_id")
    hf_config = {"gguf_architecture": arch_name, "gguf_file": path, "dtype": "float32"}
    moe: dict[str, Any] = {}
    if is_moe_gguf(md):
        moe = moe_arch_fields(key, arch_name, names, int(key("block_count", required=True)),
                              path)
        architecture, model_type = moe["architecture"], moe["model_type"]
        hf_config.update(moe["hf_config"])
    return ModelArchConfig(
        architecture=architecture,
        model_type=model_type,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(moe.get("intermediate_size")
                              or key("feed_forward_length", required=True)),
        num_hidden_layers=int(key("block_count", required=True)),
        num_attention_heads=num_heads,
        num_key_value_heads=int(key("attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=_gguf_rope_scaling(g, arch_name),
        max_position_embeddings=int(key("context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        sliding_window=(int(key("attention.sliding_window"))
                        if key("attention.sliding_window") is not None else None),
        **(_gemma3_fields(key, hidden, num_heads, head_dim) if arch_name == "gemma3" else {}),
        bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos,
        hf_config=hf_config,
    )


def _gemma3_fields(key: Any, hidden: int, num_heads: int, head_dim: int) -> dict[str, Any]:
    """The Gemma 3 switches of ``ModelArchConfig`` (see the module docstring)."""
    n = int(key("block_count"))
    pattern = int(key("attention.sliding_window_pattern", GEMMA3_SLIDING_PATTERN))
    cap = key("final_logit_softcapping")
    return dict(hidden_act="gelu_pytorch_tanh",
                layer_types=tuple("sliding_attention" if (i + 1) % pattern else "full_attention"
                                  for i in range(n)),
                local_rope_theta=GEMMA3_LOCAL_ROPE_THETA,
                query_pre_attn_scalar=float(hidden // num_heads if n == 62 else head_dim),
                final_logit_softcapping=float(cap) if cap else None)


def _gguf_rope_scaling(g: GGUFFile, arch_name: str) -> dict[str, Any] | None:
    kind = g.metadata.get(f"{arch_name}.rope.scaling.type")
    if kind == "linear":
        return {"rope_type": "linear",
                "factor": float(g.metadata[f"{arch_name}.rope.scaling.factor"])}
    if kind not in (None, "none"):
        raise ValueError(f"GGUF file {g.path}: rope scaling {kind!r} is not supported")
    for t in g.tensors:
        if t.name == "rope_freqs.weight":      # Llama 3.x: per-frequency divisors
            return {"rope_type": "freq_factors",
                    "freq_factors": [float(x) for x in np.asarray(t.data).reshape(-1)]}
    return None


def gguf_generation_defaults(path: str) -> dict[str, Any]:
    """Sampling defaults stored in ``general.sampling.*`` plus the eos/eot token ids."""
    md = open_gguf(path).metadata
    out: dict[str, Any] = {ours: md[key] for key, ours in _SAMPLING_KEYS.items() if key in md}
    eos = [md[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
           if md.get(k) is not None]
    if eos:
        out["eos_token_id"] = list(dict.fromkeys(int(e) for e in eos))
    return out


def gguf_chat_template(path: str) -> str | None:
    return open_gguf(path).metadata.get("tokenizer.chat_template")


def hf_tensor_name(gguf_name: str, arch_name: str | None = None) -> str | None:
    """llama.cpp tensor name -> HF name (None for tensors with no parameter, e.g. rope_freqs)."""
    stem, _, leaf = gguf_name.rpartition(".")
    if stem in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[stem]}.{leaf}"
    parts = stem.split(".")
    names = {**_BLOCK_NAMES, **_ARCH_BLOCK_NAMES.get(arch_name or "", {})}
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in names:
        return f"model.layers.{parts[1]}.{names[parts[2]]}.{leaf}"
    return None


def named_tensors(g: GGUFFile) -> Iterator[tuple[str | None, GGUFTensor]]:
    """``(HF name or None, tensor)`` for every tensor of ``g``; a stacked (or per-expert)
    expert tensor becomes one 2-D view per expert (``gguf_moe.expert_views``)."""
    arch_name = g.metadata.get("general.architecture")
    num_experts = g.metadata.get(f"{arch_name}.expert_count")
    for t in g.tensors:
        views = expert_views(t, num_experts) if num_experts else None
        if views is None:
            yield hf_tensor_name(t.name, arch_name), t
        else:
            yield from views


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k row permutation: within each head, rows were reordered from
    [first half | second half] to interleaved pairs; put them back (works for biases too)."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
            .transpose(1, 2).reshape(w.shape))


def gguf_tensor_types(path: str) -> dict[str, str]:
    """HF tensor name -> GGML type name (``"Q4_1"``, ``"F32"``...) of every tensor."""
    out = {}
    for name, t in named_tensors(open_gguf(path)):
        if name is not None:
            out[name] = t.tensor_type.name
    return out


def iter_gguf_weights_lazy(path: str, arch: ModelArchConfig,
                           quant: Any = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(HF name, LazyTensor)``: a tensor is read (and dequantized) only when a layer
    asks for it; rows of F32/F16 tensors that need no q/k un-permutation are sliced on the
    memory map before they are copied. With ``quant`` (a ``GGUFConfig``), the weights of the
    linear layers it keeps quantized are yielded as their ``qweight`` / ``scales`` /
    ``zeros`` parts instead (``iter_gguf_quantized_parts``)."""
    from gguf import GGMLQuantizationType

    from vllm_core.model_executor.weight_source import LazyTensor

    g = open_gguf(path)
    arch_name = g.metadata.get("general.architecture")
    permuted = arch_name in _PERMUTED_QK
    whole = dict(iter_gguf_tensor_readers(path, arch))
    decoded = GGUFRowCache()
    for name, t in named_tensors(g):
        if name is None:
            continue
        plan = quant.layer_plan(name) if quant is not None else None
        if plan is not None:
            yield from iter_gguf_quantized_parts(name, t, plan, _row_perm(name, arch, permuted),
                                                 decoded)
            continue
        full = whole[name]
        table = quant.table_format(name) if quant is not None else None
        if table is not None:
            yield name, gguf_quantized_table(t, table.storage_bits, full)
            continue
        expert = quant.expert_storage(name) if quant is not None else None
        if expert is not None:
            yield name, gguf_quantized_table(t, expert[0], full, group=expert[1])
            continue
        plain_type = t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
        plain = plain_type and not (permuted and (".q_proj." in name or ".k_proj." in name)) \
            and not (arch_name in _NORM_PLUS_ONE and name.endswith("norm.weight"))
        shape = tuple(int(d) for d in t.data.shape)
        if not plain_type:
            from gguf.quants import quant_shape_from_byte_shape

            shape = tuple(int(d) for d in quant_shape_from_byte_shape(shape, t.tensor_type))

        def reader(dim: int | None, start: int, size: int, t: Any = t, full: Any = full,
                   plain: bool = plain) -> torch.Tensor:
            if dim == 0 and plain:
                return torch.from_numpy(np.array(t.data[start:start + size]))
            tensor = full()
            return tensor if dim is None else tensor.narrow(dim, start, size)

        yield name, LazyTensor(shape, reader)


def gguf_quantized_table(t: Any, bits: int, full: Any, group: int | None = None) -> Any:
    """A vocabulary table (embedding / LM head ``[vocab, hidden]``) or a routed expert's
    view of a kept-quantized block type as a ``QuantizedLazyTensor``: ``read_quantized``
    decodes only the requested rows of the file into a ``WNA16Weight`` of ``bits`` storage
    bits (and ``group`` inputs per scale: a divisor of the type's; None: the type's own);
    ``full`` is the float reader."""
    from gguf.quants import quant_shape_from_byte_shape

    from vllm_core.model_executor.quantization.gguf_blocks import decode_rows
    from vllm_core.model_executor.weight_source import QuantizedLazyTensor

    n, k = (int(d) for d in quant_shape_from_byte_shape(tuple(t.data.shape), t.tensor_type))

    def quantized(start: int, size: int) -> Any:
        try:
            rows = decode_rows(t.tensor_type.name, np.asarray(t.data[start:start + size]), k)
        except ValueError as e:
            raise ValueError(f"GGUF tensor {t.name!r}: {e}") from e
        return (rows if group is None else rows.regroup(group)).to_wna16(bits, torch.float32)

    def reader(dim: int | None, start: int, size: int) -> torch.Tensor:
        tensor = full()
        return tensor if dim is None else tensor.narrow(dim, start, size)

    return QuantizedLazyTensor((n, k), reader, quantized)


def _row_perm(name: str, arch: ModelArchConfig, permuted: bool) -> torch.Tensor | None:
    """The row order ``unpermute_qk`` gives a q / k projection of a permuted file, else None:
    ``unpermute_qk(w) == w[perm]``."""
    if permuted and name.endswith("self_attn.q_proj.weight"):
        return unpermute_qk(torch.arange(arch.num_attention_heads * arch.head_dim),
                            arch.num_attention_heads)
    if permuted and name.endswith("self_attn.k_proj.weight"):
        return unpermute_qk(torch.arange(arch.num_key_value_heads * arch.head_dim),
                            arch.num_key_value_heads)
    return None


class GGUFRowCache:
    """The last decoded ``(tensor, rows)``: the three parts of a tensor are read one after
    the other and share one decode."""

    def __init__(self) -> None:
        self.key: tuple[str, int, int] | None = None
        self.parts: tuple[torch.Tensor, ...] = ()

    def get(self, key: tuple[str, int, int], make: Any) -> tuple[torch.Tensor, ...]:
        if key != self.key:
            self.key, self.parts = None, ()
            self.parts, self.key = make(), key
        return self.parts


def iter_gguf_quantized_parts(name: str, t: Any, plan: Any, perm: torch.Tensor | None,
                              cache: GGUFRowCache) -> Iterator[tuple[str, Any]]:
    """``(name.qweight|scales|zeros, LazyTensor)`` of a kept-quantized GGUF weight ``[N, K]``
    in the ``WNA16Weight`` layout of ``plan`` (its bits and group). A rank that asks for
    output columns (dim 1) decodes only those rows of the file (unless the rows are
    permuted)."""
    from gguf.quants import quant_shape_from_byte_shape

    from vllm_core.model_executor.quantization.gguf_blocks import decode_rows
    from vllm_core.model_executor.weight_source import LazyTensor

    n, k = (int(d) for d in quant_shape_from_byte_shape(tuple(t.data.shape), t.tensor_type))
    kind = t.tensor_type.name
    stem = name[:-len(".weight")]
    dtype = torch.float32

    def decode(start: int, size: int) -> tuple[torch.Tensor, ...]:
        try:
            rows = decode_rows(kind, np.asarray(t.data[start:start + size]), k)
        except ValueError as e:
            raise ValueError(f"GGUF tensor {t.name!r}: {e}") from e
        return rows.rows(perm).regroup(plan.group).wna16_parts(plan.bits, dtype)

    shapes = {"qweight": (k * plan.bits // 32, n), "scales": (k // plan.group, n),
              "zeros": (k // plan.group, n)}
    for index, part in enumerate(("qweight", "scales", "zeros")):
        def reader(dim: int | None, start: int, size: int, index: int = index) -> torch.Tensor:
            if dim == 1 and perm is None:
                return cache.get((t.name, start, size), lambda: decode(start, size))[index]
            full = cache.get((t.name, 0, n), lambda: decode(0, n))[index]
            return full if dim is None else full.narrow(dim, start, size)

        yield f"{stem}.{part}", LazyTensor(shapes[part], reader)


def iter_gguf_tensor_readers(path: str, arch: ModelArchConfig) -> Iterator[tuple[str, Any]]:
    """``(HF name, zero-argument function returning the float tensor)`` per tensor."""
    g = open_gguf(path)
    for name, t in named_tensors(g):
        if name is None:
            if t.name == "rope_freqs.weight":
                continue
            raise ValueError(f"GGUF file {path}: unknown tensor {t.name!r}")
        yield name, (lambda t=t, name=name: _read_gguf_tensor(path, arch, g, t, name))


def _read_gguf_tensor(path: str, arch: ModelArchConfig, g: Any, t: Any,
                      name: str) -> torch.Tensor:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    permuted = g.metadata.get("general.architecture") in _PERMUTED_QK
    try:
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            array = np.array(t.data)
        else:
            array = dequantize(np.asarray(t.data), t.tensor_type)
    except Exception as e:
        raise ValueError(f"GGUF file {path}: cannot read tensor {t.name!r}: {e!r}") from e
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if permuted and name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        tensor = unpermute_qk(tensor, arch.num_attention_heads)
    elif permuted and name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        tensor = unpermute_qk(tensor, arch.num_key_value_heads)
    elif g.metadata.get("general.architecture") in _NORM_PLUS_ONE and name.endswith("norm.weight"):
        tensor = tensor.float() - 1.0
    return tensor


def iter_gguf_weights(path: str, arch: ModelArchConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(HF name, float tensor)`` for every parameter tensor of the file."""
    for name, read in iter_gguf_tensor_readers(path, arch):
        yield name, read()
