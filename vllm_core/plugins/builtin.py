"""The core's own hook implementations: what vllm-core registers without any plugin."""

from __future__ import annotations

from vllm_core.plugins.hookspecs import RegisterFn, hookimpl

REFERENCE_BACKEND = "vllm_core.attention.backends.reference.ReferenceAttentionBackend"


@hookimpl
def register_attention_backends(register: RegisterFn) -> None:
    # The portable torch backend every platform may fall back to.
    register("reference", REFERENCE_BACKEND)
