"""Choosing the attention backend for a model on a platform.

Walk the user's requested backend (``--attention-backend`` / ``VLLM_ATTENTION_BACKEND``, passed
in by the caller) or else the platform's preference list (``Platform.attention_backends()``) and
return the first backend that can serve the configuration. A backend refuses with the reasons of
its ``unsupported_reasons``; a backend whose module fails to import (a missing optional kernel
library) or whose name is not registered refuses with that reason. When every candidate refuses,
``ValueError`` lists each refused backend with its reasons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm_core.attention.registry import get_backend_cls
from vllm_core.logger import init_logger
from vllm_core.plugins.loading import describe_exception

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.attention.backend import AttentionBackend
    from vllm_core.platforms.interface import Platform

logger = init_logger(__name__)


def _dtype_name(dtype: Any) -> str:
    """Accept "bfloat16" or torch.bfloat16 alike."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def select_attention_backend(platform_cls: type[Platform], *, head_size: int, dtype: Any,
                             kv_cache_dtype: str, block_size: int | None,
                             sliding_window: int | None,
                             requested: str | None = None) -> type[AttentionBackend]:
    """Return the first backend class that accepts the configuration (see module docstring).

    ``requested`` outside the platform's list is tried (with a warning): backends such as the
    portable reference one run anywhere, and a backend that cannot run says so itself.
    """
    preferred = list(platform_cls.attention_backends())
    if requested is not None:
        if requested not in preferred:
            logger.warning("attention backend %r requested, but platform %r does not list it "
                           "(its backends: %s)", requested, platform_cls.name,
                           ", ".join(preferred))
        candidates = [requested]
    else:
        candidates = preferred
    dtype_name = _dtype_name(dtype)
    kv_name = _dtype_name(kv_cache_dtype)
    refused: list[tuple[str, list[str]]] = []
    for name in candidates:
        try:
            cls = get_backend_cls(name)
        except ImportError as e:
            refused.append((name, [f"cannot be imported ({describe_exception(e)})"]))
            continue
        except ValueError as e:
            refused.append((name, [str(e)]))
            continue
        reasons = cls.unsupported_reasons(head_size=head_size, dtype=dtype_name,
                                          kv_cache_dtype=kv_name, block_size=block_size,
                                          sliding_window=sliding_window)
        if not reasons:
            if refused:
                logger.info("attention backend %s selected after refusals: %s", name,
                            "; ".join(f"{n}: {', '.join(r)}" for n, r in refused))
            return cls
        refused.append((name, list(reasons)))
    what = (f"head_size={head_size}, dtype={dtype_name}, kv_cache_dtype={kv_name}, "
            f"block_size={block_size}, sliding_window={sliding_window}")
    lines = [f"no attention backend of platform {platform_cls.name!r} can serve {what}:"]
    lines.extend(f"  - {name}: {'; '.join(reasons)}" for name, reasons in refused)
    if not refused:
        lines.append("  (the platform lists no attention backends)")
    if requested is not None:
        lines.append(f"(requested explicitly; platform {platform_cls.name!r} offers: "
                     f"{', '.join(preferred) or 'none'})")
    raise ValueError("\n".join(lines))
