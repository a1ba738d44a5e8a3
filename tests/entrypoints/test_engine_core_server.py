"""The server with the engine core in its own process, end to end with the real openai client
(issue 11): requests and streams work, a client that disconnects aborts its request in the
engine core, SIGTERM drains what is in flight and exits 0, an engine core that dies gives
errors to requests in flight, 503 to new ones and a non-zero exit (never a hang), and
``--api-server-count 2`` serves from two processes with metrics summed over both."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_utils import ServerProcess, start_server

MAX_LEN = 4096


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from test_engine_core_process import build_tiny_llama

    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama-srv")), MAX_LEN)


def _start(tiny_model: str, tmp_path: Path, *flags: str) -> ServerProcess:
    return start_server("real", tmp_path, api_key=None, startup_timeout=300,
                        extra=["--model", tiny_model, "--dtype", "float32", "--max-model-len",
                               str(MAX_LEN), "--num-gpu-blocks-override", "600",
                               "--disable-log-stats", *flags])


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry))
    return kids


def _spawned(pid: int) -> list[int]:
    """``pid``'s multiprocessing children (engine core, API servers), not the tracker."""
    out = []
    for kid in _children(pid):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "spawn_main" in cmd:
            out.append(kid)
    return out


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total


def _client(srv: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=240)


@pytest.fixture(scope="module")
def core_server(tiny_model, tmp_path_factory) -> ServerProcess:
    srv = _start(tiny_model, tmp_path_factory.mktemp("core-srv"), "--engine-core-process")
    yield srv
    srv.stop()


def test_requests_and_streams(core_server):
    client = _client(core_server)
    model = client.models.list().data[0].id
    done = client.completions.create(model=model, prompt="t1 t2 t3", max_tokens=8,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 8
    stream = client.completions.create(model=model, prompt="t1 t2 t3", max_tokens=8,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text == done.choices[0].text
    assert len(_spawned(core_server.proc.pid)) == 1          # the engine core process


def test_disconnect_aborts_in_the_engine_core(core_server):
    """A stream asking for thousands of tokens is dropped after two chunks: the core stops
    running it at once (the running gauge falls to 0 long before it could have finished)."""
    body = {"model": _client(core_server).models.list().data[0].id, "prompt": "t5 t6",
            "max_tokens": MAX_LEN - 8, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", f"{core_server.url}/v1/completions", json=body) as resp:
            chunks = 0
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    chunks += 1
                    if chunks == 2:
                        break
    assert _metric(core_server.url, "vllm:num_requests_running") <= 1
    generated = _metric(core_server.url, "vllm:generation_tokens_total")
    deadline = time.monotonic() + 10
    while _metric(core_server.url, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the aborted request still runs in the core"
        time.sleep(0.2)
    assert _metric(core_server.url, "vllm:generation_tokens_total") < generated + MAX_LEN / 2


def test_sigterm_drains_then_exits_0(tiny_model, tmp_path):
    srv = _start(tiny_model, tmp_path, "--engine-core-process")
    core_pid = _spawned(srv.proc.pid)[0]
    try:
        result: dict = {}
        with httpx.Client(timeout=60) as c:
            model = c.get(f"{srv.url}/v1/models").json()["data"][0]["id"]
        thread = threading.Thread(target=lambda: result.__setitem__(
            "r", _client(srv).completions.create(model=model, prompt="t1", max_tokens=150,
                                                 extra_body={"ignore_eos": True})))
        thread.start()
        deadline = time.monotonic() + 30
        while _metric(srv.url, "vllm:num_requests_running") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=240)       # generous: a loaded 2-core machine is slow
        assert result["r"].choices[0].finish_reason == "length"
        assert result["r"].usage.completion_tokens == 150
        assert srv.proc.wait(timeout=60) == 0
        assert not os.path.exists(f"/proc/{core_pid}") or core_pid not in _children(
            srv.proc.pid)
        assert "Traceback" not in srv.log_path.read_text(errors="replace")
    finally:
        srv.stop()


def test_dead_engine_core_gives_errors_503_and_exit_1(tiny_model, tmp_path):
    srv = _start(tiny_model, tmp_path, "--engine-core-process")
    try:
        core_pid = _spawned(srv.proc.pid)[0]
        body = {"model": "x", "prompt": "t1", "max_tokens": MAX_LEN - 8, "ignore_eos": True,
                "stream": True}
        with httpx.Client(timeout=60) as c:
            body["model"] = c.get(f"{srv.url}/v1/models").json()["data"][0]["id"]
            with c.stream("POST", f"{srv.url}/v1/completions", json=body) as resp:
                lines = resp.iter_lines()
                next(line for line in lines if line.startswith("data: "))
                os.kill(core_pid, signal.SIGKILL)
                events = [line[6:] for line in lines if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            error = json.loads(events[-2])["error"]
            assert error["code"] == 503, error
            late = c.post(f"{srv.url}/v1/completions",
                          json={**body, "stream": False, "max_tokens": 4})
            assert late.status_code == 503, late.text
            assert c.get(f"{srv.url}/health").status_code == 503
        assert srv.proc.wait(timeout=30) == 1
    finally:
        srv.stop()


def test_two_api_servers_share_one_core(tiny_model, tmp_path):
    srv = _start(tiny_model, tmp_path, "--api-server-count", "2")
    try:
        deadline = time.monotonic() + 120
        while len(_spawned(srv.proc.pid)) < 3:               # core + 2 API servers
            assert time.monotonic() < deadline
            time.sleep(0.2)
        n = 8
        for i in range(n):                  # a new connection each: spread by the kernel
            with httpx.Client(timeout=60) as c:
                model = c.get(f"{srv.url}/v1/models").json()["data"][0]["id"]
                r = c.post(f"{srv.url}/v1/completions",
                           json={"model": model, "prompt": f"t{i} t2", "max_tokens": 5,
                                 "ignore_eos": True})
                assert r.status_code == 200, r.text
        assert _metric(srv.url, "vllm:request_success_total") == n
        assert _metric(srv.url, "vllm:generation_tokens_total") == 5 * n
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()
