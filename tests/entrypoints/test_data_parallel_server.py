"""The server with ``--data-parallel-size 2`` (two engine-core processes behind one API
server), end to end with the real openai client: greedy completions equal the single
in-process engine's, both cores serve at once, /metrics stays valid with the token counters
summed over the cores, and killing one core gives 503s and exit status 1, never a hang;
``--api-server-count 2`` puts two front ends over the two cores; ``--no-engine-core-process``
fails fast."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_utils import ServerProcess, free_port, start_server

MAX_LEN = 512
PROMPTS = [" ".join(f"t{(11 * i + 3 * j) % 200}" for j in range(3 + i % 5)) for i in range(8)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from test_engine_core_process import build_tiny_llama

    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama-dp")), MAX_LEN)


def _metrics(url: str) -> dict[str, float]:
    """Every sample of /metrics, summed over labels (parsing fails on invalid text)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _core_pids(server_pid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server_pid and fields[0] != "Z" and b"spawn_main" in cmd:
            pids.append(int(entry))
    return pids


def _reference(model: str) -> list[str]:
    from vllm_core import LLM, SamplingParams

    llm = LLM(model, dtype="float32", max_model_len=MAX_LEN, num_gpu_blocks_override=200,
              max_num_seqs=1, seed=0)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        return [o.outputs[0].text for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    finally:
        llm.shutdown()


@pytest.mark.slow
def test_dp2_server_parity_metrics_both_cores_and_a_dead_core(tiny_model, tmp_path):
    want = _reference(tiny_model)
    # max_num_seqs 1: a core runs one request at a time, so two running requests prove that
    # both cores serve at once.
    srv: ServerProcess = start_server(
        "real", tmp_path, api_key=None, startup_timeout=300,
        extra=["--model", tiny_model, "--dtype", "float32", "--max-model-len", str(MAX_LEN),
               "--num-gpu-blocks-override", "200", "--max-num-seqs", "1",
               "--disable-log-stats", "--data-parallel-size", "2"])
    try:
        cores = _core_pids(srv.proc.pid)
        assert len(cores) == 2, cores
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0,
                               timeout=120)
        model = client.models.list().data[0].id

        def complete(prompt: str):
            return client.completions.create(model=model, prompt=prompt, max_tokens=8,
                                             temperature=0, extra_body={"ignore_eos": True})

        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(complete, PROMPTS))
        assert [d.choices[0].text for d in done] == want
        m = _metrics(srv.url)
        assert m["vllm:generation_tokens_total"] == sum(d.usage.completion_tokens for d in done)
        assert m["vllm:prompt_tokens_total"] == sum(d.usage.prompt_tokens for d in done)
        assert m["vllm:request_success_total"] == len(PROMPTS)

        # Two long streams run at once, one on each core; then one core is killed.
        body = {"model": model, "prompt": "t1 t2", "max_tokens": MAX_LEN - 8,
                "ignore_eos": True, "stream": True}
        events: dict[int, list[str]] = {}

        def stream(i: int) -> None:
            with httpx.Client(timeout=120) as c, \
                    c.stream("POST", f"{srv.url}/v1/completions", json=body) as resp:
                events[i] = [line[6:] for line in resp.iter_lines()
                             if line.startswith("data: ")]

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while _metrics(srv.url)["vllm:num_requests_running"] < 2:
            assert time.monotonic() < deadline, _metrics(srv.url)
            time.sleep(0.1)
        assert _metrics(srv.url)["vllm:num_requests_waiting"] == 0
        os.kill(cores[1], signal.SIGKILL)
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a stream hangs after a core died"
        # every stream ends; the one on the killed core with a 503, the other with a 503 or,
        # when it finished before the server reacted (a fast host), with its last chunk
        codes = []
        for got in events.values():
            assert got[-1] == "[DONE]"
            last = json.loads(got[-2])
            codes.append(last.get("error", {}).get("code"))
            if codes[-1] is None:
                assert last["choices"][0]["finish_reason"] == "length", got[-3:]
        assert 503 in codes, [got[-3:] for got in events.values()]
        late = httpx.post(f"{srv.url}/v1/completions", timeout=30,
                          json={**body, "stream": False, "max_tokens": 4})
        assert late.status_code == 503, late.text
        assert srv.proc.wait(timeout=60) == 1
        log = srv.log_path.read_text(errors="replace")
        assert "data-parallel engine core 1" in log
    finally:
        srv.stop()
    for pid in cores:
        assert not os.path.exists(f"/proc/{pid}/cmdline") or \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"


def test_no_engine_core_process_with_data_parallelism_fails_fast():
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "vllm_core.entrypoints.cli.main", "serve", "--port",
         str(free_port()), "--data-parallel-size", "2", "--no-engine-core-process"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "--data-parallel-size > 1 runs every engine core in its own process" in done.stderr
    assert "Traceback" not in done.stderr


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                out.append(int(entry))
                todo.append(int(entry))
    return out


@pytest.mark.slow
def test_two_api_servers_over_two_cores(tiny_model, tmp_path):
    """Each API server is a front end of both cores: requests on many connections are served,
    metrics are summed over the servers, and SIGTERM stops every process with status 0."""
    srv: ServerProcess = start_server(
        "real", tmp_path, api_key=None, startup_timeout=300,
        extra=["--model", tiny_model, "--dtype", "float32", "--max-model-len", str(MAX_LEN),
               "--num-gpu-blocks-override", "200", "--max-num-seqs", "1",
               "--disable-log-stats", "--data-parallel-size", "2", "--api-server-count", "2"])
    try:
        deadline = time.monotonic() + 120
        while len(_core_pids(srv.proc.pid)) < 4:              # 2 cores + 2 API servers
            assert time.monotonic() < deadline
            time.sleep(0.2)
        tree = _descendants(srv.proc.pid)
        tokens = 0
        for i in range(6):                  # a new connection each: spread by the kernel
            with httpx.Client(timeout=60) as c:
                model = c.get(f"{srv.url}/v1/models").json()["data"][0]["id"]
                r = c.post(f"{srv.url}/v1/completions",
                           json={"model": model, "prompt": PROMPTS[i], "max_tokens": 5,
                                 "ignore_eos": True})
                assert r.status_code == 200, r.text
                tokens += r.json()["usage"]["completion_tokens"]
        assert _metrics(srv.url)["vllm:generation_tokens_total"] == tokens
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()
    time.sleep(1)
    assert not [p for p in tree if os.path.exists(f"/proc/{p}/cmdline") and
                Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"]
