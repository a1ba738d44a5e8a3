"""``vllm-core chat`` / ``generate --url`` stream from a running server (no model loaded), the
answer's finish_reason is reported on stderr, and the offline ``LLM.chat`` default max_tokens is
the model's max_new_tokens or DEFAULT_CHAT_MAX_TOKENS (not 16)."""

from __future__ import annotations

import types

import pytest

from vllm_core.entrypoints.cli import generate
from vllm_core.entrypoints.cli.main import build_parser
from vllm_core.entrypoints.llm import LLM
from vllm_core.sampling.params import DEFAULT_CHAT_MAX_TOKENS, SamplingParams


@pytest.fixture
def no_local_engine(monkeypatch):
    def refuse(args):
        raise AssertionError("the model must not be loaded when --url is given")

    monkeypatch.setattr(generate, "_make_engine", refuse)


def test_chat_with_url_streams_from_the_server(fake_server, no_local_engine, capsys):
    args = build_parser().parse_args(["chat", "Hi there", "--url", f"{fake_server.url}/v1",
                                      "--max-tokens", "5"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert len(captured.out) == 5 + 1
    assert "finish_reason: length - the answer was cut at 5 tokens" in captured.err


def test_generate_with_openai_base_url(fake_server, no_local_engine, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", f"{fake_server.url}/v1")
    args = build_parser().parse_args(["generate", "Once upon", "--max-tokens", "4",
                                      "--stop", "zzzz"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert len(captured.out) == 4 + 1
    assert "[finish_reason: length" in captured.err


def test_url_errors_are_clear(fake_server, no_local_engine):
    args = build_parser().parse_args(["chat", "Hi", "--url", f"{fake_server.url}/v1",
                                      "--model", "no-such-model"])
    with pytest.raises(RuntimeError, match="404.*no-such-model"):
        args.func(args)
    args = build_parser().parse_args(["chat", "Hi", "--url", "http://127.0.0.1:9/v1"])
    with pytest.raises(RuntimeError, match="cannot reach the server"):
        args.func(args)


@pytest.mark.parametrize("defaults,expected", [({}, DEFAULT_CHAT_MAX_TOKENS),
                                               ({"max_tokens": 300}, 300)])
def test_llm_chat_default_max_tokens(defaults, expected):
    llm = object.__new__(LLM)
    seen: list = []

    def default_params():
        params = SamplingParams()
        params.update_from_generation_config(defaults, set())
        return params

    llm.llm_engine = types.SimpleNamespace(generation_defaults=defaults,
                                           default_sampling_params=default_params)
    llm.apply_chat_template = lambda conv, *a: [1, 2, 3]
    llm.generate = lambda prompts, params, use_tqdm=True: seen.append(params) or []
    llm.chat([{"role": "user", "content": "hi"}])
    assert seen[0].max_tokens == expected
    llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=7))
    assert seen[1].max_tokens == 7
