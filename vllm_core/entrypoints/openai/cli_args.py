"""The ``vllm-core serve`` flags (frontend flags here, engine flags from ``EngineArgs``) and the
``--config`` YAML file.

Import-light: no fastapi, torch or transformers at import time (``vllm-core --help`` must stay
fast).

``--config FILE`` holds the same flags as a YAML mapping (``port: 8001``, ``max-model-len:
1024`` or ``max_model_len: 1024``; booleans as ``true``/``false``). Flags given on the command
line override the file: a value the file sets is used only where the command line left the
flag at its default.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_PORT = 8000


def _json_list(value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(parsed, str):
        parsed = [parsed]
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, got {value!r}")
    return parsed


def add_frontend_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The server's own flags (names as in ``vllm serve``)."""
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=None, help="host to bind (default: all interfaces)")
    g.add_argument("--lora-modules", nargs="+", default=None, metavar="NAME=PATH",
                   help="LoRA adapters to serve (with --enable-lora), each selected by "
                        "model=NAME; also JSON {\"name\": ..., \"path\": ...}")
    g.add_argument("--port", type=int, default=DEFAULT_PORT)
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer <key>' (or set VLLM_API_KEY)")
    g.add_argument("--enable-metrics-auth", action="store_true",
                   help="also require the API key on /metrics (open by default, as in vLLM)")
    g.add_argument("--allowed-origins", type=_json_list, default=["*"],
                   help='CORS allowed origins, a JSON list (default ["*"])')
    g.add_argument("--allowed-methods", type=_json_list, default=["*"])
    g.add_argument("--allowed-headers", type=_json_list, default=["*"])
    g.add_argument("--allow-credentials", action="store_true")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds to drain in-flight requests after SIGTERM before exiting")
    g.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    g.add_argument("--disable-uvicorn-access-log", action="store_true")
    g.add_argument("--disable-fastapi-docs", action="store_true",
                   help="do not serve /docs, /redoc and /openapi.json")
    g.add_argument("--log-stats-interval", type=float, default=5.0,
                   help="seconds between the periodic throughput log lines")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='allow tool_choice "auto": tool calls are parsed from the output with '
                        "--tool-call-parser")
    from vllm_core.entrypoints.openai.tool_parsers.registry import PARSERS
    from vllm_core.plugins.registry import argparse_name_type

    g.add_argument("--tool-call-parser", default=None, type=argparse_name_type(PARSERS),
                   help="hermes, llama3_json, mistral, pythonic (or a plugin's parser)")
    g.add_argument("--config", default=None,
                   help="YAML file of flags (command-line flags override it)")
    g.add_argument("--root-path", default=None,
                   help="the path prefix the server is mounted under behind a proxy")
    g.add_argument("--max-request-body-bytes", type=int, default=None,
                   help="largest request body accepted; bigger ones get 413 (default 16 MiB)")
    g.add_argument("--max-n", type=int, default=None,
                   help="most choices (n) one request may ask for (default 128)")
    g.add_argument("--engine-core-process", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="run the engine core (scheduler, workers) in its own process, the "
                        "HTTP front end talking to it over ZeroMQ (default: the platform's "
                        "choice: on for CUDA, off for CPU; see docs/serving.md)")
    g.add_argument("--api-server-count", type=int, default=1,
                   help="front-end (HTTP) processes sharing one engine core and the port "
                        "(implies --engine-core-process)")
    return parser


def make_serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Everything ``vllm-core serve`` accepts."""
    from vllm_core.engine.arg_utils import EngineArgs

    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="model directory or .gguf file (default: the embedded model)")
    parser.add_argument("--model", default=None, help="same as the positional MODEL")
    from vllm_core.entrypoints.openai.vllm_compat_args import add_vllm_compat_args

    add_frontend_args(parser)
    EngineArgs.add_cli_args(parser)
    add_vllm_compat_args(parser)
    return parser


def apply_config_file(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill ``args`` from ``args.config`` (YAML) where the command line kept the default."""
    path = getattr(args, "config", None)
    if not path:
        return
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag names to values")
    argv: list[str] = []
    by_option = {opt: action for action in parser._actions for opt in action.option_strings}
    positional = {"model": "model_tag"}
    for key, value in data.items():
        name = str(key).replace("_", "-")
        if name in positional:
            argv += [f"--{name}", str(value)]
            continue
        action = by_option.get(f"--{name}")
        if action is None:
            raise ValueError(f"--config {path}: unknown option {key!r}")
        if action.dest == "config":
            raise ValueError(f"--config {path}: a config file cannot name another config file")
        if isinstance(value, bool):
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(f"--{name}" if value else f"--no-{name}")
                continue
            if action.nargs == 0:  # store_true / store_false: the flag sets const
                if value == action.const:
                    argv.append(f"--{name}")
                continue
        if isinstance(value, (list, dict)):
            value = json.dumps(value)
        argv += [f"--{name}", str(value)]
    from_file = parser.parse_args(argv)
    defaults = parser.parse_args([])
    for dest, value in vars(from_file).items():
        if dest in ("config", "func"):
            continue
        default = getattr(defaults, dest, None)
        if value != default and getattr(args, dest, default) == default:
            setattr(args, dest, value)


def resolve_model(args: Any) -> str | None:
    """The model the user named (positional MODEL or --model), or None for the embedded one."""
    return getattr(args, "model_tag", None) or getattr(args, "model", None)
