"""Issue 13's HTTP bugs, against a real server process (``server`` fixture: the fake engine and
the real engine with the default model) with the real ``openai`` client where a client can send
the request, raw HTTP where it cannot (lone surrogates, NaN literals, oversized bodies).

Every error is a 400 / 413 in OpenAI's shape naming the field, never a 500.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from server_utils import ServerProcess

PROMPT = "The capital of France is"


def post_raw(server: ServerProcess, path: str, body: str | bytes,
             timeout: float = 120) -> httpx.Response:
    headers = {**server.headers(), "content-type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=timeout)


def error_of(resp: httpx.Response) -> dict:
    assert resp.headers["content-type"].startswith("application/json"), resp.text[:200]
    return resp.json()["error"]


def api_error(exc: openai.APIStatusError) -> dict:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error", body)


# ---------------------------------------------------------------- 1. lone surrogates


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "Hi \ud800 there", "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "bad \udc00"], "max_tokens": 2}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x\ud800"}],
                              "max_tokens": 2}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "\udbff"}]}], "max_tokens": 2}, "messages.0.content.0.text"),
    ("/tokenize", {"prompt": "\ud800"}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": "\ud800"}]}, None),
])
def test_lone_surrogate_is_400(server, model, path, body, param):
    resp = post_raw(server, path, json.dumps({"model": model, **body}))   # ASCII: \ud800 escaped
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert err["type"] == "BadRequestError"
    if param is not None:
        assert err["param"] == param, err


# ---------------------------------------------------------------- 2. NaN / Infinity


@pytest.mark.parametrize("field,literal", [
    ("temperature", "NaN"), ("temperature", "Infinity"), ("top_p", "NaN"),
    ("presence_penalty", "-Infinity"), ("frequency_penalty", "NaN"), ("min_p", "NaN"),
    ("repetition_penalty", "Infinity"),
])
def test_non_finite_floats_are_400(server, model, field, literal):
    body = f'{{"model": {json.dumps(model)}, "prompt": "hi", "max_tokens": 2, ' \
           f'"{field}": {literal}}}'
    resp = post_raw(server, "/v1/completions", body)
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["param"] == field


def test_non_finite_logit_bias_is_400(server, model):
    body = f'{{"model": {json.dumps(model)}, "prompt": "hi", "logit_bias": {{"5": NaN}}}}'
    resp = post_raw(server, "/v1/completions", body)
    assert resp.status_code == 400, resp.text


# ---------------------------------------------------------------- 3. body size, /health


def test_oversized_body_is_413(server):
    resp = post_raw(server, "/v1/completions", b'{"prompt": "' + b"a" * (17 << 20) + b'"}')
    assert resp.status_code == 413
    assert error_of(resp)["type"] == "RequestTooLargeError"


def test_health_stays_responsive_while_a_huge_prompt_is_tokenized(server, model):
    """A prompt of about a megabyte is tokenized off the event loop: /health keeps answering
    fast meanwhile (it stalled for the whole tokenization before)."""
    prompt = "hello world, this is a test. " * 40_000          # 1.2 MB
    result: dict = {}

    def send():
        result["resp"] = httpx.post(f"{server.url}/tokenize", headers=server.headers(),
                                    json={"model": model, "prompt": prompt}, timeout=300)

    thread = threading.Thread(target=send)
    thread.start()
    worst = 0.0
    polls = 0
    while thread.is_alive():
        t0 = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        worst = max(worst, time.monotonic() - t0)
        polls += 1
        time.sleep(0.05)
    thread.join()
    assert result["resp"].status_code == 200
    assert result["resp"].json()["count"] > 100_000
    assert worst < 1.0, f"/health took {worst:.2f} s while tokenizing ({polls} polls)"


# ---------------------------------------------------------------- 4. echoed values


def test_validation_error_does_not_echo_huge_values(server, model):
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": "x" * 2_000_000})
    resp = post_raw(server, "/v1/completions", body)
    assert resp.status_code == 400
    assert len(resp.content) < 2000, len(resp.content)
    assert "2000000 characters" in error_of(resp)["message"]


# ---------------------------------------------------------------- 5. n is capped


def test_n_above_the_cap_is_400(client, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=PROMPT, n=129, max_tokens=1)
    assert api_error(exc.value)["param"] == "n"


# ---------------------------------------------------------------- 7. silent no-ops


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tools_without_tool_choice_is_400(client, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=USER, tools=TOOLS, max_tokens=4)
    assert api_error(exc.value)["param"] == "tools"


def test_tools_with_tool_choice_none_runs(client, model):
    resp = client.chat.completions.create(model=model, messages=USER, tools=TOOLS,
                                          tool_choice="none", max_tokens=3)
    assert resp.choices[0].message.content is not None


@pytest.mark.parametrize("extra,param", [
    ({"priority": 5}, "priority"),      # guided_* work since structured outputs (issue 12)
])
def test_ignored_vllm_extras_are_400(client, model, extra, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=2, extra_body=extra)
    assert api_error(exc.value)["param"] == param
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=USER, max_tokens=2,
                                       extra_body=extra)
    assert api_error(exc.value)["param"] == param


def test_best_of_above_n_is_400_and_equal_to_n_runs(client, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=2, best_of=3)
    assert api_error(exc.value)["param"] == "best_of"
    resp = client.completions.create(model=model, prompt=PROMPT, max_tokens=2, n=2, best_of=2,
                                     seed=1)
    assert len(resp.choices) == 2


# ---------------------------------------------------------------- 8. prompt_logprobs


def _check_prompt_logprobs(entries: list, num_prompt: int) -> None:
    assert len(entries) == num_prompt
    assert entries[0] is None
    for entry in entries[1:]:
        assert entry and all(isinstance(v["logprob"], float) and v["logprob"] <= 0
                             for v in entry.values())


def test_prompt_logprobs_returned_by_completions(client, model):
    resp = client.completions.create(model=model, prompt=PROMPT, max_tokens=2, temperature=0,
                                     extra_body={"prompt_logprobs": 1})
    _check_prompt_logprobs(resp.choices[0].model_extra["prompt_logprobs"],
                           resp.usage.prompt_tokens)


def test_prompt_logprobs_returned_by_chat(client, model):
    resp = client.chat.completions.create(model=model, messages=USER, max_tokens=2,
                                          temperature=0, extra_body={"prompt_logprobs": 0})
    _check_prompt_logprobs(resp.model_extra["prompt_logprobs"], resp.usage.prompt_tokens)


def test_prompt_logprobs_with_stream_is_400(client, model):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt=PROMPT, max_tokens=2, stream=True,
                                  extra_body={"prompt_logprobs": 1})


# ---------------------------------------------------------------- 11. OpenAPI document


def test_openapi_document_matches_the_server(server, model):
    doc = httpx.get(f"{server.url}/openapi.json", headers=server.headers()).json()
    paths = doc["paths"]
    assert "422" not in json.dumps({p: {m: list(op["responses"]) for m, op in ops.items()}
                                    for p, ops in paths.items()})
    assert "400" in paths["/v1/completions"]["post"]["responses"]
    assert "404" in paths["/v1/models/{model}"]["get"]["responses"]
    assert "application/json" in paths["/health"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    health = httpx.get(f"{server.url}/health")
    assert health.headers["content-type"] == "application/json"
    assert health.json() == {"status": "ok"}
    missing = httpx.get(f"{server.url}/v1/models/no-such-model", headers=server.headers())
    assert missing.status_code == 404
    schemas = doc["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["properties"]["messages"]["minItems"] == 1
    for body in ({"model": model, "messages": []}, {"model": model, "prompt": ""},
                 {"model": model, "prompt": []}, {"model": model, "prompt": [[]]}):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        assert post_raw(server, path, json.dumps(body)).status_code == 400


# ---------------------------------------------------------------- 12. echo, max_tokens=0


def test_echo_with_max_tokens_zero_scores_the_prompt(client, model):
    resp = client.completions.create(model=model, prompt=PROMPT, echo=True, max_tokens=0,
                                     logprobs=1)
    choice = resp.choices[0]
    assert choice.text == PROMPT
    assert resp.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == resp.usage.prompt_tokens
    assert lp.token_logprobs[0] is None
    assert all(x is not None for x in lp.token_logprobs[1:]) or len(lp.tokens) == 1


def test_echo_with_max_tokens_zero_streams_the_prompt_only(client, model):
    chunks = list(client.completions.create(model=model, prompt=PROMPT, echo=True,
                                            max_tokens=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == PROMPT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_max_tokens_zero_without_echo_is_400(client, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=0)
    assert api_error(exc.value)["param"] == "max_tokens"


# ---------------------------------------------------------------- concurrency


def _metrics(server: ServerProcess) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def test_300_concurrent_streams_lose_nothing(server, model):
    """300 streams at once (more than max_num_seqs): every one ends with a finish_reason and
    [DONE], the success counter moves by exactly 300, and the gauges return to zero."""
    import asyncio

    before = _metrics(server).get("vllm:request_success_total", 0.0)

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, bool]:
        body = {"model": model, "prompt": f"Item {i}:", "max_tokens": 2, "stream": True,
                "ignore_eos": True}
        finishes, done = 0, False
        async with client.stream("POST", f"{server.url}/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    finishes += sum(c.get("finish_reason") is not None
                                    for c in json.loads(line[6:]).get("choices", []))
        return finishes, done

    async def main() -> list[tuple[int, bool]]:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(headers=server.headers(), timeout=600,
                                     limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(300)))

    results = asyncio.run(main())
    assert results == [(1, True)] * 300
    deadline = time.monotonic() + 30
    while True:
        m = _metrics(server)
        idle = (m.get("vllm:num_requests_running", 0), m.get("vllm:num_requests_waiting", 0),
                m.get("vllm:kv_cache_usage_perc", 0))
        if idle == (0, 0, 0):
            break
        assert time.monotonic() < deadline, f"not idle: {idle}"
        time.sleep(0.2)
    assert m["vllm:request_success_total"] - before == 300
