"""The CLI (fast --help, --config YAML), the stat loggers, and ``vllm-core bench serve``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_utils import REPO

from vllm_core.engine.stats import FinishedRequestStats, IterationStats, SchedulerStats
from vllm_core.entrypoints.openai.cli_args import apply_config_file, make_serve_parser
from vllm_core.entrypoints.openai.metrics import (
    LoggingStatLogger,
    PrometheusStatLogger,
    build_1_2_5_buckets,
)

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "httpx", "prometheus_client")


def test_help_is_fast_and_light():
    code = ("import sys, time; t = time.perf_counter(); "
            "from vllm_core.entrypoints.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import json; print(json.dumps({'t': time.perf_counter() - t, "
            f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    assert result["heavy"] == []
    assert result["t"] < 1.0, result
    start = time.perf_counter()
    version = subprocess.run([sys.executable, "-m", "vllm_core.entrypoints.cli.main",
                              "--version"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "vllm-core" in version.stdout
    assert time.perf_counter() - start < 5.0   # interpreter start included; CI is noisy


def test_serve_help_lists_vllm_flags():
    out = subprocess.run([sys.executable, "-m", "vllm_core.entrypoints.cli.main", "serve",
                          "--help"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    for flag in ("--host", "--port", "--served-model-name", "--api-key", "--max-model-len",
                 "--dtype", "--max-num-seqs", "--max-num-batched-tokens",
                 "--enable-prefix-caching", "--no-enable-prefix-caching",
                 "--enable-chunked-prefill", "--gpu-memory-utilization", "--kv-cache-dtype",
                 "--tensor-parallel-size", "--generation-config", "--chat-template",
                 "--max-logprobs", "--seed", "--enforce-eager", "--disable-log-stats",
                 "--allowed-origins", "--shutdown-timeout", "--config", "--uvicorn-log-level",
                 "--enable-metrics-auth"):
        assert flag in out, flag


def test_config_file_fills_defaults_and_cli_wins(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 9001\nmax-model-len: 512\nmax_num_seqs: 4\n"
                   "enable-prefix-caching: false\nenforce-eager: true\n"
                   "allowed-origins: [\"http://a\"]\nmodel: /models/x\n")
    parser = make_serve_parser(argparse.ArgumentParser())
    args = parser.parse_args(["--config", str(cfg), "--port", "9002"])
    apply_config_file(args, parser)
    assert args.port == 9002                      # command line wins
    assert args.max_model_len == 512 and args.max_num_seqs == 4
    assert args.enable_prefix_caching is False and args.enforce_eager is True
    assert args.allowed_origins == ["http://a"] and args.model == "/models/x"
    bad = tmp_path / "bad.yaml"
    bad.write_text("no-such-flag: 1\n")
    args = parser.parse_args(["--config", str(bad)])
    with pytest.raises(ValueError, match="no-such-flag"):
        apply_config_file(args, parser)


def _samples(logger: PrometheusStatLogger) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(logger.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_names_labels_and_values():
    logger = PrometheusStatLogger()
    logger.record(SchedulerStats(), IterationStats())       # before bind: ignored
    logger.bind("m", max_model_len=1000)
    logger.record(
        SchedulerStats(num_running_reqs=2, num_waiting_reqs=1, kv_cache_usage=0.25,
                       prefix_cache_queries=32, prefix_cache_hits=16, num_preemptions=1),
        IterationStats(num_prompt_tokens=20, num_generation_tokens=3,
                       time_to_first_tokens=[0.05], inter_token_latencies=[0.01, 0.02],
                       finished_requests=[FinishedRequestStats("length", 1.2, 20, 3,
                                                               decode_time=0.4)]))
    s = _samples(logger)
    lab = (("engine", "0"), ("model_name", "m"))
    assert s[("vllm:num_requests_running", lab)] == 2
    assert s[("vllm:num_requests_waiting", lab)] == 1
    assert s[("vllm:kv_cache_usage_perc", lab)] == 0.25
    assert s[("vllm:prefix_cache_queries_total", lab)] == 32
    assert s[("vllm:prefix_cache_hits_total", lab)] == 16
    assert s[("vllm:num_preemptions_total", lab)] == 1
    assert s[("vllm:prompt_tokens_total", lab)] == 20
    assert s[("vllm:generation_tokens_total", lab)] == 3
    success = (("engine", "0"), ("finished_reason", "length"), ("model_name", "m"))
    assert s[("vllm:request_success_total", success)] == 1
    assert s[("vllm:time_to_first_token_seconds_count", lab)] == 1
    assert s[("vllm:inter_token_latency_seconds_count", lab)] == 2
    assert s[("vllm:e2e_request_latency_seconds_sum", lab)] == pytest.approx(1.2)
    assert s[("vllm:request_prompt_tokens_sum", lab)] == 20
    assert s[("vllm:request_generation_tokens_sum", lab)] == 3
    assert s[("vllm:time_per_output_token_seconds_sum", lab)] == pytest.approx(0.2)
    assert not any(name.endswith("_created") for name, _ in s)
    # a second logger has its own registry
    other = PrometheusStatLogger()
    other.bind("m", 10)
    assert _samples(other)[("vllm:prompt_tokens_total", lab)] == 0


def test_buckets():
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(1024)[-1] == 2000


def test_logging_stat_logger_only_logs_activity():
    now = [0.0]
    lines: list[str] = []

    class Log:
        def info(self, msg: str) -> None:
            lines.append(msg)

    logger = LoggingStatLogger(interval=5.0, log=Log(), clock=lambda: now[0])
    now[0] = 6.0
    logger.record(SchedulerStats(), IterationStats())           # idle: nothing
    assert lines == []
    now[0] = 8.0
    logger.record(SchedulerStats(num_running_reqs=3, kv_cache_usage=0.5,
                                 prefix_cache_queries=10, prefix_cache_hits=5),
                  IterationStats(num_prompt_tokens=100, num_generation_tokens=10))
    now[0] = 11.0
    logger.record(SchedulerStats(num_running_reqs=3, kv_cache_usage=0.5),
                  IterationStats(num_generation_tokens=10))
    assert lines == ["Avg prompt throughput: 20.0 tokens/s, Avg generation throughput: "
                     "4.0 tokens/s, Running: 3 reqs, Waiting: 0 reqs, KV cache usage: 50.0%, "
                     "Prefix cache hit rate: 50.0%"]
    now[0] = 17.0
    logger.record(SchedulerStats(), IterationStats())           # became idle: one line
    now[0] = 23.0
    logger.record(SchedulerStats(), IterationStats())           # still idle: nothing
    assert len(lines) == 2 and "Running: 0 reqs" in lines[1]


def test_bench_serve_cli(fake_server, tmp_path):
    result = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vllm_core.entrypoints.cli.main", "bench", "serve",
         "--base-url", fake_server.url, "--num-prompts", "6", "--random-input-len", "12",
         "--random-output-len", "5", "--request-rate", "50", "--seed", "1",
         "--result-file", str(result)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(result.read_text())
    assert json.loads(proc.stdout) == report
    assert report["completed"] == 6 and report["failed"] == 0
    assert report["total_output_tokens"] == 30 and report["total_input_tokens"] == 72
    for key in ("request_throughput", "output_throughput", "total_token_throughput",
                "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms",
                "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms"):
        assert report[key] > 0, key


def test_bench_chat_sharegpt_like(fake_server):
    import asyncio

    from vllm_core.benchmarks.serve import BenchConfig, run_benchmark

    cfg = BenchConfig(base_url=fake_server.url, endpoint="/v1/chat/completions",
                      dataset="sharegpt-like", num_prompts=4, max_concurrency=2,
                      request_rate=100.0, arrival="fixed")
    report = asyncio.run(run_benchmark(cfg))
    # The fake tokenizer is byte-level, so a long sharegpt-like prompt may overflow its 1024
    # context: such a request fails with the 400 context error and nothing else does.
    assert report["completed"] + report["failed"] == 4 and report["completed"] >= 2
    assert all("maximum context length" in e for e in report.get("errors", []))


def test_generate_and_chat_commands_stream(monkeypatch, capsys):
    from fake_engine import FakeAsyncEngine

    from vllm_core.entrypoints.cli import generate
    from vllm_core.entrypoints.cli.main import build_parser

    engines: list[FakeAsyncEngine] = []

    def fake_engine(args):
        engines.append(FakeAsyncEngine(step_delay=0.0))
        return engines[-1]

    monkeypatch.setattr(generate, "_make_engine", fake_engine)
    args = build_parser().parse_args(["generate", "Hello", "--max-tokens", "7",
                                      "--temperature", "0.5", "--seed", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert len(out) == 7 + 1 and out.endswith("\n")
    params = engines[-1].seen_params[-1]
    assert (params.max_tokens, params.temperature, params.output_kind) == (7, 0.5, "delta")
    assert engines[-1]._shutdown

    args = build_parser().parse_args(["chat", "Hi there", "--max-tokens", "4",
                                      "--system", "Be brief."])
    assert args.func(args) == 0
    assert len(capsys.readouterr().out) == 4 + 1
    assert engines[-1].finished and engines[-1]._shutdown
