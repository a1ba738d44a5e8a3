"""The chat handler's answer assembly for tool_choice "auto" and reasoning parsers, on fixed
model outputs: the non-streamed message and the streamed deltas agree (reasoning split first,
then the tool parser on the content), finish_reason becomes "tool_calls"."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from vllm_core.entrypoints.openai.protocol import ChatCompletionRequest
from vllm_core.entrypoints.openai.serving_chat import ChoiceSplitter, OpenAIServingChat
from vllm_core.entrypoints.openai.serving_common import ChoiceState, ServingContext
from vllm_core.entrypoints.openai.tool_calling import plan_tools
from vllm_core.entrypoints.openai.tool_parsers import resolve_tool_parser
from vllm_core.reasoning import resolve_reasoning_parser

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
OUTPUT = ('<think>The user wants weather; call the tool.</think>Checking.<tool_call>\n'
          '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


def make_ctx(reasoning: str | None) -> ServingContext:
    return ServingContext(
        engine=SimpleNamespace(tokenizer=None), served_model_names=["m"], max_model_len=512,
        vocab_size=100, tool_parser=resolve_tool_parser("hermes"), enable_auto_tool_choice=True,
        reasoning_parser=resolve_reasoning_parser(reasoning) if reasoning else None)


def auto_plan(ctx: ServingContext):
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=[TOOL])
    return plan_tools(req, ctx.tool_parser, ctx.enable_auto_tool_choice, None)


def test_auto_is_the_default_with_tools_when_enabled():
    assert auto_plan(make_ctx(None)).mode == "auto"


@pytest.mark.parametrize("reasoning", ["deepseek_r1", "qwen3"])
def test_message_and_stream_agree(reasoning):
    ctx = make_ctx(reasoning)
    plan = auto_plan(ctx)
    message, finish = OpenAIServingChat(ctx)._message(
        ChoiceState(text=OUTPUT, finish_reason="stop"), plan)
    assert message.reasoning_content == "The user wants weather; call the tool."
    assert message.content == "Checking."
    assert [c["function"]["name"] for c in message.tool_calls] == ["get_weather"]
    assert json.loads(message.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert finish == "tool_calls"

    for size in (1, 4, 9):
        splitter = ChoiceSplitter.create(ctx, auto_plan(ctx))
        reasoning_text = content = args = ""
        names = []
        pieces = [OUTPUT[i:i + size] for i in range(0, len(OUTPUT), size)]
        for k, piece in enumerate(pieces):
            delta = splitter.feed(piece, final=k == len(pieces) - 1)
            if delta is None:
                continue
            reasoning_text += delta.reasoning_content or ""
            content += delta.content or ""
            for call in delta.tool_calls or []:
                if "name" in call["function"]:
                    names.append(call["function"]["name"])
                args += call["function"].get("arguments", "")
        assert reasoning_text == message.reasoning_content
        assert content == message.content
        assert names == ["get_weather"] and json.loads(args) == {"city": "Paris"}
        assert splitter.tools_called


def test_plain_answer_without_calls_keeps_finish_reason():
    ctx = make_ctx(None)
    message, finish = OpenAIServingChat(ctx)._message(
        ChoiceState(text="It is sunny.", finish_reason="stop"), auto_plan(ctx))
    assert message.content == "It is sunny." and message.tool_calls == [] and finish == "stop"
