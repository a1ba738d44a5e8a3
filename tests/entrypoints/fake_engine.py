"""A small stand-in for ``AsyncLLMEngine`` (same API), for fast server tests.

Byte-level tokenizer (id = byte + 3; 0 pad, 1 bos, 2 eos), a Jinja chat template, and a
"model" that emits lowercase letters and spaces chosen by a seeded RNG, one token per step,
``step_delay`` seconds apart. Seeded requests are reproducible; child ``i`` of an ``n > 1``
request uses seed ``seed + i``. It honours max_tokens, stop strings, logprobs, delta /
cumulative output, ``max_num_seqs`` (extra requests wait), and aborts a request whose consumer
goes away (the generator is cancelled or closed). Stat loggers get one record per step.

Run as a script it serves itself like ``vllm-core serve`` (used for the SIGTERM test):
``python tests/entrypoints/fake_engine.py --port 8123 [serve flags]``.
"""

from __future__ import annotations

import asyncio
import math
import random
import string
import time
from collections.abc import AsyncIterator
from typing import Any

from vllm_core.config import EngineConfig, ModelConfig, SchedulerConfig
from vllm_core.engine.stats import FinishedRequestStats, IterationStats, SchedulerStats
from vllm_core.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from vllm_core.sampling.params import SamplingParams, sampling_params_from_user

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
ALPHABET = string.ascii_lowercase + " "


class FakeTokenizer:
    chat_template = CHAT_TEMPLATE
    bos_token, eos_token, pad_token, unk_token = "<s>", "</s>", "<pad>", None
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0
    _specials = {0: "<pad>", 1: "<s>", 2: "</s>"}

    def __len__(self) -> int:
        return 259

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [1, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        data = bytes(i - 3 for i in ids if i >= 3)
        text = data.decode("utf-8", errors="replace")
        if not skip_special_tokens:
            prefix = "".join(self._specials[i] for i in ids if i < 3)
            text = prefix + text
        return text

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._specials.get(i) or bytes([i - 3]).decode("latin-1") for i in ids]

    def apply_chat_template(self, conversation: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = False,
                            continue_final_message: bool = False,
                            chat_template: str | None = None, **kwargs: Any) -> str:
        import jinja2

        template = jinja2.Environment().from_string(chat_template or self.chat_template)
        text = template.render(messages=conversation, add_generation_prompt=add_generation_prompt,
                               **kwargs)
        return self.encode(text, False) if tokenize else text


class FakeAsyncEngine:
    """Implements the AsyncLLMEngine API the server uses; no model, no torch."""

    def __init__(self, max_model_len: int = 128, max_num_seqs: int = 8,
                 step_delay: float = 0.002, stat_loggers: list[Any] | None = None,
                 served_model_name: str | None = None,
                 generation_defaults: dict[str, Any] | None = None) -> None:
        self.config = EngineConfig(
            model=ModelConfig(model="/models/fake-model", max_model_len=max_model_len,
                              served_model_name=served_model_name),
            scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_model_len=max_model_len))
        self.tokenizer = FakeTokenizer()
        self.generation_defaults = dict(generation_defaults or {})
        self.step_delay = step_delay
        self.stat_loggers = list(stat_loggers or [])
        self.running: set[str] = set()
        self.waiting: set[str] = set()
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.seen_params: list[SamplingParams] = []
        self._slots = asyncio.Semaphore(max_num_seqs)
        self._dead = False
        self._shutdown = False

    @classmethod
    def from_engine_args(cls, engine_args: Any, stat_loggers: list[Any] | None = None
                         ) -> FakeAsyncEngine:
        return cls(max_model_len=engine_args.max_model_len or 128,
                   max_num_seqs=engine_args.max_num_seqs, stat_loggers=stat_loggers,
                   served_model_name=engine_args.served_model_name)

    # ---------------------------------------------------------------- API

    def make_sampling_params(self, **user_fields: Any) -> SamplingParams:
        return sampling_params_from_user(self.generation_defaults, **user_fields)

    def is_ready(self) -> bool:
        return not self._shutdown

    @property
    def errored(self) -> bool:
        return self._dead

    async def check_health(self) -> None:
        if self._dead:
            raise RuntimeError("engine is dead")

    def get_scheduler_stats(self) -> SchedulerStats:
        cap = self.config.scheduler.max_num_seqs
        return SchedulerStats(num_running_reqs=len(self.running),
                              num_waiting_reqs=len(self.waiting),
                              kv_cache_usage=len(self.running) / cap, num_total_blocks=cap)

    async def embed(self, prompts: list[list[int]], pooling: str = "last",
                    normalize: bool = True) -> list[list[float]]:
        """A deterministic 8-dimensional vector per prompt (its last or mean token ids)."""
        out = []
        for ids in prompts:
            if not ids or any(not 0 <= t < len(self.tokenizer) for t in ids):
                raise ValueError("input contains token ids outside the vocabulary")
            basis = [ids[-1]] if pooling == "last" else ids
            vec = [sum(math.sin(t * (k + 1)) for t in basis) / len(basis) for k in range(8)]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec] if normalize else vec)
        return out

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def shutdown(self) -> None:
        self._shutdown = True

    async def generate(self, prompt: str | list[int], sampling_params: SamplingParams,
                       request_id: str, priority: int = 0) -> AsyncIterator[RequestOutput]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        params = sampling_params
        limit = self.config.model.max_model_len
        if not ids:
            raise ValueError("The prompt must not be empty")
        if any(not 0 <= t < len(self.tokenizer) for t in ids):
            raise ValueError("prompt contains token ids outside the vocabulary")
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - len(ids)
        if len(ids) + max_tokens > limit:
            raise ValueError(f"This model's maximum context length is {limit} tokens. However, "
                             f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the "
                             f"messages, {max_tokens} in the completion).")
        self.seen_params.append(params)
        arrival = time.monotonic()
        self.waiting.add(request_id)
        acquired = False
        try:
            await self._slots.acquire()
            acquired = True
            self.waiting.discard(request_id)
            self.running.add(request_id)
            async for out in self._run(ids, params, request_id, max_tokens, arrival):
                yield out
            self.finished.append(request_id)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.waiting.discard(request_id)
            self.running.discard(request_id)
            if acquired:
                self._slots.release()
            self._record(IterationStats())

    async def _run(self, ids: list[int], params: SamplingParams, request_id: str,
                   max_tokens: int, arrival: float) -> AsyncIterator[RequestOutput]:
        base_seed = params.seed if params.seed is not None else random.randrange(1 << 30)
        rngs = [random.Random(base_seed + i) for i in range(params.n)]
        texts = [""] * params.n
        sent = [0] * params.n  # characters already sent (delta mode)
        tokens: list[list[int]] = [[] for _ in range(params.n)]
        lps: list[list[dict[int, Logprob]]] = [[] for _ in range(params.n)]
        reasons: list[str | None] = [None] * params.n
        stops: list[str | None] = [None] * params.n
        first_token = None
        self._record(IterationStats(num_prompt_tokens=len(ids)))
        for step in range(max_tokens):
            await asyncio.sleep(self.step_delay)
            for i in range(params.n):
                if reasons[i] is not None:
                    continue
                ch = rngs[i].choice(ALPHABET)
                tok = ord(ch) + 3
                tokens[i].append(tok)
                texts[i] += ch
                if params.logprobs is not None:
                    lps[i].append(self._logprobs(tok, params.logprobs))
                for s in params.stop:
                    if s in texts[i]:
                        cut = texts[i].index(s)
                        texts[i] = texts[i][:cut + (len(s) if params.include_stop_str_in_output
                                                    else 0)]
                        reasons[i], stops[i] = "stop", s
                        break
                if reasons[i] is None and step + 1 >= max_tokens:
                    reasons[i] = "length"
            now = time.monotonic()
            first_token = first_token or now
            finished = all(r is not None for r in reasons)
            outputs = []
            for i in range(params.n):
                if params.output_kind == "delta":
                    n_new = 1 if len(tokens[i]) == step + 1 else 0
                    text = texts[i][sent[i]:]
                    sent[i] = len(texts[i])
                    outputs.append(CompletionOutput(
                        index=i, text=text, token_ids=tokens[i][-n_new:] if n_new else [],
                        cumulative_logprob=-0.5 * len(tokens[i]),
                        logprobs=lps[i][-n_new:] if (n_new and params.logprobs is not None)
                        else (None if params.logprobs is None else []),
                        finish_reason=reasons[i] if n_new else None,
                        stop_reason=stops[i] if n_new else None))
                else:
                    outputs.append(CompletionOutput(
                        index=i, text=texts[i], token_ids=list(tokens[i]),
                        cumulative_logprob=-0.5 * len(tokens[i]),
                        logprobs=list(lps[i]) if params.logprobs is not None else None,
                        finish_reason=reasons[i], stop_reason=stops[i]))
            stats = IterationStats(num_generation_tokens=sum(
                1 for i in range(params.n) if len(tokens[i]) == step + 1))
            if step == 0:
                stats.time_to_first_tokens.append(now - arrival)
            else:
                stats.inter_token_latencies.append(self.step_delay)
            if finished:
                gen = sum(len(t) for t in tokens)
                stats.finished_requests.append(FinishedRequestStats(
                    finish_reason=reasons[0] or "stop", e2e_latency=now - arrival,
                    num_prompt_tokens=len(ids), num_generation_tokens=gen))
            if finished:
                self.running.discard(request_id)
            self._record(stats)
            prompt_lps = None
            if step == 0 and params.prompt_logprobs is not None:
                prompt_lps = [None] + [self._logprobs(t, params.prompt_logprobs) for t in ids[1:]]
            yield RequestOutput(request_id=request_id, prompt=None, prompt_token_ids=ids,
                                prompt_logprobs=prompt_lps, outputs=outputs, finished=finished,
                                metrics=RequestMetrics(arrival_time=arrival,
                                                       first_token_time=first_token))
            if finished:
                return

    @staticmethod
    def _logprobs(token: int, k: int) -> dict[int, Logprob]:
        """Sampled token at rank 1 plus k-1 others (k >= 1); only the sampled when k == 0."""
        out = {token: Logprob(logprob=-0.25, rank=1)}
        other = 3 + ord("a")
        rank = 2
        while len(out) < max(k, 1):
            if other != token:
                out[other] = Logprob(logprob=-0.25 - math.log(rank), rank=rank)
                rank += 1
            other += 1
        return out

    def _record(self, iteration: IterationStats) -> None:
        stats = self.get_scheduler_stats()
        for logger in self.stat_loggers:
            logger.record(stats, iteration)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from vllm_core.entrypoints.openai.api_server import run_server
    from vllm_core.entrypoints.openai.cli_args import make_serve_parser

    parser = make_serve_parser(argparse.ArgumentParser())
    parser.add_argument("--step-delay", type=float, default=0.002)
    args = parser.parse_args(argv)

    def factory(engine_args: Any, stat_loggers: list[Any] | None = None) -> FakeAsyncEngine:
        engine = FakeAsyncEngine.from_engine_args(engine_args, stat_loggers)
        engine.step_delay = args.step_delay
        return engine

    return run_server(args, engine_factory=factory)


if __name__ == "__main__":
    raise SystemExit(main())
