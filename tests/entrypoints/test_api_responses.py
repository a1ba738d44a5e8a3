"""(Named test_api_* to run before test_openai_server.py, whose last test stops the shared
server.) /v1/responses (the non-stateful subset) with the openai SDK's ``client.responses.create``,
streamed and not, against the real server process (fake and real engines)."""

from __future__ import annotations

import openai
import pytest


def test_response_matches_chat_completion(client, model):
    resp = client.responses.create(model=model, input="Name a colour.", max_output_tokens=6,
                                   temperature=0, instructions="Answer in one word.")
    assert resp.object == "response" and resp.id.startswith("resp")
    assert resp.status in ("completed", "incomplete")
    assert resp.output_text
    chat = client.chat.completions.create(
        model=model, max_tokens=6, temperature=0,
        messages=[{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "Name a colour."}])
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    if resp.status == "incomplete":
        assert resp.incomplete_details.reason == "max_output_tokens"
        assert resp.usage.output_tokens == 6
    if chat.choices[0].finish_reason == "length" and model != "fake-model":
        assert resp.output_text == chat.choices[0].message.content     # greedy: same text


def test_streamed_response_events(client, model):
    stream = client.responses.create(
        model=model, max_output_tokens=5, stream=True,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}])
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas
    assert events[-1].response.output_text == deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("extra,param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
])
def test_stateful_and_tool_fields_are_400(client, model, extra, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=model, input="hi", max_output_tokens=2, **extra)
    body = exc.value.body if isinstance(exc.value.body, dict) else {}
    assert body.get("error", body)["param"] == param
