"""Hook implementations of the ROCm plugin: its attention backends, by class path.

"triton" is the CUDA plugin's Triton backend (Triton compiles the same kernels for AMD GPUs);
registering the identical class path twice is a no-op in the registry.
"""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

ATTENTION_BACKENDS = {
    "triton": "vllm_core_triton.attention.TritonAttentionBackend",
}


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    for name, class_path in ATTENTION_BACKENDS.items():
        register(name, class_path)
