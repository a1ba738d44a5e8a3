"""Hook implementations of the TPU plugin: its attention backends, by class path."""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

ATTENTION_BACKENDS = {
    "pallas": "vllm_core_tpu.attention.PallasAttentionBackend",
    "xla_paged": "vllm_core_tpu.attention.XlaPagedAttentionBackend",
}


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    for name, class_path in ATTENTION_BACKENDS.items():
        register(name, class_path)
