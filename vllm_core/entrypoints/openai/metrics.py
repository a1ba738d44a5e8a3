"""Stat loggers fed by the engine thread: Prometheus metrics and a periodic one-line log.

Both implement ``vllm_core.engine.stats.StatLogger``: ``record(scheduler_stats,
iteration_stats)`` is called once per engine step on the engine thread, so it must be cheap and
must not block. prometheus_client metrics are thread-safe.

Metric names and labels are vLLM's (``model_name`` and ``engine`` labels), as exposed by
prometheus_client: counters gain a ``_total`` suffix (``vllm:prompt_tokens_total``), histograms
``_bucket`` / ``_sum`` / ``_count``. Each ``PrometheusStatLogger`` owns its own
``CollectorRegistry`` (never the global one), so several servers can live in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from vllm_core.engine.stats import IterationStats, SchedulerStats, SpecDecodingStats
from vllm_core.logger import init_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = init_logger(__name__)

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
FINISH_REASONS = ("stop", "length", "abort")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """[1, 2, 5, 10, 20, 50, ...] up to and including the first value >= ``max_value``."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10 ** exponent
            buckets.append(value)
            if value >= max_value:
                return buckets
        exponent += 1


class PrometheusStatLogger:
    """Prometheus metrics in a private registry, labelled with the served model name.

    Created before the engine (so it can be passed in ``stat_loggers``) and bound to the model
    name and context length with ``bind`` once those are known; ``record`` before ``bind`` is a
    no-op (nothing can have run yet).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        import prometheus_client

        # vLLM exposes counters without the *_created series.
        prometheus_client.disable_created_metrics()
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.model_name: str | None = None
        self._bound = False
        self._lock = threading.Lock()

    def bind(self, model_name: str, max_model_len: int) -> None:
        """Create the metric families; safe to call once."""
        from prometheus_client import Counter, Gauge, Histogram

        with self._lock:
            if self._bound:
                return
            labels = {"model_name": model_name, "engine": "0"}
            names = list(labels)
            reg = self.registry

            def gauge(name: str, doc: str):
                return Gauge(name, doc, names, registry=reg,
                             multiprocess_mode="mostrecent").labels(**labels)

            def counter(name: str, doc: str):
                return Counter(name, doc, names, registry=reg).labels(**labels)

            def histogram(name: str, doc: str, buckets: list[float]):
                return Histogram(name, doc, names, buckets=buckets, registry=reg).labels(**labels)

            token_buckets = build_1_2_5_buckets(max(1, max_model_len))
            self.num_running = gauge("vllm:num_requests_running",
                                     "Number of requests in model execution batches.")
            self.num_waiting = gauge("vllm:num_requests_waiting",
                                     "Number of requests waiting to be processed.")
            self.kv_usage = gauge("vllm:kv_cache_usage_perc",
                                  "KV-cache usage. 1 means 100 percent usage.")
            lora_names = [*names, "lora_name"]
            self._lora_labels = labels
            self.lora_running = Gauge("vllm:lora_num_requests_running",
                                      "Running requests per LoRA adapter.", lora_names,
                                      registry=reg, multiprocess_mode="mostrecent")
            self.lora_waiting = Gauge("vllm:lora_num_requests_waiting",
                                      "Waiting requests per LoRA adapter.", lora_names,
                                      registry=reg, multiprocess_mode="mostrecent")
            self._lora_seen: set[str] = set()
            self.prefix_queries = counter(
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.")
            self.prefix_hits = counter("vllm:prefix_cache_hits",
                                       "Prefix cache hits, in terms of number of cached tokens.")
            self.preemptions = counter("vllm:num_preemptions",
                                       "Cumulative number of preemptions from the engine.")
            self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
            self.generation_tokens = counter("vllm:generation_tokens",
                                             "Number of generation tokens processed.")
            success = Counter("vllm:request_success", "Count of successfully processed requests.",
                              names + ["finished_reason"], registry=reg)
            self.request_success = {r: success.labels(**labels, finished_reason=r)
                                    for r in FINISH_REASONS}
            self._success_family = success
            self._labels = labels
            self.ttft = histogram("vllm:time_to_first_token_seconds",
                                  "Histogram of time to first token in seconds.", TTFT_BUCKETS)
            self.itl = histogram("vllm:inter_token_latency_seconds",
                                 "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
            self.tpot = histogram("vllm:time_per_output_token_seconds",
                                  "Histogram of time per output token in seconds.", ITL_BUCKETS)
            self.e2e = histogram("vllm:e2e_request_latency_seconds",
                                 "Histogram of e2e request latency in seconds.",
                                 REQUEST_LATENCY_BUCKETS)
            self.queue_time = histogram("vllm:request_queue_time_seconds",
                                        "Histogram of time spent in WAITING phase for request.",
                                        REQUEST_LATENCY_BUCKETS)
            self.prefill_time = histogram("vllm:request_prefill_time_seconds",
                                          "Histogram of time spent in PREFILL phase for request.",
                                          REQUEST_LATENCY_BUCKETS)
            self.decode_time = histogram("vllm:request_decode_time_seconds",
                                         "Histogram of time spent in DECODE phase for request.",
                                         REQUEST_LATENCY_BUCKETS)
            self.req_prompt_tokens = histogram("vllm:request_prompt_tokens",
                                               "Number of prefill tokens processed.",
                                               token_buckets)
            self.req_gen_tokens = histogram("vllm:request_generation_tokens",
                                            "Number of generation tokens processed.",
                                            token_buckets)
            self.moe_imbalance = gauge(
                "vllm:moe_expert_load_imbalance",
                "MoE models: max over mean of the routed tokens per expert-parallel rank in "
                "the last step (1 = balanced).")
            self.spec_drafts = counter("vllm:spec_decode_num_drafts",
                                       "Number of spec decoding drafts (verified runs).")
            self.spec_draft_tokens = counter("vllm:spec_decode_num_draft_tokens",
                                             "Number of draft tokens.")
            self.spec_accepted_tokens = counter("vllm:spec_decode_num_accepted_tokens",
                                                "Number of accepted tokens.")
            self.spec_acceptance_rate = gauge(
                "vllm:spec_decode_acceptance_rate",
                "Accepted over draft tokens since start (0 before any draft).")
            self.spec_mean_accepted_length = gauge(
                "vllm:spec_decode_mean_accepted_length",
                "Tokens emitted per verified draft since start: 1 + accepted / drafts.")
            self._spec_totals = SpecDecodingStats()
            self.model_name = model_name
            self._bound = True

    def set_gauges(self, s: SchedulerStats) -> None:
        """Set running / waiting / KV usage (also called at scrape time with the engine's
        latest snapshot, so the gauges are current even when the engine is idle)."""
        if not self._bound:
            return
        self.num_running.set(s.num_running_reqs)
        self.num_waiting.set(s.num_waiting_reqs)
        self.kv_usage.set(s.kv_cache_usage)
        self._set_lora_gauges(s)

    def _set_lora_gauges(self, s: SchedulerStats) -> None:
        """One series per loaded adapter (an unloaded one drops to 0)."""
        names = set(s.lora_running) | set(s.lora_waiting)
        for name in names | self._lora_seen:
            labels = {**self._lora_labels, "lora_name": name}
            self.lora_running.labels(**labels).set(s.lora_running.get(name, 0))
            self.lora_waiting.labels(**labels).set(s.lora_waiting.get(name, 0))
        self._lora_seen |= names

    def record(self, scheduler_stats: SchedulerStats, iteration_stats: IterationStats) -> None:
        if not self._bound:
            return
        s, it = scheduler_stats, iteration_stats
        self.set_gauges(s)
        if s.prefix_cache_queries:
            self.prefix_queries.inc(s.prefix_cache_queries)
        if s.prefix_cache_hits:
            self.prefix_hits.inc(s.prefix_cache_hits)
        if s.num_preemptions:
            self.preemptions.inc(s.num_preemptions)
        if s.spec_decoding is not None:
            self._record_spec(s.spec_decoding)
        if it.num_prompt_tokens:
            self.prompt_tokens.inc(it.num_prompt_tokens)
        if it.num_generation_tokens:
            self.generation_tokens.inc(it.num_generation_tokens)
        if it.expert_load:
            from vllm_core.model_executor.layers.fused_moe.load_stats import load_imbalance

            self.moe_imbalance.set(load_imbalance(it.expert_load))
        for ttft in it.time_to_first_tokens:
            self.ttft.observe(ttft)
        for itl in it.inter_token_latencies:
            self.itl.observe(itl)
        for fin in it.finished_requests:
            reason = fin.finish_reason or "abort"
            child = self.request_success.get(reason)
            if child is None:
                child = self._success_family.labels(**self._labels, finished_reason=reason)
                self.request_success[reason] = child
            child.inc()
            self.e2e.observe(fin.e2e_latency)
            self.queue_time.observe(fin.queued_time)
            self.prefill_time.observe(fin.prefill_time)
            self.decode_time.observe(fin.decode_time)
            self.req_prompt_tokens.observe(fin.num_prompt_tokens)
            self.req_gen_tokens.observe(fin.num_generation_tokens)
            if fin.num_generation_tokens > 1:
                self.tpot.observe(fin.decode_time / (fin.num_generation_tokens - 1))

    def _record_spec(self, spec: SpecDecodingStats) -> None:
        self.spec_drafts.inc(spec.num_drafts)
        self.spec_draft_tokens.inc(spec.num_draft_tokens)
        self.spec_accepted_tokens.inc(spec.num_accepted_tokens)
        total = self._spec_totals
        total.num_drafts += spec.num_drafts
        total.num_draft_tokens += spec.num_draft_tokens
        total.num_accepted_tokens += spec.num_accepted_tokens
        self.spec_acceptance_rate.set(total.acceptance_rate or 0.0)
        self.spec_mean_accepted_length.set(total.mean_accepted_length or 0.0)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what ``GET /metrics`` returns). In
        prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, several API
        server processes) the values of every process, summed (gauges: the most recent)."""
        from prometheus_client import CollectorRegistry, generate_latest

        from vllm_core import envs

        if envs.prometheus_multiproc_dir() is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)


class LoggingStatLogger:
    """Logs one line every ``interval`` seconds while the engine is (or just was) active.

    ``Avg prompt throughput: X tokens/s, Avg generation throughput: Y tokens/s, Running: R reqs,
    Waiting: W reqs, KV cache usage: U%, Prefix cache hit rate: H%``. Nothing is logged while
    idle, except one line when the engine becomes idle.
    """

    def __init__(self, interval: float = 5.0, log: logging.Logger | None = None,
                 clock=time.monotonic) -> None:
        self.interval = interval
        self._log = log or logger
        self._clock = clock
        self._last = clock()
        self._prompt = 0
        self._gen = 0
        self._queries = 0
        self._hits = 0
        self._last_was_idle = True
        self._latest = SchedulerStats()

    def record(self, scheduler_stats: SchedulerStats, iteration_stats: IterationStats) -> None:
        self._prompt += iteration_stats.num_prompt_tokens
        self._gen += iteration_stats.num_generation_tokens
        self._queries += scheduler_stats.prefix_cache_queries
        self._hits += scheduler_stats.prefix_cache_hits
        self._latest = scheduler_stats
        now = self._clock()
        if now - self._last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> str | None:
        """Log (and return) the line for the interval ending now, if there was activity."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._last, 1e-9)
        s = self._latest
        idle = (self._prompt == 0 and self._gen == 0 and s.num_running_reqs == 0
                and s.num_waiting_reqs == 0)
        line = None
        if not (idle and self._last_was_idle):
            hit_rate = 100.0 * self._hits / self._queries if self._queries else 0.0
            line = (f"Avg prompt throughput: {self._prompt / elapsed:.1f} tokens/s, "
                    f"Avg generation throughput: {self._gen / elapsed:.1f} tokens/s, "
                    f"Running: {s.num_running_reqs} reqs, Waiting: {s.num_waiting_reqs} reqs, "
                    f"KV cache usage: {100.0 * s.kv_cache_usage:.1f}%, "
                    f"Prefix cache hit rate: {hit_rate:.1f}%")
            self._log.info(line)
        self._last_was_idle = idle
        self._last = now
        self._prompt = self._gen = self._queries = self._hits = 0
        return line
