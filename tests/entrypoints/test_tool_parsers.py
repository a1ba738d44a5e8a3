"""Tool parsers on fixed model outputs: whole and streamed with every chunk size and at
awkward boundaries (inside markers, keys, escapes); the streamed argument deltas concatenate
to JSON equal to the non-streamed arguments; plugins register parsers through the hook."""

from __future__ import annotations

import json

import pytest

from vllm_core.entrypoints.openai.tool_calling import NamedToolParser, RequiredToolParser
from vllm_core.entrypoints.openai.tool_parsers import resolve_tool_parser, tool_parser_names
from vllm_core.entrypoints.openai.tool_parsers.base import ToolParser

WEATHER = ("get_weather", {"city": "Paris, \"FR\"", "days": [1, 2], "unit": "°C"})
TIME = ("get_time", {"tz": "UTC"})

CASES = {
    "hermes": ('I will check.<tool_call>\n{"name": "get_weather", "arguments": '
               '{"city": "Paris, \\"FR\\"", "days": [1, 2], "unit": "°C"}}\n</tool_call>\n'
               '<tool_call>\n{"arguments": {"tz": "UTC"}, "name": "get_time"}\n</tool_call>',
               "I will check.", [WEATHER, TIME]),
    "llama3_json": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": '
                    '"Paris, \\"FR\\"", "days": [1, 2], "unit": "°C"}}; '
                    '{"name": "get_time", "parameters": {"tz": "UTC"}}', None, [WEATHER, TIME]),
    "mistral": ('Let me see [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": '
                '"Paris, \\"FR\\"", "days": [1, 2], "unit": "°C"}}, {"name": "get_time", '
                '"arguments": {"tz": "UTC"}}]', "Let me see ", [WEATHER, TIME]),
    "mistral_v11": ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris, \\"FR\\"", "days": [1, 2], '
                    '"unit": "°C"}[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}', None,
                    [WEATHER, TIME]),
    "pythonic": ('[get_weather(city=\'Paris, "FR"\', days=[1, 2], unit="°C"), '
                 'get_time(tz="UTC")]', None, [WEATHER, TIME]),
}


def parser_for(case: str) -> ToolParser:
    return resolve_tool_parser(case.split("_v")[0] if case.startswith("mistral") else case)()


def run_stream(parser: ToolParser, chunks: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    stream = parser.stream()
    content = ""
    calls: dict[int, dict] = {}
    ids: dict[int, str] = {}

    def take(c: str, deltas) -> None:
        nonlocal content
        content += c
        for d in deltas:
            entry = calls.setdefault(d.index, {"name": None, "args": ""})
            if d.id is not None:
                assert d.index not in ids, "id sent twice"
                ids[d.index] = d.id
                entry["name"] = d.name
            else:
                assert d.name is None
            entry["args"] += d.arguments

    for chunk in chunks:
        take(*stream.feed(chunk))
    take(*stream.finish())
    return content, [(calls[i]["name"], json.loads(calls[i]["args"])) for i in sorted(calls)]


def chunked(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_non_streamed(case):
    text, content, calls = CASES[case]
    out = parser_for(case).extract_tool_calls(text)
    assert out.tools_called
    assert out.content == content
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == calls
    assert len({c.id for c in out.tool_calls}) == len(calls)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 1000])
def test_streamed_equals_whole(case, size):
    text, content, calls = CASES[case]
    got_content, got_calls = run_stream(parser_for(case), chunked(text, size))
    assert (got_content or None) == content
    assert got_calls == calls


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_split_at_every_position(case):
    text, content, calls = CASES[case]
    for cut in range(1, len(text)):
        got_content, got_calls = run_stream(parser_for(case), [text[:cut], text[cut:]])
        assert (got_content or None) == content and got_calls == calls, cut


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "mistral", "pythonic"])
def test_plain_text_is_content(name):
    text = "The weather in Paris is sunny [really] {mostly}."
    parser = resolve_tool_parser(name)()
    out = parser.extract_tool_calls(text)
    assert not out.tools_called and out.content == text
    content, calls = run_stream(parser, chunked(text, 3))
    assert content == text and calls == []


def test_mistral_ids_are_nine_alphanumerics():
    out = resolve_tool_parser("mistral")().extract_tool_calls(CASES["mistral"][0])
    assert all(len(c.id) == 9 and c.id.isalnum() for c in out.tool_calls)


def test_truncated_call_is_not_a_call():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    out = resolve_tool_parser("hermes")().extract_tool_calls(text)
    assert not out.tools_called and out.content == text


def test_required_and_named_parsers():
    text = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, ' \
           '{"name": "get_time", "parameters": {}}]'
    out = RequiredToolParser().extract_tool_calls(text)
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert run_stream(RequiredToolParser(), chunked(text, 4))[1] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    named = NamedToolParser("get_weather")
    assert run_stream(named, chunked('{"city": "Rome"}', 3)) == (
        "", [("get_weather", {"city": "Rome"})])


def test_builtin_parsers_registered():
    assert {"hermes", "llama3_json", "mistral", "pythonic"} <= set(tool_parser_names())
    with pytest.raises(ValueError, match="available: .*hermes"):
        resolve_tool_parser("nope")


def test_plugin_registers_a_parser_through_the_hook():
    from vllm_core.plugins import hookimpl, register_hooks

    class Plugin:
        @hookimpl
        def register_tool_parsers(self, register):
            register("plugin_hermes",
                     "vllm_core.entrypoints.openai.tool_parsers.hermes.HermesToolParser")

        @hookimpl
        def register_reasoning_parsers(self, register):
            register("plugin_r1", "vllm_core.reasoning.deepseek_r1.DeepSeekR1ReasoningParser")

    register_hooks(Plugin(), name="test-parsers-plugin")
    from vllm_core.reasoning import resolve_reasoning_parser

    assert resolve_tool_parser("plugin_hermes").name == "hermes"
    assert resolve_reasoning_parser("plugin_r1").name == "deepseek_r1"


def test_pythonic_streams_arguments_before_the_call_closes():
    stream = parser_for("pythonic").stream()
    sent = ""
    for cut in ("[get_weather(city='Par", "is, \"FR\"', days=[1,", " 2], unit=\"°\\",
                "u00b0"):
        _, deltas = stream.feed(cut)
        sent += "".join(d.arguments for d in deltas)
    assert sent == '{"city": "Paris, \\"FR\\"", "days": [1, 2], "unit": "°°'
    _, deltas = stream.feed('"), get_time(tz="UTC")]')
    assert "".join(d.arguments for d in deltas if d.index == 0) == '"}'


def test_pythonic_partial_escape_is_held_back():
    stream = parser_for("pythonic").stream()
    _, deltas = stream.feed('[f(a="x\\')
    assert "".join(d.arguments for d in deltas) == '{"a": "x'
    _, deltas = stream.feed('n")]')
    _, more = stream.finish()
    assert "".join(d.arguments for d in deltas + more) == '\\n"}'
