"""The extension points of the core, as pluggy hook specifications (project ``vllm_core``).

A plugin contributes by implementing any of these with ``@hookimpl`` on a module or object and
handing it to ``vllm_core.plugins.register_hooks`` (typically from its ``vllm.general_plugins``
entry point). It never monkeypatches the core.

The ``register_*`` hooks are *historic*: an implementation registered at any time is
called once, straight away, with the core's ``register`` function. Registration maps a name to
a dotted class path; the class is imported only when something selects that name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.config import EngineConfig

PROJECT_NAME = "vllm_core"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

RegisterFn = Callable[..., None]
"""``register(name, class_path, override=False)``: the rule of ``vllm_core.plugins.registry``
(same pair again: no-op; another path for a taken name: ``ValueError`` unless ``override``)."""


class VllmCoreHookSpecs:
    """Hook specifications. Implementations may accept any subset of the arguments."""

    @hookspec(historic=True)
    def register_attention_backends(self, register: RegisterFn) -> None:
        """Call ``register(name, "pkg.module.BackendClass")`` for each attention backend.

        Platforms list backend names in ``Platform.attention_backends()``; the attention
        selector resolves them through this registry.
        """

    @hookspec(historic=True)
    def register_model_architectures(self, register: RegisterFn) -> None:
        """Call ``register("MyForCausalLM", "pkg.module.MyForCausalLM")`` per architecture
        (the HF ``architectures`` name the model's config declares)."""

    @hookspec(historic=True)
    def register_quantization_methods(self, register: RegisterFn) -> None:
        """Call ``register("my_quant", "pkg.module.MyQuantMethod")`` per method."""

    @hookspec(historic=True)
    def register_tool_parsers(self, register: RegisterFn) -> None:
        """Call ``register("my_parser", "pkg.module.MyToolParser")`` per tool-call parser
        (a ``vllm_core.entrypoints.openai.tool_parsers.ToolParser``; ``--tool-call-parser``
        selects it by name)."""

    @hookspec(historic=True)
    def register_reasoning_parsers(self, register: RegisterFn) -> None:
        """Call ``register("my_parser", "pkg.module.MyReasoningParser")`` per reasoning
        parser (a ``vllm_core.reasoning.ReasoningParser``; ``--reasoning-parser``)."""

    @hookspec
    def adjust_engine_config(self, config: EngineConfig) -> None:
        """Adjust ``config`` in place after the platform's ``check_and_update_config``.

        Called by ``create_engine_config`` through ``vllm_core.plugins.apply_config_hooks``,
        before any worker starts; raise ``ValueError`` to reject a configuration.
        """
