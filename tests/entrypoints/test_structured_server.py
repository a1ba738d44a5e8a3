"""Structured outputs and tool calling through a real server with the real default model,
driven by the openai SDK and langchain-openai (streamed and not); request errors over the fake
engine (they are answered before any generation)."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from server_utils import API_KEY, start_server

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    srv = start_server("real", tmp_path_factory.mktemp("srv-structured"),
                       extra=["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(real_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{real_server.url}/v1", api_key=API_KEY, timeout=600)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int = Field(ge=0, le=50_000_000)


def test_openai_parse_returns_the_pydantic_object(client, model):
    r = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City, max_tokens=120, temperature=0)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, City) and r.choices[0].finish_reason == "stop"


def test_json_object_regex_choice_and_completions(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Give me a JSON object."}],
        response_format={"type": "json_object"}, max_tokens=60, temperature=0)
    text = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:                                 # cut by max_tokens: still an object being written
        assert r.choices[0].finish_reason == "length" and text.lstrip().startswith("{")
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Pick a color."}], n=3,
        temperature=1.0, seed=3, max_tokens=10,
        extra_body={"guided_choice": ["red", "green", "blue"]})
    assert all(c.message.content in ("red", "green", "blue") for c in r.choices)
    r = client.completions.create(model=model, prompt="The order code is", max_tokens=20,
                                  temperature=1.0, seed=5,
                                  extra_body={"structured_outputs": {"regex": r"[A-Z]{3}-\d{3}"}})
    assert re.fullmatch(r"[A-Z]{3}-\d{3}", r.choices[0].text)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.completions.create(model=model, prompt="Answer in JSON:", max_tokens=30,
                                  temperature=0, extra_body={"guided_json": schema})
    jsonschema.validate(json.loads(r.choices[0].text), schema)


def test_streamed_json_schema(client, model):
    schema = City.model_json_schema()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe Rome as JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": schema, "strict": True}},
        max_tokens=120, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    City.model_validate_json(text)


def test_invalid_schema_and_grammar_are_400_naming_the_field(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=5, response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
                    "a": {"type": "no-such-type"}}}}})
    assert e.value.body["param"] == "response_format"
    assert "not a valid JSON schema" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=5,
                                       extra_body={"structured_outputs": {"regex": "(a"}})
    assert e.value.body["param"] == "structured_outputs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=5,
                                       extra_body={"guided_json": {"type": "array",
                                                                   "uniqueItems": True}})
    assert e.value.body["param"] == "guided_json"
    assert "xgrammar" in e.value.body["message"] and "guidance" in e.value.body["message"]


def _round_trip(client, model, *, stream: bool, tool_choice) -> None:
    kwargs = dict(model=model, messages=QUESTION, tools=[WEATHER_TOOL],
                  tool_choice=tool_choice, max_tokens=60, temperature=0)
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": None, "args": ""})
                entry["id"] = d.id or entry["id"]
                if d.function and d.function.name:
                    entry["name"] = d.function.name
                if d.function and d.function.arguments:
                    entry["args"] += d.function.arguments
        assert calls and finish in ("tool_calls", "stop")
        call_id, name, args = calls[0]["id"], calls[0]["name"], calls[0]["args"]
    else:
        r = client.chat.completions.create(**kwargs)
        message = r.choices[0].message
        assert message.tool_calls and r.choices[0].finish_reason in ("tool_calls", "stop")
        call = message.tool_calls[0]
        call_id, name, args = call.id, call.function.name, call.function.arguments
    assert name == "get_weather" and call_id
    jsonschema.validate(json.loads(args), WEATHER_TOOL["function"]["parameters"])
    messages = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 22 degrees"}]
    answer = client.chat.completions.create(model=model, messages=messages,
                                            tools=[WEATHER_TOOL], tool_choice="none",
                                            max_tokens=20, temperature=0)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_tool_round_trip_required(client, model):
    _round_trip(client, model, stream=False, tool_choice="required")


def test_tool_round_trip_required_streamed(client, model):
    _round_trip(client, model, stream=True, tool_choice="required")


def test_tool_round_trip_named(client, model):
    _round_trip(client, model, stream=False,
                tool_choice={"type": "function", "function": {"name": "get_weather"}})


def test_tool_round_trip_named_streamed(client, model):
    _round_trip(client, model, stream=True,
                tool_choice={"type": "function", "function": {"name": "get_weather"}})


@pytest.mark.parametrize("stream", [False, True])
def test_langchain_bind_tools_round_trip(real_server, model, stream):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        return f"Sunny in {city}"

    llm = ChatOpenAI(base_url=f"{real_server.url}/v1", api_key=API_KEY, model=model,
                     temperature=0, max_tokens=60, timeout=600)
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    messages = [HumanMessage("What is the weather in Paris?")]
    if stream:
        ai = None
        for chunk in bound.stream(messages):
            ai = chunk if ai is None else ai + chunk
    else:
        ai = bound.invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    call = ai.tool_calls[0]
    assert isinstance(call["args"].get("city"), str)
    messages += [ai, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.invoke(messages)
    assert isinstance(final.content, str) and final.content


def test_request_errors(fake_server):
    url = f"{fake_server.url}/v1/chat/completions"
    base = {"messages": QUESTION, "max_tokens": 5}
    cases = [
        ({"tools": [WEATHER_TOOL], "tool_choice": "auto"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function",
                                                   "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required",
          "response_format": {"type": "json_object"}}, "response_format"),
    ]
    for extra, param in cases:
        r = httpx.post(url, json={**base, **extra}, timeout=60)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param, (extra, r.text)
