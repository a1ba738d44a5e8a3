"""Hook implementations of the CUDA plugin (see ``vllm_core.plugins.hookspecs``).

Backends are registered by class path: a backend whose kernel library is missing (flash-attn,
flashinfer) fails only when selected, and the selector then moves on with that reason.
"""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

ATTENTION_BACKENDS = {
    "triton": "vllm_core_triton.attention.TritonAttentionBackend",
    "flash_attn": "vllm_core_cuda.attention.flash_attn_backend.FlashAttentionBackend",
    "flashinfer": "vllm_core_cuda.attention.flashinfer_backend.FlashInferBackend",
}


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    for name, class_path in ATTENTION_BACKENDS.items():
        register(name, class_path)
