"""Serving benchmark: drive an OpenAI-compatible server with streamed requests and measure
throughput and latency (TTFT, TPOT, ITL, end-to-end), like ``vllm bench serve``.

Requests leave at ``request_rate`` per second (``inf``: all at once) with Poisson
(gamma-distributed gaps; ``burstiness`` 1 = exponential) or fixed spacing, capped by
``max_concurrency``. Each is streamed (SSE); the time of every content chunk is recorded.
Output tokens are the server's ``usage.completion_tokens`` (asked for with
``stream_options.include_usage``), else the number of content chunks.

Definitions (per request; the report gives mean / median / p99 / std in ms):
TTFT = first content chunk - send; ITL = gaps between content chunks; TPOT = (latency - TTFT)
/ (output_tokens - 1); E2EL = last byte - send.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vllm_core.benchmarks.datasets import SampleRequest, make_requests


@dataclass(slots=True)
class BenchConfig:
    base_url: str
    model: str | None = None
    endpoint: str = "/v1/completions"
    num_prompts: int = 100
    request_rate: float = float("inf")
    burstiness: float = 1.0
    arrival: str = "poisson"                 # poisson | fixed
    max_concurrency: int | None = None
    dataset: str = "random"                  # random | sharegpt-like
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    seed: int = 0
    api_key: str | None = None
    ignore_eos: bool = True
    tokenizer: str | None = None
    timeout: float = 600.0

    def validate(self) -> None:
        if self.endpoint not in ("/v1/completions", "/v1/chat/completions"):
            raise ValueError(f"endpoint must be /v1/completions or /v1/chat/completions, "
                             f"got {self.endpoint!r}")
        if self.arrival not in ("poisson", "fixed"):
            raise ValueError(f"arrival must be poisson or fixed, got {self.arrival!r}")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0 (or inf), got {self.request_rate}")
        if self.burstiness <= 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")


@dataclass(slots=True)
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    text: str = ""
    error: str = ""


def _payload(cfg: BenchConfig, model: str, req: SampleRequest, with_extras: bool
             ) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": req.output_len, "stream": True,
                            "stream_options": {"include_usage": True}, "temperature": 0.0}
    if cfg.endpoint == "/v1/chat/completions":
        prompt = req.prompt if isinstance(req.prompt, str) else " ".join(map(str, req.prompt))
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = req.prompt
    if with_extras and cfg.ignore_eos:
        body["ignore_eos"] = True
    return body


async def _one_request(client: Any, cfg: BenchConfig, model: str, req: SampleRequest,
                       extras: dict[str, bool]) -> RequestResult:
    result = RequestResult(prompt_len=req.prompt_len)
    start = time.perf_counter()
    last = start
    chunks = 0
    usage_tokens = None
    try:
        body = _payload(cfg, model, req, extras["ignore_eos"])
        async with client.stream("POST", cfg.endpoint, json=body) as resp:
            if resp.status_code == 400 and extras["ignore_eos"] and "ignore_eos" in body:
                # A server that refuses the extra field: retry once without it, remember.
                await resp.aread()
                extras["ignore_eos"] = False
                return await _one_request(client, cfg, model, req, extras)
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = str(event["error"].get("message"))
                    return result
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens")
                for choice in event.get("choices", []):
                    piece = (choice.get("text") if "text" in choice
                             else (choice.get("delta") or {}).get("content"))
                    if not piece:
                        continue
                    now = time.perf_counter()
                    if chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    chunks += 1
                    result.text += piece
        result.latency = time.perf_counter() - start
        result.output_tokens = usage_tokens if usage_tokens is not None else chunks
        result.success = chunks > 0 or result.output_tokens > 0
        if not result.success:
            result.error = "no output"
    except Exception as e:  # network errors count as failed requests
        result.error = f"{type(e).__name__}: {e}"
    return result


def _arrival_gaps(cfg: BenchConfig, n: int, rng: random.Random) -> list[float]:
    if cfg.request_rate == float("inf"):
        return [0.0] * n
    if cfg.arrival == "fixed":
        return [1.0 / cfg.request_rate] * n
    theta = 1.0 / (cfg.request_rate * cfg.burstiness)
    return [rng.gammavariate(cfg.burstiness, theta) for _ in range(n)]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0, "std": 0.0}
    ordered = sorted(values)
    k = (len(ordered) - 1) * 0.99
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    p99 = ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
    return {"mean": statistics.fmean(values) * 1000, "median": statistics.median(values) * 1000,
            "p99": p99 * 1000, "std": (statistics.pstdev(values) * 1000)}


def summarize(cfg: BenchConfig, results: list[RequestResult], duration: float
              ) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    report: dict[str, Any] = {
        "backend": "openai", "base_url": cfg.base_url, "endpoint": cfg.endpoint,
        "model": cfg.model, "dataset": cfg.dataset, "num_prompts": cfg.num_prompts,
        "request_rate": "inf" if cfg.request_rate == float("inf") else cfg.request_rate,
        "burstiness": cfg.burstiness, "max_concurrency": cfg.max_concurrency,
        "duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": total_out / duration if duration > 0 else 0.0,
        "total_token_throughput": (total_in + total_out) / duration if duration > 0 else 0.0,
    }
    for name, values in (("ttft", [r.ttft for r in ok]), ("tpot", tpots),
                         ("itl", [x for r in ok for x in r.itl]),
                         ("e2el", [r.latency for r in ok])):
        for stat, value in _percentiles(values).items():
            report[f"{stat}_{name}_ms"] = value
    errors = [r.error for r in results if not r.success]
    if errors:
        report["errors"] = errors[:10]
    return report


async def _resolve_model(client: Any, cfg: BenchConfig) -> str:
    if cfg.model:
        return cfg.model
    resp = await client.get("/v1/models")
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


async def _vocab_size(client: Any) -> int:
    try:
        resp = await client.get("/tokenizer_info")
        if resp.status_code == 200 and resp.json().get("vocab_size"):
            return int(resp.json()["vocab_size"])
    except Exception:
        pass
    return 32000


async def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and return the report (see the module docstring)."""
    import httpx

    cfg.validate()
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=cfg.base_url.rstrip("/"), headers=headers,
                                 timeout=cfg.timeout, limits=limits) as client:
        model = await _resolve_model(client, cfg)
        cfg.model = model
        tokenizer = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
        vocab = len(tokenizer) if tokenizer is not None else await _vocab_size(client)
        requests = make_requests(cfg.dataset, cfg.num_prompts, cfg.random_input_len,
                                 cfg.random_output_len, cfg.random_range_ratio, cfg.seed,
                                 tokenizer, vocab, chat=cfg.endpoint == "/v1/chat/completions")
        rng = random.Random(cfg.seed)
        gaps = _arrival_gaps(cfg, len(requests), rng)
        sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        extras = {"ignore_eos": cfg.ignore_eos}

        async def limited(req: SampleRequest) -> RequestResult:
            if sem is None:
                return await _one_request(client, cfg, model, req, extras)
            async with sem:
                return await _one_request(client, cfg, model, req, extras)

        start = time.perf_counter()
        tasks = []
        for req, gap in zip(requests, gaps, strict=True):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(limited(req)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(cfg, list(results), duration)


def config_dict(cfg: BenchConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out.pop("api_key", None)
    return out
