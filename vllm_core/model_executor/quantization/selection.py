"""Choosing the quantization method of a model, with the refusal in words.

Rules (``select_quantization``):

1. A GGUF file is kept quantized (``gguf.GGUFConfig``: its Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K /
   Q6_K linear layers) with ``--quantization gguf``, and by default on the platforms of
   ``GGUF_KEPT_BY_DEFAULT``; otherwise, or with ``gguf_dequantize`` (``--gguf-dequantize``),
   it is de-quantized at load by the GGUF loader. ``--quantization`` may be unset or ``gguf``;
   a method that quantizes at load (``online``, e.g. ``int8``, ``fp8``) re-quantizes the
   de-quantized weights (rule 3); anything else is refused.
2. A checkpoint whose ``config.json`` has a ``quantization_config`` is loaded with the method
   its ``quant_method`` names (``compressed_tensors`` is the same as ``compressed-tensors``).
   ``--quantization`` may repeat that name; a different one is refused (a checkpoint holds
   one format). An unknown ``quant_method`` is refused with the registered names.
3. Otherwise ``--quantization NAME`` quantizes the float checkpoint while loading it when the
   method can (``QuantizationConfig.online``, e.g. ``fp8``); a method that needs its tool's
   checkpoint is refused, saying how to make one.
4. The chosen config's ``unsupported_reasons(platform, dtype)`` must be empty.
"""

from __future__ import annotations

from typing import Any

from vllm_core.model_executor.quantization.base import QuantizationConfig
from vllm_core.model_executor.quantization.registry import (
    get_quantization_method_cls,
    list_quantization_methods,
)

_ALIASES = {"compressed_tensors": "compressed-tensors"}


def normalize_method_name(name: str) -> str:
    name = str(name).strip().lower()
    return _ALIASES.get(name, name)


def checkpoint_quant_method(hf_config: dict[str, Any]) -> str | None:
    """The ``quant_method`` of a checkpoint's config (None: not quantized)."""
    qc = hf_config.get("quantization_config")
    if not isinstance(qc, dict) or not qc:
        return None
    method = qc.get("quant_method")
    if not method:
        raise ValueError("config.json has a quantization_config without a quant_method")
    return normalize_method_name(method)


def _method_cls(name: str, what: str) -> type[QuantizationConfig]:
    known = list(list_quantization_methods())
    if name not in known:
        raise ValueError(f"{what} {name!r} is not supported; supported methods: "
                         f"{', '.join(known)}")
    return get_quantization_method_cls(name)


# Platforms whose kernel for GGUF's small groups beats the de-quantized float path (measured
# 2026-11-30): the CPU plugin's C++ kernel decodes the default Q4_1 model 2.39x faster than
# fp32 (AMD EPYC, AVX2); on the H200 the Triton group-32 GEMV ran at 0.16-0.42x of a bf16
# linear, so CUDA keeps de-quantizing unless --quantization gguf asks otherwise.
GGUF_KEPT_BY_DEFAULT = ("cpu",)


def select_quantization(hf_config: dict[str, Any], requested: str | None, *,
                        is_gguf: bool = False, platform: str | None = None,
                        dtype: str | None = None,
                        gguf_dequantize: bool = False) -> QuantizationConfig | None:
    """The config of the model's quantization method, or None (float weights, or GGUF
    de-quantized at load). ``platform`` / ``dtype`` None skip rule 4 (tests, direct loads).
    Raises ``ValueError`` with the reason."""
    requested = normalize_method_name(requested) if requested else None
    if is_gguf:
        if requested not in (None, "gguf"):
            cls = _method_cls(requested, "--quantization")
            if not cls.online:
                raise ValueError(f"--quantization {requested}: this is a GGUF file (its own "
                                 "quantization); only --quantization gguf, none, or a method "
                                 "that quantizes at load (" + ", ".join(online_methods())
                                 + ") applies")
            return _checked(cls.for_online(), platform, dtype)   # de-quantized, then this
        if gguf_dequantize:
            if requested == "gguf":
                raise ValueError("--quantization gguf and --gguf-dequantize contradict each "
                                 "other (keep the weights quantized, or de-quantize them)")
            return None
        if requested is None and platform and platform not in GGUF_KEPT_BY_DEFAULT:
            return None           # this platform's float path is faster (see above)
        gguf_file = hf_config.get("gguf_file")
        if not gguf_file:
            return None           # an arch config without its file (tests): de-quantized
        config = _method_cls("gguf", "--quantization").from_checkpoint(
            {"quant_method": "gguf", "gguf_file": gguf_file})
        return _checked(config, platform, dtype)
    if requested == "gguf":
        raise ValueError("--quantization gguf needs a .gguf model file")
    if gguf_dequantize:
        raise ValueError("--gguf-dequantize needs a .gguf model file")
    found = checkpoint_quant_method(hf_config)
    if found is not None:
        if requested is not None and requested != found:
            raise ValueError(f"--quantization {requested}: the checkpoint is quantized with "
                             f"{found!r} (its config.json's quantization_config); drop the "
                             f"flag or pass --quantization {found}")
        cls = _method_cls(found, "the checkpoint's quantization method")
        config = cls.from_checkpoint(dict(hf_config["quantization_config"]))
    elif requested is not None:
        cls = _method_cls(requested, "--quantization")
        if not cls.online:
            raise ValueError(
                f"--quantization {requested} needs a checkpoint quantized by its tool "
                f"({cls.how_to_make or 'see docs/quantization.md'}); this checkpoint's "
                f"config.json has no quantization_config. Methods that quantize a float "
                f"checkpoint at load: {', '.join(online_methods()) or 'none'}")
        config = cls.for_online()
    else:
        return None
    return _checked(config, platform, dtype)


def _checked(config: QuantizationConfig, platform: str | None,
             dtype: str | None) -> QuantizationConfig:
    """Rule 4 (skipped when ``platform`` or ``dtype`` is None)."""
    if platform is not None and dtype is not None:
        reasons = config.unsupported_reasons(platform, dtype)
        if reasons:
            raise ValueError(f"quantization {config.name!r} cannot run here: "
                             + "; ".join(reasons))
    return config


def online_methods() -> list[str]:
    """Registered methods that can quantize a float checkpoint at load."""
    out = []
    for name in list_quantization_methods():
        try:
            if get_quantization_method_cls(name).online:
                out.append(name)
        except ImportError:
            continue
    return out


def describe_methods(platform: str, dtype: str) -> list[str]:
    """One line per registered method: what it supports and whether it runs on ``platform``
    with ``dtype`` (for ``vllm-core platforms``)."""
    lines = []
    for name in list_quantization_methods():
        try:
            cls = get_quantization_method_cls(name)
        except ImportError as e:
            lines.append(f"{name}: cannot be imported ({e})")
            continue
        plats = "any" if "*" in cls.platforms else ", ".join(cls.platforms)
        if "*" not in cls.platforms and platform not in cls.platforms:
            verdict = f"not on {platform}"
        elif dtype not in cls.activation_dtypes:
            verdict = f"not with {dtype}"
        else:
            verdict = "available"
        lines.append(f"{name}: {verdict} (platforms {plats}; dtypes "
                     f"{', '.join(cls.activation_dtypes)}; {', '.join(cls.capabilities)}"
                     f"{'; online' if cls.online else ''})")
    return lines
