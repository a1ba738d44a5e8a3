"""End-to-end tests of the OpenAI-compatible server with the real ``openai`` client.

Each test runs against the ``server`` fixture (conftest.py): a real server process on loopback
started with an API key, once over the fake engine and once over the real engine with the
embedded default model. Generations are short (max_tokens 5-16). The SIGTERM test stops the
server, so it stays the last test of this module.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_utils import MAX_MODEL_LEN, ServerProcess

PROMPT = "The capital of France is"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0,
                         timeout=120)


@pytest.fixture
def model(server: ServerProcess) -> str:
    resp = httpx.get(f"{server.url}/v1/models", headers=server.headers())
    return resp.json()["data"][0]["id"]


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def gauges(server: ServerProcess) -> tuple[float, float, float]:
    s = scrape(server)
    return (metric(s, "vllm:num_requests_running"), metric(s, "vllm:num_requests_waiting"),
            metric(s, "vllm:kv_cache_usage_perc"))


def wait_idle(server: ServerProcess, timeout: float = 10.0) -> float:
    """Seconds until running, waiting and KV usage are all zero (fails after ``timeout``)."""
    start = time.monotonic()
    while True:
        if gauges(server) == (0.0, 0.0, 0.0):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"engine not idle after {timeout} s: {gauges(server)}")
        time.sleep(0.1)


def tokenize_count(server: ServerProcess, model: str, prompt: str) -> int:
    resp = httpx.post(f"{server.url}/tokenize", headers=server.headers(),
                      json={"model": model, "prompt": prompt})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["max_model_len"] == MAX_MODEL_LEN
    assert body["count"] == len(body["tokens"])
    return body["count"]


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error", body)


# ---------------------------------------------------------------- basics


def test_models_health_version(server: ServerProcess, client: openai.OpenAI, model: str):
    models = client.models.list()
    assert [m.id for m in models.data] == [model]
    assert models.data[0].model_extra["max_model_len"] == MAX_MODEL_LEN
    assert httpx.get(f"{server.url}/health").status_code == 200   # open without the key
    version = httpx.get(f"{server.url}/version", headers=server.headers())
    assert version.status_code == 200 and version.json()["version"]


def test_completion_usage_matches_tokenize(server, client, model):
    resp = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage.prompt_tokens == tokenize_count(server, model, PROMPT)
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    if choice.finish_reason == "length":
        assert resp.usage.completion_tokens == 8


def test_chat_usage_matches_tokenize(server, client, model):
    messages = [{"role": "user", "content": "Say hello."}]
    resp = client.chat.completions.create(model=model, messages=messages, max_tokens=8,
                                          temperature=0)
    assert resp.choices[0].message.role == "assistant"
    assert isinstance(resp.choices[0].message.content, str)
    tok = httpx.post(f"{server.url}/tokenize", headers=server.headers(),
                     json={"model": model, "messages": messages}).json()
    assert resp.usage.prompt_tokens == tok["count"]
    assert 1 <= resp.usage.completion_tokens <= 8


def test_tokenize_detokenize_roundtrip(server, model):
    tok = httpx.post(f"{server.url}/tokenize", headers=server.headers(),
                     json={"model": model, "prompt": "hello world", "add_special_tokens": False})
    ids = tok.json()["tokens"]
    detok = httpx.post(f"{server.url}/detokenize", headers=server.headers(),
                       json={"model": model, "tokens": ids})
    assert detok.status_code == 200
    assert detok.json() == {"prompt": "hello world"}
    info = httpx.get(f"{server.url}/tokenizer_info", headers=server.headers()).json()
    assert info["vocab_size"] > max(ids)


# ---------------------------------------------------------------- streaming


def test_completion_stream_equals_non_stream(client, model):
    kwargs = dict(model=model, prompt=PROMPT, max_tokens=12, temperature=0.9, seed=1234,
                  extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs)
    stream = client.completions.create(**kwargs, stream=True,
                                       stream_options={"include_usage": True})
    texts, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            assert c.index == 0
            texts.append(c.text)
            if c.finish_reason is not None:
                reasons.append(c.finish_reason)
    assert "".join(texts) == full.choices[0].text
    assert reasons == [full.choices[0].finish_reason] == ["length"]
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens == 12
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_stream_equals_non_stream(client, model):
    kwargs = dict(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                  max_tokens=12, temperature=0.9, seed=99, extra_body={"ignore_eos": True})
    # Warm the prefix cache first: the chat template makes this prompt longer than a KV block,
    # and a cold prefill vs a prefix-cache hit may differ numerically (the engine's concern).
    client.chat.completions.create(**{**kwargs, "max_tokens": 1})
    full = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True,
                                            stream_options={"include_usage": True,
                                                            "continuous_usage_stats": True})
    texts, reasons, roles, final_usage = [], [], [], None
    for chunk in stream:
        if not chunk.choices:
            final_usage = chunk.usage
            continue
        assert chunk.usage is not None   # continuous_usage_stats: usage on every chunk
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            texts.append(c.delta.content or "")
            if c.finish_reason is not None:
                reasons.append(c.finish_reason)
    assert roles == ["assistant"]
    assert "".join(texts) == full.choices[0].message.content
    assert reasons == ["length"]
    assert final_usage.completion_tokens == full.usage.completion_tokens == 12


def test_n3_with_seed_gives_three_choices(client, model):
    resp = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, n=3, seed=7,
                                     temperature=1.0)
    assert sorted(c.index for c in resp.choices) == [0, 1, 2]
    assert all(c.finish_reason in ("length", "stop") for c in resp.choices)
    again = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, n=3, seed=7,
                                      temperature=1.0)
    by_index = {c.index: c.text for c in resp.choices}
    assert {c.index: c.text for c in again.choices} == by_index
    chat = client.chat.completions.create(model=model, n=3, seed=7, max_tokens=6,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert sorted(c.index for c in chat.choices) == [0, 1, 2]
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, n=3, seed=7,
                                       temperature=1.0, stream=True)
    finishes: dict[int, int] = {}
    texts: dict[int, str] = {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason is not None:
                finishes[c.index] = finishes.get(c.index, 0) + 1
    assert finishes == {0: 1, 1: 1, 2: 1}
    assert texts == by_index


def test_batch_prompts_completion(client, model):
    resp = client.completions.create(model=model, prompt=["Hello", "The sky is"], max_tokens=5,
                                     temperature=0, n=2)
    assert sorted(c.index for c in resp.choices) == [0, 1, 2, 3]


# ---------------------------------------------------------------- logprobs


def test_completion_logprobs_shapes(client, model):
    resp = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, logprobs=3,
                                     temperature=0, extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    n = resp.usage.completion_tokens
    assert n == 6
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n and lp.text_offset == sorted(lp.text_offset)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0.0
        assert 3 <= len(top) <= 4 and token in top
        # greedy: the sampled token is the most likely one
        assert value == pytest.approx(max(top.values()), abs=1e-3)


def test_chat_logprobs_shapes(client, model):
    resp = client.chat.completions.create(model=model, max_tokens=6, logprobs=True,
                                          top_logprobs=2, temperature=0,
                                          messages=[{"role": "user", "content": "Hi"}])
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0.0
        assert item.bytes == list(item.token.encode("utf-8"))
        assert len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-3)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("field,value", [("temperature", -1), ("top_p", 2), ("max_tokens", 0),
                                         ("n", 0)])
def test_bad_parameters_are_400(client, model, field, value):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=PROMPT,
                                  **{"max_tokens": 5, field: value})
    err = error_of(info.value)
    assert info.value.status_code == 400
    assert err["type"] == "BadRequestError" and err["code"] == 400
    assert err["param"] == field, err
    assert field in err["message"]
    # still serving
    assert client.completions.create(model=model, prompt=PROMPT, max_tokens=2).choices


def test_wrong_type_is_400_not_422(server, model):
    resp = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers(),
                      json={"model": model, "max_tokens": "abc",
                            "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == "max_tokens" and err["type"] == "BadRequestError"
    bad_json = httpx.post(f"{server.url}/v1/completions", headers=server.headers(),
                          content=b"{not json", timeout=10)
    assert bad_json.status_code == 400 and "error" in bad_json.json()


def test_too_long_prompt_is_400_with_counts(server, client, model):
    prompt = "hello " * 1500
    n_prompt = tokenize_count(server, model, prompt)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=prompt, max_tokens=10)
    message = error_of(info.value)["message"]
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in message
    assert str(n_prompt) in message and str(n_prompt + 10) in message
    assert client.completions.create(model=model, prompt=PROMPT, max_tokens=2).choices


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    err = error_of(info.value)
    assert err["type"] == "NotFoundError" and err["code"] == 404


def test_missing_or_wrong_key_is_401(server, model):
    for key in ("wrong-key", None):
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "x", max_retries=0)
        if key is None:
            resp = httpx.get(f"{server.url}/v1/models")
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == 401
            continue
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=model, prompt=PROMPT, max_tokens=2)
    assert httpx.get(f"{server.url}/metrics").status_code == 200   # open, as in vLLM


# ---------------------------------------------------------------- lifecycle and metrics


def _long_request(model: str) -> dict:
    return {"model": model, "prompt": "Once upon a time", "max_tokens": MAX_MODEL_LEN - 32,
            "ignore_eos": True, "temperature": 0}


def test_stream_disconnect_aborts(server, model):
    wait_idle(server)
    before = scrape(server)
    with httpx.Client(timeout=60, headers=server.headers()) as c:
        with c.stream("POST", f"{server.url}/v1/completions",
                      json={**_long_request(model), "stream": True}) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()   # keep the iterator: closing it closes the connection
            seen = 0
            for line in lines:
                seen += line.startswith("data: ")
                if seen >= 2:
                    break
            assert gauges(server)[0] >= 1          # running while we read
    assert wait_idle(server, timeout=8.0) < 8.0      # aborted long before it could finish
    after = scrape(server)
    assert (metric(after, "vllm:request_success_total", finished_reason="length")
            == metric(before, "vllm:request_success_total", finished_reason="length"))


def test_non_stream_disconnect_aborts(server, model):
    wait_idle(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=_long_request(model),
                   headers=server.headers(), timeout=httpx.Timeout(10, read=2.0))
    assert wait_idle(server, timeout=8.0) < 8.0


def test_metrics_counters_move_by_known_amounts(server, client, model):
    # One step flushes the stats of requests aborted by earlier tests (an engine may report an
    # abort at its next step), so that the window below holds exactly our three requests.
    client.completions.create(model=model, prompt="flush", max_tokens=1)
    wait_idle(server)
    before = scrape(server)
    prompts = ["Hello there", "The sky is", "One two three"]   # short: no prefix-cache hits
    prompt_tokens = 0
    for p in prompts:
        resp = client.completions.create(model=model, prompt=p, max_tokens=5, temperature=0,
                                         extra_body={"ignore_eos": True})
        assert resp.usage.completion_tokens == 5
        prompt_tokens += resp.usage.prompt_tokens
    wait_idle(server)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("vllm:request_success_total", finished_reason="length") == 3
    assert delta("vllm:request_success_total") == 3
    assert delta("vllm:generation_tokens_total") == 15
    assert delta("vllm:prompt_tokens_total") == prompt_tokens
    assert delta("vllm:request_prompt_tokens_count") == 3
    assert delta("vllm:request_prompt_tokens_sum") == prompt_tokens
    assert delta("vllm:request_generation_tokens_sum") == 15
    assert delta("vllm:e2e_request_latency_seconds_count") == 3
    assert delta("vllm:time_to_first_token_seconds_count") == 3
    assert delta("vllm:inter_token_latency_seconds_count") == 12
    names = {n for n, _ in after}
    for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:num_preemptions_total", "vllm:kv_cache_usage_perc"):
        assert name in names
    assert all(dict(lab).get("model_name") == model for n, lab in after
               if n.startswith("vllm:"))


def test_64_concurrent_streams_complete(server, model):
    async def one(aclient: openai.AsyncOpenAI, i: int) -> tuple[int, str]:
        stream = await aclient.completions.create(model=model, prompt=f"Item {i}:",
                                                  max_tokens=8, temperature=0, stream=True)
        finishes, text = 0, ""
        async for chunk in stream:
            for c in chunk.choices:
                text += c.text
                finishes += c.finish_reason is not None
        return finishes, text

    async def main() -> list[tuple[int, str]]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.api_key,
                                      max_retries=0, timeout=300) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(64)))

    results = asyncio.run(main())
    assert [f for f, _ in results] == [1] * 64
    wait_idle(server)


def test_bench_serve_against_server(server, model):
    from vllm_core.benchmarks.serve import BenchConfig, run_benchmark

    cfg = BenchConfig(base_url=server.url, model=model, num_prompts=4, random_input_len=16,
                      random_output_len=8, api_key=server.api_key, max_concurrency=2)
    report = asyncio.run(run_benchmark(cfg))
    assert report["completed"] == 4 and report["failed"] == 0, report
    assert report["total_output_tokens"] == 32
    assert report["mean_ttft_ms"] > 0 and report["output_throughput"] > 0


def test_sigterm_drains_in_flight_then_exits(server: ServerProcess, model):
    """Keep last: stops the session's server."""
    with httpx.Client(timeout=120, headers=server.headers()) as c:
        # Long enough to be in flight when we probe, short enough to finish well inside the
        # drain timeout (the real engine on a busy 2-core CI box makes a few tokens/s).
        max_tokens = 30 if server.kind == "real" else 100
        body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                "ignore_eos": True, "stream": True}
        with c.stream("POST", f"{server.url}/v1/completions", json=body) as resp:
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert "choices" in json.loads(first[6:])
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = httpx.post(f"{server.url}/v1/completions", headers=server.headers(),
                                 json={"model": model, "prompt": PROMPT, "max_tokens": 2})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == 503
            assert httpx.get(f"{server.url}/health").status_code == 503
            rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    finishes = [c["finish_reason"] for line in rest[:-1]
                for c in json.loads(line[6:]).get("choices", []) if c.get("finish_reason")]
    assert finishes == ["length"]
    assert server.proc.wait(timeout=60) == 0
