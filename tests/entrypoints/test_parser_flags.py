"""Tool and reasoning parser names are checked when the flags are parsed (the error names the
known parsers), and ``run_server`` refuses an unknown one before it loads any engine."""

from __future__ import annotations

import argparse

import pytest

from vllm_core.entrypoints.openai.cli_args import make_serve_parser


def parse(argv: list[str]) -> argparse.Namespace:
    return make_serve_parser(argparse.ArgumentParser(prog="serve")).parse_args(argv)


@pytest.mark.parametrize("flag, known", [("--tool-call-parser", "hermes, llama3_json"),
                                         ("--reasoning-parser", "deepseek_r1, qwen3")])
def test_unknown_parser_name_fails_at_argument_parsing(flag, known, capsys):
    with pytest.raises(SystemExit):
        parse([flag, "nope"])
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "'nope'" in err and known in err


def test_known_parser_names_parse():
    args = parse(["--tool-call-parser", "pythonic", "--reasoning-parser", "qwen3",
                  "--enable-auto-tool-choice"])
    assert args.tool_call_parser == "pythonic" and args.reasoning_parser == "qwen3"


def test_run_server_checks_parser_names_before_loading():
    from vllm_core.entrypoints.openai.api_server import run_server

    args = parse([])
    args.tool_call_parser = "nope"            # set programmatically, past argparse

    def factory(*_a, **_k):
        raise AssertionError("the engine must not be built")

    with pytest.raises(ValueError, match="tool_call_parser 'nope' is unknown; available: "
                                         "hermes"):
        run_server(args, engine_factory=factory)
