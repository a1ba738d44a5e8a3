"""Serving throughput with the engine core in the server's process vs in its own process (and
with several API server processes), measured in the same run with ``vllm-core bench serve``.

Each mode starts ``vllm-core serve`` with the same model flags, times start-up to a healthy
``/health``, runs the same ``bench serve`` workload against it, then stops it with SIGTERM.
One JSON line per mode (the bench report's throughput and latency figures, ``startup_s``, the
machine's load average), then a summary line with each mode's output tok/s over the first
mode's, and over ``--offline-tok-s`` when given (the offline engine's figure measured in the
same run, e.g. by ``throughput_gpu.py``)::

    # CPU, the default model (cpu-small shape: 64 prompts, 256 in / 128 out, all at once)
    python benchmarks/serve_split.py --modes in-process,core-process
    # GPU, the 8B shape with dummy weights
    python benchmarks/serve_split.py --modes in-process,core-process,api-servers-2 \\
        --num-prompts 1000 --input-len 512 --output-len 256 \\
        --serve-args "/tmp/llama8b --load-format dummy --dtype bfloat16 --max-num-batched-tokens 8192"

Modes: ``in-process`` (``--no-engine-core-process``), ``core-process``
(``--engine-core-process``), ``api-servers-N`` (``--api-server-count N``). A mode may repeat
(``core-process,core-process``: with an empty ``VLLM_CACHE_ROOT`` the first start is a fresh
one, the second a warm one); each record has its position ``run``. ``--request-rate`` takes
several rates (``32,64``): one server per mode runs them in order, one record per rate. Each
record has ``max_running`` (the most running requests ``/metrics`` showed, polled every 0.2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]

MODE_FLAGS = {"in-process": ["--no-engine-core-process"],
              "core-process": ["--engine-core-process"]}


def mode_flags(mode: str) -> list[str]:
    if mode in MODE_FLAGS:
        return MODE_FLAGS[mode]
    if mode.startswith("api-servers-"):
        return ["--api-server-count", mode.rsplit("-", 1)[1]]
    raise SystemExit(f"unknown mode {mode!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class RunningPoller:
    """Polls ``vllm:num_requests_running`` on ``/metrics`` (summed over label sets) on a thread;
    ``peak`` is the most seen since ``start``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RunningPoller:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return int(self.peak)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                text = httpx.get(f"{self.url}/metrics", timeout=2).text
            except httpx.HTTPError:
                continue
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("vllm:num_requests_running"))
            self.peak = max(self.peak, total)


def run_mode(run: int, mode: str, args: argparse.Namespace, log_dir: Path) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, "-m", "vllm_core.entrypoints.cli.main", "serve",
           *shlex.split(args.serve_args), "--host", "127.0.0.1", "--port", str(port),
           "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log",
           *mode_flags(mode)]
    log_path = log_dir / f"server-{run}-{mode}.log"
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    base: dict = {"bench": "serve_split", "run": run, "mode": mode, "load_avg_before": load()}
    records: list[dict] = []
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{mode}: server exited with {proc.returncode}; "
                                   f"see {log_path}")
            if time.perf_counter() - t0 > args.startup_timeout:
                raise RuntimeError(f"{mode}: not healthy after {args.startup_timeout} s")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        base["startup_s"] = round(time.perf_counter() - t0, 2)
        for rate in args.request_rate.split(","):
            record = dict(base)
            records.append(record)
            bench_once(record, url, rate, args, log_dir / f"bench-{run}-{mode}-{rate}.json")
    except Exception as e:  # noqa: BLE001 - one failed mode still reports the others
        if not records:
            records.append(dict(base))
        records[-1]["error"] = str(e)[-1500:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for record in records:
            record["exit_code"] = proc.returncode
            record["load_avg_after"] = load()
    return records


def bench_once(record: dict, url: str, rate: str, args: argparse.Namespace,
               result_file: Path) -> None:
    """``vllm-core bench serve`` at ``rate`` against ``url``; its figures go into ``record``."""
    bench = [sys.executable, "-m", "vllm_core.entrypoints.cli.main", "bench", "serve",
             "--base-url", url, "--num-prompts", str(args.num_prompts),
             "--random-input-len", str(args.input_len),
             "--random-output-len", str(args.output_len),
             "--request-rate", rate, "--seed", "0", "--result-file", str(result_file)]
    poller = RunningPoller(url).start()
    try:
        done = subprocess.run(bench, cwd=REPO, capture_output=True, text=True,
                              timeout=args.bench_timeout)
    finally:
        record["max_running"] = poller.stop()
    if done.returncode != 0:
        raise RuntimeError(f"bench serve at {rate} req/s failed:\n{done.stderr[-2000:]}")
    report = json.loads(result_file.read_text())
    for key in ("completed", "failed", "duration", "output_throughput",
                "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
                "p99_tpot_ms", "median_itl_ms", "p99_itl_ms"):
        value = report.get(key)
        record[key] = round(value, 3) if isinstance(value, float) else value
    record["request_rate"] = report.get("request_rate", rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="in-process,core-process")
    p.add_argument("--serve-args", default="--max-model-len 1024",
                   help="model and engine flags for `vllm-core serve` (one string)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--request-rate", default="inf",
                   help="requests/s, or several comma-separated (one server runs them all)")
    p.add_argument("--offline-tok-s", type=float, default=None,
                   help="the offline engine's output tok/s from the same run, for the ratio")
    p.add_argument("--startup-timeout", type=float, default=600)
    p.add_argument("--bench-timeout", type=float, default=1200)
    p.add_argument("--log-dir", default=None)
    p.add_argument("--output", default=None, help="append the JSON lines to this file")
    args = p.parse_args()

    def stop(_sig: int, _frame: object) -> None:   # a timeout's SIGTERM: stop the server too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="serve-split-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    def emit(obj: dict) -> None:
        line = json.dumps(obj)
        print(line, flush=True)
        if args.output:
            with open(args.output, "a") as f:
                f.write(line + "\n")

    records = []
    for run, mode in enumerate(args.modes.split(",")):
        for rec in run_mode(run, mode, args, log_dir):
            emit(rec)
            records.append(rec)
    base = records[0].get("output_throughput")
    summary: dict = {"bench": "serve_split_summary", "request_rate": args.request_rate,
                     "num_prompts": args.num_prompts, "input_len": args.input_len,
                     "output_len": args.output_len}
    first = f"{records[0]['run']}:{records[0]['mode']}@{records[0].get('request_rate')}"
    for rec in records:
        tput = rec.get("output_throughput")
        name = f"{rec['run']}:{rec['mode']}@{rec.get('request_rate')}"
        if tput and base:
            summary[f"{name}_vs_{first}"] = round(tput / base, 3)
        if tput and args.offline_tok_s:
            summary[f"{name}_vs_offline"] = round(tput / args.offline_tok_s, 3)
    emit(summary)


if __name__ == "__main__":
    main()
