"""Hook implementations of the CPU plugin (see ``vllm_core.plugins.hookspecs``)."""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

ATTENTION_BACKENDS = {
    "cpu_paged": "vllm_core_cpu.attention.CpuPagedAttentionBackend",
    "ipex_paged": "vllm_core_cpu.ipex.IpexPagedAttentionBackend",
}


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    for name, class_path in ATTENTION_BACKENDS.items():
        register(name, class_path)
