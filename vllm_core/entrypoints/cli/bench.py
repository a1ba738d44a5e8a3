"""``vllm-core bench serve``: the serving benchmark against any OpenAI-compatible server.

Import-light: httpx and the benchmark module are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _rate(value: str) -> float:
    rate = float(value)
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"request rate must be > 0 or inf, got {value!r}")
    return rate


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (serve)")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    s = sub.add_parser("serve", help="load an OpenAI-compatible server and report latency "
                                     "and throughput as JSON")
    s.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000 "
                                                    "(default: http://HOST:PORT)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model", default=None, help="default: the server's first model")
    s.add_argument("--endpoint", default="/v1/completions",
                   choices=["/v1/completions", "/v1/chat/completions"])
    s.add_argument("--num-prompts", type=int, default=100)
    s.add_argument("--request-rate", type=_rate, default=float("inf"),
                   help="requests per second, or inf (all at once)")
    s.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of the arrival gaps (1: Poisson)")
    s.add_argument("--arrival", default="poisson", choices=["poisson", "fixed"])
    s.add_argument("--max-concurrency", type=int, default=None)
    s.add_argument("--dataset", "--dataset-name", dest="dataset", default="random",
                   choices=["random", "sharegpt-like"])
    s.add_argument("--random-input-len", type=int, default=1024)
    s.add_argument("--random-output-len", type=int, default=128)
    s.add_argument("--random-range-ratio", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--api-key", default=None, help="default: VLLM_API_KEY")
    s.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="do not send ignore_eos (outputs may end early)")
    s.add_argument("--tokenizer", default=None,
                   help="HF tokenizer to build exact-length text prompts (optional)")
    s.add_argument("--result-file", default=None, help="also write the JSON report here")
    s.set_defaults(func=run_bench_serve)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])


def run_bench_serve(args: argparse.Namespace) -> int:
    import asyncio

    from vllm_core import envs
    from vllm_core.benchmarks.serve import BenchConfig, config_dict, run_benchmark

    cfg = BenchConfig(
        base_url=args.base_url or f"http://{args.host}:{args.port}", model=args.model,
        endpoint=args.endpoint, num_prompts=args.num_prompts, request_rate=args.request_rate,
        burstiness=args.burstiness, arrival=args.arrival, max_concurrency=args.max_concurrency,
        dataset=args.dataset, random_input_len=args.random_input_len,
        random_output_len=args.random_output_len, random_range_ratio=args.random_range_ratio,
        seed=args.seed, api_key=args.api_key or envs.api_key(), ignore_eos=args.ignore_eos,
        tokenizer=args.tokenizer)
    report = asyncio.run(run_benchmark(cfg))
    report["config"] = config_dict(cfg)
    text = json.dumps(report, indent=2)
    print(text)
    if args.result_file:
        with open(args.result_file, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if report["failed"] == 0 else 1
