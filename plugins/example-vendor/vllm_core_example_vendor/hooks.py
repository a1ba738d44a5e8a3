"""Our pluggy hook implementations (specifications: ``vllm_core.plugins.hookspecs``)."""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

ATTENTION_BACKENDS = {
    "example_paged": "vllm_core_example_vendor.attention.ExamplePagedAttentionBackend",
}


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    for name, class_path in ATTENTION_BACKENDS.items():
        register(name, class_path)
