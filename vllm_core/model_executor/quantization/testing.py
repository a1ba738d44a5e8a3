"""Quantized checkpoints of a tiny random Llama, written as the real tools write them, with the
de-quantized weights of an independent reference next to each (for the core's and the
platform plugins' tests; imports transformers / compressed-tensors lazily).

- compressed-tensors: the ``compressed-tensors`` package itself quantizes and packs
  (``calculate_qparams`` + its format compressors, which llm-compressor calls when it saves)
  and de-quantizes (the compressors' ``decompress``) as the reference.
- GPTQ and AWQ: format-exact writers below, following GPTQModel's ``PackableQuantLinear.pack``
  (the same bits AutoGPTQ writes; v1 zero points stored minus one) and AutoAWQ's
  ``WQLinear_GEMM.from_linear`` (interleaved nibble order ``0 2 4 6 1 3 5 7`` along the
  outputs). Their reference weight is ``(q - zero) * scale`` computed from the integers
  *before* packing, so no code is shared with the loader's unpacking. (GPTQModel / AutoAWQ
  need CUDA builds and do not install on the CPU CI machine.)
- FP8 (``quant_method: fp8``): per-tensor scales with static activation scales, and 2-D block
  scales (``weight_scale_inv``), as AutoFP8 / DeepSeek-style exports store them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import save_file

from vllm_core.model_executor.testing import random_hf_causal_lm

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6, tie_word_embeddings=False)


def tiny_llama(seed: int = 0, **overrides: Any):
    """``TINY`` (head_dim 16) with ``overrides``; GPU attention kernels need head_dim >= 32."""
    return random_hf_causal_lm("llama", {**TINY, **overrides}, seed, weight_scale=0.15)


def linear_names(hf) -> list[str]:
    return [n[:-len(".weight")] for n, _ in hf.named_parameters()
            if n.endswith(".weight") and n.split(".")[-2] in LINEARS]


def _write(folder: str, hf, tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> None:
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(folder, "model.safetensors"))
    cfg = hf.config.to_dict()
    cfg["quantization_config"] = qc
    cfg["architectures"] = ["LlamaForCausalLM"]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)


def _base_tensors(hf, quantized: list[str]) -> dict[str, torch.Tensor]:
    skip = {f"{n}.weight" for n in quantized}
    return {k: v.detach().clone() for k, v in hf.state_dict().items() if k not in skip}


# ------------------------------------------------------------------------ compressed-tensors
def write_compressed_tensors(folder: str, hf, scheme_name: str, group_size: int = 32,
                             symmetric: bool = True) -> dict[str, torch.Tensor]:
    """``scheme_name``: "w4a16", "w8a16", "w8a8-int8", "w8a8-fp8-dynamic",
    "w8a8-fp8-static". Returns ``{layer: reference float weight}``."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    if scheme_name in ("w4a16", "w8a16"):
        bits = 4 if scheme_name == "w4a16" else 8
        wargs = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                                 strategy="group" if group_size > 0 else "channel",
                                 group_size=group_size if group_size > 0 else None)
        aargs, fmt = None, "pack-quantized"
    elif scheme_name == "w8a8-int8":
        wargs = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
        aargs = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token",
                                 dynamic=True)
        fmt = "int-quantized"
    else:
        static = scheme_name.endswith("static")
        wargs = QuantizationArgs(num_bits=8, type="float", symmetric=True,
                                 strategy="tensor" if static else "channel")
        aargs = QuantizationArgs(num_bits=8, type="float", symmetric=True,
                                 strategy="tensor" if static else "token", dynamic=not static)
        fmt = "float-quantized"
    scheme = QuantizationScheme(targets=["Linear"], weights=wargs, input_activations=aargs)
    compressor = BaseCompressor.load_from_registry(fmt)
    names = linear_names(hf)
    tensors = _base_tensors(hf, names)
    reference = {}
    gen = torch.Generator().manual_seed(3)
    for name in names:
        w = hf.get_submodule(name).weight.detach().clone()
        n, k = w.shape
        if wargs.strategy == "group":
            wg = w.view(n, k // group_size, group_size)
            mn, mx = wg.amin(-1), wg.amax(-1)
        elif wargs.strategy == "channel":
            mn, mx = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
        else:
            mn, mx = w.amin().view(1), w.amax().view(1)
        scale, zp = calculate_qparams(mn, mx, wargs)
        state = {"weight": w, "weight_scale": scale}
        if not wargs.symmetric:
            state["weight_zero_point"] = zp
        packed = compressor.compress(state, scheme)
        for key, value in packed.items():
            tensors[f"{name}.{key}"] = value
        if aargs is not None and not aargs.dynamic:
            tensors[f"{name}.input_scale"] = _static_input_scale(name, gen, (1,))
        reference[name] = compressor.decompress(packed, scheme)["weight"].float()
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt, ignore=["lm_head"],
                            quantization_status="compressed").model_dump(mode="json")
    _write(folder, hf, tensors, qc)
    return reference


# ------------------------------------------------------------------------ GPTQ
def _minmax_qparams(w_groups: torch.Tensor, bits: int, sym: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's quantizer (``Quantizer.find_params``): per group scale and integer zero."""
    maxq = 2 ** bits - 1
    xmin = w_groups.amin(-1).clamp(max=0)
    xmax = w_groups.amax(-1).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    scale = ((xmax - xmin) / maxq).clamp(min=1e-8)
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale.half(), zero.to(torch.int64)


def write_gptq(folder: str, hf, bits: int = 4, group_size: int = 32, desc_act: bool = False,
               sym: bool = True, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """GPTQModel's layout (module docstring of ``vllm_core...quantization.gptq``)."""
    p, maxq = 32 // bits, 2 ** bits - 1
    names = linear_names(hf)
    tensors = _base_tensors(hf, names)
    reference = {}
    gen = torch.Generator().manual_seed(5)
    for name in names:
        w = hf.get_submodule(name).weight.detach().float()          # [N, K]
        n, k = w.shape
        gs = k if group_size == -1 else group_size
        groups = k // gs
        if desc_act:       # columns quantized in a permuted order; groups follow that order
            # (the order comes from the layer input's Hessian: q/k/v and gate/up share it)
            head, _, leaf = name.rpartition(".")
            key = f"{head}.{_SHARED_INPUT.get(leaf, leaf)}"
            if leaf not in _SHARED_INPUT:
                _perms[key] = torch.randperm(k, generator=gen)
            perm = _perms[key]
            g_idx = torch.empty(k, dtype=torch.int32)
            g_idx[perm] = (torch.arange(k) // gs).to(torch.int32)
        else:
            g_idx = (torch.arange(k) // gs).to(torch.int32)
        wg = torch.stack([w[:, g_idx == g] for g in range(groups)], 1)   # [N, G, gs]
        scale, zero = _minmax_qparams(wg, bits, sym)                       # [N, G]
        if checkpoint_format == "gptq":
            # v1 stores zero - 1 in `bits` bits: a zero of 0 cannot be written (it reads back
            # as 2**bits in every v1 reader), so v1 writers' groups never have one
            zero = zero.clamp(min=1)
        scales, zeros = scale.t().contiguous(), zero.t().contiguous()      # [G, N]
        s_k, z_k = scales[g_idx.long()].float(), zeros[g_idx.long()]       # [K, N]
        q = torch.clamp(torch.round(w.t() / s_k) + z_k, 0, maxq).to(torch.int64)  # [K, N]
        reference[name] = ((q - z_k).float() * s_k).t()
        qweight = torch.zeros(k // p, n, dtype=torch.int64)
        for j in range(p):                      # GPTQModel pack: rows i*p + j -> bits*j
            qweight |= q[j::p] << (bits * j)
        stored = zeros - 1 if checkpoint_format == "gptq" else zeros
        stored = stored & maxq
        qzeros = torch.zeros(groups, n // p, dtype=torch.int64)
        for j in range(p):
            qzeros |= stored[:, j::p] << (bits * j)
        tensors[f"{name}.qweight"] = _to_int32(qweight)
        tensors[f"{name}.qzeros"] = _to_int32(qzeros)
        tensors[f"{name}.scales"] = scales
        tensors[f"{name}.g_idx"] = g_idx
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act,
          "sym": sym, "checkpoint_format": checkpoint_format, "lm_head": False,
          "true_sequential": True, "damp_percent": 0.01}
    _write(folder, hf, tensors, qc)
    return reference


_perms: dict[str, torch.Tensor] = {}


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


# ------------------------------------------------------------------------ AWQ
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def write_awq(folder: str, hf, group_size: int = 32) -> dict[str, torch.Tensor]:
    """AutoAWQ's GEMM layout (asymmetric min-max per group, as its quantizer computes it)."""
    names = linear_names(hf)
    tensors = _base_tensors(hf, names)
    reference = {}
    for name in names:
        w = hf.get_submodule(name).weight.detach().float()           # [N, K]
        n, k = w.shape
        wg = w.view(n, k // group_size, group_size)
        mx, mn = wg.amax(-1), wg.amin(-1)
        scale = ((mx - mn).clamp(min=1e-5) / 15).half()                  # [N, G]
        zero = torch.clamp(-torch.round(mn / scale.float()), 0, 15).to(torch.int64)
        s_k = scale.float().repeat_interleave(group_size, 1)             # [N, K]
        z_k = zero.repeat_interleave(group_size, 1)
        q = torch.clamp(torch.round(w / s_k) + z_k, 0, 15).to(torch.int64)   # [N, K]
        reference[name] = (q - z_k).float() * s_k
        intweight, zeros_t = q.t().contiguous(), zero.t().contiguous()    # [K, N], [G, N]
        qweight = torch.zeros(k, n // 8, dtype=torch.int64)
        qzeros = torch.zeros(k // group_size, n // 8, dtype=torch.int64)
        for col in range(n // 8):
            for i in range(8):
                qweight[:, col] |= intweight[:, col * 8 + AWQ_PACK_ORDER[i]] << (i * 4)
                qzeros[:, col] |= zeros_t[:, col * 8 + AWQ_PACK_ORDER[i]] << (i * 4)
        tensors[f"{name}.qweight"] = _to_int32(qweight)
        tensors[f"{name}.qzeros"] = _to_int32(qzeros)
        tensors[f"{name}.scales"] = scale.t().contiguous()
    qc = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
          "version": "gemm", "modules_to_not_convert": None}
    _write(folder, hf, tensors, qc)
    return reference


# ------------------------------------------------------------------------ FP8
def write_fp8(folder: str, hf, block: tuple[int, int] | None = None,
              static: bool = True) -> dict[str, torch.Tensor]:
    """Per-tensor (``weight_scale`` scalar, ``input_scale`` when static) or block-scaled
    (``weight_scale_inv``) float8_e4m3fn weights."""
    names = linear_names(hf)
    tensors = _base_tensors(hf, names)
    reference = {}
    gen = torch.Generator().manual_seed(9)
    for name in names:
        w = hf.get_submodule(name).weight.detach().float()
        if block is None:
            scale = w.abs().amax() / 448.0
            q = (w / scale).to(torch.float8_e4m3fn)
            tensors[f"{name}.weight_scale"] = scale.reshape(())
            if static:
                tensors[f"{name}.input_scale"] = _static_input_scale(name, gen, ())
            reference[name] = q.float() * scale
        else:
            bn, bk = block
            n, k = w.shape
            wb = w.view(n // bn, bn, k // bk, bk)
            scale = wb.abs().amax(dim=(1, 3)) / 448.0                      # [N/bn, K/bk]
            full = scale.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
            q = (w / full).to(torch.float8_e4m3fn)
            tensors[f"{name}.weight_scale_inv"] = scale
            reference[name] = q.float() * full
        tensors[f"{name}.weight"] = q
    qc = {"quant_method": "fp8", "fmt": "e4m3",
          "activation_scheme": "static" if (static and block is None) else "dynamic"}
    if block is not None:
        qc["weight_block_size"] = list(block)
    _write(folder, hf, tensors, qc)
    return reference


_SHARED_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}
_input_scales: dict[str, torch.Tensor] = {}


def _static_input_scale(name: str, gen: torch.Generator, shape: tuple) -> torch.Tensor:
    """A calibrated-looking activation scale; layers reading the same input (q/k/v, gate/up)
    get the same one, as a calibration run gives them."""
    head, _, leaf = name.rpartition(".")
    key = f"{head}.{_SHARED_INPUT.get(leaf, leaf)}"
    if key not in _input_scales or leaf not in _SHARED_INPUT:
        _input_scales[key] = (0.5 + torch.rand((), generator=gen)) * 0.05
    return _input_scales[key].reshape(shape).clone()


def fake_quantize_inputs(model, kind: str, folder_tensors: dict[str, torch.Tensor] | None = None):
    """Make every quantized linear of an HF model see its input quantized and de-quantized
    the way W8A8 kernels do: ``kind`` "int8" (round to int8, scale ``max|x_row| / 127``) or
    "fp8" (cast to float8_e4m3fn, scale ``max|x_row| / 448``); with ``folder_tensors`` the
    checkpoint's static ``<layer>.input_scale`` is used instead of the per-row maximum."""
    qmax = 127.0 if kind == "int8" else 448.0

    def hook_for(name: str):
        static = None if folder_tensors is None else folder_tensors.get(f"{name}.input_scale")

        def hook(module, args):
            x = args[0].float()
            s = (x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax if static is None
                 else static.float())
            y = (x / s).clamp(-qmax, qmax)
            y = y.round() if kind == "int8" else y.to(torch.float8_e4m3fn).float()
            return (y * s,)
        return hook

    for name in linear_names(model):
        model.get_submodule(name).register_forward_pre_hook(hook_for(name))
    return model


def read_tensors(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def hf_with_weights(hf, reference: dict[str, torch.Tensor]):
    """A copy of ``hf`` whose linear weights are the reference de-quantized ones (float32)."""
    import copy

    model = copy.deepcopy(hf)
    with torch.no_grad():
        for name, w in reference.items():
            model.get_submodule(name).weight.copy_(w)
    return model


# ------------------------------------------------------------------------ FP8 KV-cache scales
def amplify_kv(hf, factor: float) -> None:
    """Multiply every layer's K and V by ``factor`` without changing the model's function:
    ``k_proj``, ``v_proj`` times ``factor``, ``q_proj``, ``o_proj`` divided by it (q.k and
    the attention output are unchanged up to rounding). With a large factor the K/V leave
    float8's range, which is what calibrated KV-cache scales are for."""
    with torch.no_grad():
        for layer in hf.model.layers:
            attn = layer.self_attn
            attn.k_proj.weight.mul_(factor)
            attn.v_proj.weight.mul_(factor)
            attn.q_proj.weight.div_(factor)
            attn.o_proj.weight.div_(factor)


def add_kv_cache_scales(folder: str, scales: list[tuple[float, float]],
                        output_scale_layers: tuple[int, ...] = (),
                        kv_cache_scheme: bool = False) -> None:
    """Append per-layer ``(k_scale, v_scale)`` to a saved checkpoint as the exporters write
    them: ``model.layers.N.self_attn.k_scale`` / ``v_scale`` (llm-compressor, vLLM-style FP8
    exports), or ``self_attn.k_proj.output_scale`` / ``v_proj.output_scale`` (AutoFP8) for
    the layers in ``output_scale_layers``; with ``kv_cache_scheme`` the compressed-tensors
    config gains llm-compressor's ``kv_cache_scheme`` (8-bit float, per tensor, static)."""
    from safetensors.torch import load_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    for i, (k, v) in enumerate(scales):
        if i in output_scale_layers:
            names = (f"model.layers.{i}.self_attn.k_proj.output_scale",
                     f"model.layers.{i}.self_attn.v_proj.output_scale")
        else:
            names = (f"model.layers.{i}.self_attn.k_scale", f"model.layers.{i}.self_attn.v_scale")
        tensors[names[0]] = torch.tensor(k, dtype=torch.float32).reshape(())
        tensors[names[1]] = torch.tensor(v, dtype=torch.float32).reshape(())
    save_file(tensors, path)
    if kv_cache_scheme:
        cfg_path = os.path.join(folder, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["quantization_config"]["kv_cache_scheme"] = {
            "num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
            "symmetric": True}
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)


# ------------------------------------------------------------------------ FP8 experts
def write_fp8_moe(folder: str, dequantized_folder: str, hf,
                  compressed_tensors: bool = False) -> None:
    """An FP8 (``quant_method: fp8``, dynamic activations) checkpoint of an HF MoE model as
    FP8 exports store it: every expert projection and attention linear float8_e4m3fn with a
    per-tensor ``weight_scale`` (``max|w| / 448``), the router and norms in float; and, in
    ``dequantized_folder``, the same model with those weights de-quantized (the reference).
    ``compressed_tensors``: llm-compressor's ``FP8_DYNAMIC`` instead (per-channel
    ``weight_scale`` [N, 1], ``float-quantized`` config group on ``Linear``, the router
    ignored)."""
    from safetensors.torch import load_file

    hf.save_pretrained(folder)
    hf.save_pretrained(dequantized_folder)
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    deq = dict(tensors)
    for name in list(tensors):
        leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
        if leaf not in LINEARS + ("w1", "w2", "w3") or ".mlp.gate." in name:
            continue
        w = tensors[name].float()
        if compressed_tensors:
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        else:
            scale = w.abs().amax().clamp(min=1e-12) / 448.0
        q = (w / scale).to(torch.float8_e4m3fn)
        tensors[name] = q
        tensors[name[:-len("weight")] + "weight_scale"] = \
            scale if compressed_tensors else scale.reshape(())
        deq[name] = q.float() * scale
    save_file(tensors, path)
    save_file(deq, os.path.join(dequantized_folder, "model.safetensors"))
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                  "activation_scheme": "dynamic"}
    if compressed_tensors:
        fp8 = {"num_bits": 8, "type": "float", "symmetric": True}
        cfg["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "weights": {**fp8, "strategy": "channel", "dynamic": False},
                "input_activations": {**fp8, "strategy": "token", "dynamic": True}}},
            "ignore": ["lm_head", "re:.*mlp.gate$"]}
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
