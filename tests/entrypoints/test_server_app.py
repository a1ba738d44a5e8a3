"""Fast in-process tests of the FastAPI app over the fake engine (no model, no sockets)."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_engine import FakeAsyncEngine
from fastapi.testclient import TestClient

from vllm_core.entrypoints.openai.api_server import build_app

KEY = "sk-unit"


def make_client(engine: FakeAsyncEngine | None = None, **args: Any) -> TestClient:
    engine = engine or FakeAsyncEngine(max_model_len=64, step_delay=0.0)
    return TestClient(build_app(engine, types.SimpleNamespace(**args)))


@pytest.fixture
def client() -> TestClient:
    with make_client() as c:
        yield c


def sse_events(text: str) -> list[Any]:
    out = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_validation_error_is_400_with_param(client):
    resp = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": "many"})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400
    assert err["param"] == "max_tokens"
    missing = client.post("/v1/chat/completions", json={"model": "fake-model"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    nested = client.post("/v1/chat/completions", json={"messages": [{"content": "x"}]})
    assert nested.status_code == 400 and nested.json()["error"]["param"] == "messages.0.role"


@pytest.mark.parametrize("body,param", [
    ({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"), ({"max_tokens": 0},
                                                                     "max_tokens"),
    ({"n": 0}, "n"), ({"top_k": -5}, "top_k"), ({"logprobs": 50}, "logprobs"),
    ({"stop_token_ids": [100000]}, "stop_token_ids"), ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"suffix": "x"}, "suffix"),
    ({"prompt": []}, "prompt"), ({"prompt": [1, 2, 999999]}, "prompt"),
])
def test_bad_sampling_values_are_400(client, body, param):
    resp = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code \
        == 200


def test_chat_specific_errors(client):
    msgs = [{"role": "user", "content": "hi"}]
    r = client.post("/v1/chat/completions", json={"messages": msgs, "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = client.post("/v1/chat/completions", json={"messages": msgs, "max_completion_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = client.post("/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": [{"type": "audio"}]}]})
    assert r.status_code == 400 and "not supported" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages.0.content.0"
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400


def test_context_overflow_message_has_counts(client):
    prompt = "x" * 60                       # 61 tokens with BOS, limit 64
    resp = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 10})
    assert resp.status_code == 400
    msg = resp.json()["error"]["message"]
    assert "maximum context length is 64 tokens" in msg
    assert "71 tokens (61 in the messages, 10 in the completion)" in msg
    chat = client.post("/v1/chat/completions",
                       json={"messages": [{"role": "user", "content": "y" * 80}]})
    assert chat.status_code == 400 and "maximum context length is 64" in chat.json()["error"][
        "message"]


def test_unknown_model_404_and_unknown_route(client):
    resp = client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert resp.status_code == 404
    assert resp.json()["error"] == {"message": "The model `nope` does not exist.",
                                    "type": "NotFoundError", "param": "model", "code": 404}
    assert client.get("/no/such/path").json()["error"]["code"] == 404


def test_unknown_fields_are_ignored(client):
    resp = client.post("/v1/completions",
                       json={"prompt": "hi", "max_tokens": 3, "some_future_field": 1})
    assert resp.status_code == 200


def test_auth_required_except_health_and_metrics():
    with make_client(api_key=KEY) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "AuthenticationError"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/tokenize", json={"prompt": "a"}).status_code == 401
        assert c.get("/health").status_code == 200
        assert c.get("/metrics").status_code == 200
    with make_client(api_key=KEY, enable_metrics_auth=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    with make_client() as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code \
            == 200


def test_cors_allowed_origins():
    with make_client(allowed_origins=["http://ok.example"]) as c:
        ok = c.options("/v1/models", headers={"Origin": "http://ok.example",
                                              "Access-Control-Request-Method": "GET"})
        assert ok.headers.get("access-control-allow-origin") == "http://ok.example"
        bad = c.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in bad.headers


def test_generation_defaults_apply_only_to_unset_fields():
    engine = FakeAsyncEngine(max_model_len=64, step_delay=0.0,
                             generation_defaults={"temperature": 0.3, "top_k": 5})
    with make_client(engine) as c:
        c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
        c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2, "temperature": 0.9})
    first, second = engine.seen_params
    assert (first.temperature, first.top_k) == (0.3, 5)
    assert (second.temperature, second.top_k) == (0.9, 5)
    assert first.output_kind == "delta"


def test_echo_stop_and_batch_indexing(client):
    r = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 3, "echo": True,
                                             "seed": 1}).json()
    assert r["choices"][0]["text"].startswith("ab")
    r = client.post("/v1/completions", json={"prompt": ["a", "bc"], "n": 2,
                                             "max_tokens": 2}).json()
    assert sorted(c["index"] for c in r["choices"]) == list(range(4))
    assert r["usage"] == {"prompt_tokens": 2 + 3, "completion_tokens": 8, "total_tokens": 13}
    r = client.post("/v1/completions", json={"prompt": [[5, 6], [7, 8, 9]],
                                             "max_tokens": 2}).json()
    assert sorted(c["index"] for c in r["choices"]) == [0, 1]
    assert r["usage"]["prompt_tokens"] == 5
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 40, "stop": [" "],
                                             "seed": 3}).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == " "
    assert " " not in choice["text"]


def test_stream_shapes_and_usage(client):
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 4, "stream": True,
                                             "n": 2, "stream_options": {"include_usage": True},
                                             "logprobs": 1})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 8
    finishes = [c["index"] for e in events[:-2] for c in e["choices"] if c["finish_reason"]]
    assert sorted(finishes) == [0, 1]
    assert all(e["object"] == "text_completion" for e in events[:-1])
    offsets = [o for e in events[:-2] for c in e["choices"] if c["index"] == 0
               for o in c["logprobs"]["text_offset"]]
    assert offsets == [0, 1, 2, 3]


def test_chat_stream_role_first(client):
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True})
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert [c["finish_reason"] for e in events[:-1] for c in e["choices"]
            if c["finish_reason"]] == ["length"]


class _FailingEngine(FakeAsyncEngine):
    async def generate(self, prompt, sampling_params, request_id, priority=0
                       ) -> AsyncIterator[Any]:
        first = True
        async for out in super().generate(prompt, sampling_params, request_id, priority):
            if not first:
                raise RuntimeError("boom in the middle")
            first = False
            yield out


def test_error_after_stream_start_is_an_sse_event():
    with make_client(_FailingEngine(max_model_len=64, step_delay=0.0)) as c:
        r = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 5, "stream": True})
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == 500
        assert "boom" in events[-2]["error"]["message"]
        bad = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 5})
        assert bad.status_code == 500 and bad.json()["error"]["type"] == "InternalServerError"
        assert c.get("/health").status_code == 200


def test_health_reflects_engine_and_drain():
    engine = FakeAsyncEngine(max_model_len=64, step_delay=0.0)
    with make_client(engine) as c:
        assert c.get("/health").status_code == 200
        engine._dead = True
        assert c.get("/health").status_code == 503
        engine._dead = False
        c.app.state.server_state.draining = True
        assert c.get("/health").status_code == 503
        refused = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "ServiceUnavailableError"


def test_tokenize_endpoints(client):
    r = client.post("/tokenize", json={"prompt": "ab", "return_token_strs": True}).json()
    assert r == {"count": 3, "max_model_len": 64, "tokens": [1, 100, 101],
                 "token_strs": ["<s>", "a", "b"]}
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "x"}]})
    assert chat.json()["count"] == len("<|user|>x\n<|assistant|>")
    assert client.post("/detokenize", json={"tokens": [100, 101]}).json() == {"prompt": "ab"}
    assert client.post("/detokenize", json={"tokens": [10**6]}).status_code == 400
    info = client.get("/tokenizer_info").json()
    assert info["vocab_size"] == 259 and info["eos_token"] == "</s>"
    assert client.get("/version").json()["version"]
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "fake-model"
    assert client.get("/v1/models/fake-model").json()["id"] == "fake-model"


def test_served_model_name_flag():
    with make_client(served_model_name="my-name") as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "my-name"
        assert c.post("/v1/completions", json={"model": "my-name", "prompt": "a",
                                               "max_tokens": 1}).json()["model"] == "my-name"
