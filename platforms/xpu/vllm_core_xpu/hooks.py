"""Hook implementations of the XPU plugin: its attention backends, by class path (a backend
whose library is missing is refused with the import error only when selected)."""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

ATTENTION_BACKENDS = {
    "ipex_paged": "vllm_core_cpu.ipex.IpexPagedAttentionBackend",
    "triton": "vllm_core_triton.attention.TritonAttentionBackend",
}


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    for name, class_path in ATTENTION_BACKENDS.items():
        register(name, class_path)
