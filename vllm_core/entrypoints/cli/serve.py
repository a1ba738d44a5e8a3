"""``vllm-core serve [MODEL]``: the OpenAI-compatible server.

Import-light (argparse only); the server, fastapi and the engine are imported when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from vllm_core.entrypoints.openai.cli_args import apply_config_file, make_serve_parser


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="start the OpenAI-compatible HTTP server",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/completions, "
                    "/v1/chat/completions, /v1/models, /tokenize, /metrics, /health).")
    make_serve_parser(parser)
    parser.set_defaults(func=lambda args: serve(args, parser))
    return parser


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Apply ``--config`` (command-line flags win), then run the server until stopped."""
    if parser is not None:
        apply_config_file(args, parser)
    from vllm_core.entrypoints.openai.api_server import run_server

    return run_server(args)
