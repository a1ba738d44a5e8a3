"""``vllm serve`` flags this server does not implement yet: accepted so that a copied command
line parses, and refused with one clear sentence when set to anything but the default.

``check_vllm_compat_args`` runs before the port is bound or the model loaded, so the failure
is immediate. Flags that only change logging (``--disable-log-requests``: this server never
logs request contents) are accepted and have nothing to do.

The structured-output / tool-calling flags (``--enable-auto-tool-choice``,
``--tool-call-parser``, ``--structured-outputs-config``, ``--reasoning-parser``) are not here:
they are implemented with structured outputs; ``--tensor-parallel-size``,
``--pipeline-parallel-size`` and ``--data-parallel-size`` belong to the engine arguments
(distributed execution).

Import-light: argparse only.
"""

from __future__ import annotations

import argparse
from typing import Any

# dest -> (default, accepted values besides the default, what to say)
UNSUPPORTED: dict[str, tuple[Any, tuple[Any, ...], str]] = {
    "trust_remote_code": (False, (), "vllm-core never runs code shipped with a model; models "
                          "are built from its own implementations (drop --trust-remote-code)"),
}


def add_vllm_compat_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The vLLM flag names of ``UNSUPPORTED`` plus the logging-only ones."""
    g = parser.add_argument_group("vLLM compatibility (accepted; non-default values are "
                                  "refused with the reason)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="refused: vllm-core never runs code shipped with a model")
    g.add_argument("--disable-log-requests", action="store_true",
                   help="accepted; request contents are never logged")
    return parser


def check_vllm_compat_args(args: Any) -> None:
    """``ValueError`` naming the first flag set to a value this server cannot honour."""
    for dest, (default, accepted, why) in UNSUPPORTED.items():
        value = getattr(args, dest, default)
        if value is None or value == default or value in accepted:
            continue
        flag = "--" + dest.replace("_", "-")
        raise ValueError(f"{flag} {value!r}: {why}" if not isinstance(value, bool)
                         else f"{flag}: {why}")
