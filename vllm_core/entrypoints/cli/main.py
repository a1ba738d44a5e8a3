"""The ``vllm-core`` command. Subcommands live in sibling modules, each exposing
``register(subparsers)`` which adds its parser and sets ``func`` (called with the parsed args).

Contract for subcommand modules: importing them must not import torch or transformers (so that
``--help`` and ``--version`` answer in well under a second); import heavy modules in ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vllm_core.version import __version__

SUBCOMMAND_MODULES = (
    "vllm_core.entrypoints.cli.serve",
    "vllm_core.entrypoints.cli.generate",
    "vllm_core.entrypoints.cli.bench",
    "vllm_core.entrypoints.cli.platforms",
    "vllm_core.entrypoints.cli.collect_env",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-core",
        description="High-throughput LLM inference and serving with hardware platform plugins.")
    parser.add_argument("--version", action="version", version=f"vllm-core {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # User-facing errors: one clear line, no traceback.
        print(f"vllm-core {args.command}: error: {e}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
