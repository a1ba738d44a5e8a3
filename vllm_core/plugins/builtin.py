"""The core's own hook implementations: what vllm-core registers without any plugin."""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

REFERENCE_BACKEND = "vllm_core.attention.backends.reference.ReferenceAttentionBackend"


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    # The portable torch backend every platform may fall back to.
    register("reference", REFERENCE_BACKEND)


_QUANT = "vllm_core.model_executor.quantization"
QUANTIZATION_METHODS = {
    "gptq": f"{_QUANT}.gptq.GPTQConfig",
    "awq": f"{_QUANT}.awq.AWQConfig",
    "compressed-tensors": f"{_QUANT}.compressed_tensors.CompressedTensorsConfig",
    "fp8": f"{_QUANT}.fp8.Fp8Config",
    "gguf": f"{_QUANT}.gguf.GGUFConfig",
    "int8": f"{_QUANT}.int8.Int8Config",
}


@hookimpl
def register_quantization_methods(register: RegisterFn) -> None:
    # Each name maps to a QuantizationConfig subclass (model_executor/quantization/base.py).
    for name, path in QUANTIZATION_METHODS.items():
        register(name, path)
