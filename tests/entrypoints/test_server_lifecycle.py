"""Server process lifecycle (issue 13 bugs 6 and 13, the vLLM flag names): the drain deadline
answers what is still in flight cleanly, a port in use fails before the model loads, and copied
``vllm serve`` flags start or fail with one clear sentence."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from server_utils import REPO, free_port, start_server


def test_shutdown_timeout_answers_in_flight_requests_with_503(tmp_path):
    """SIGTERM with --shutdown-timeout 1 while a stream and a plain request run for much longer:
    the plain request gets a JSON 503, the stream an error event then [DONE]; exit 0, and no
    traceback in the log."""
    srv = start_server("fake", tmp_path, extra=["--shutdown-timeout", "1", "--step-delay",
                                                "0.05", "--max-model-len", "4096"])
    try:
        body = {"prompt": "hi", "max_tokens": 2000, "ignore_eos": True}
        plain: dict = {}

        def send_plain():
            plain["resp"] = httpx.post(f"{srv.url}/v1/completions", json=body,
                                       headers=srv.headers(), timeout=60)

        thread = threading.Thread(target=send_plain)
        thread.start()
        with httpx.Client(timeout=60, headers=srv.headers()) as c:
            with c.stream("POST", f"{srv.url}/v1/completions",
                          json={**body, "stream": True}) as resp:
                lines = resp.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert "choices" in json.loads(first[6:])
                srv.proc.send_signal(signal.SIGTERM)
                events = [line[6:] for line in lines if line.startswith("data: ")]
        thread.join(timeout=30)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
        resp = plain["resp"]
        assert resp.status_code == 503
        assert resp.headers["content-type"] == "application/json"
        assert resp.json()["error"]["code"] == 503
        assert srv.proc.wait(timeout=30) == 0
        log = srv.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
    finally:
        srv.stop()


def _serve(*flags: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vllm_core.entrypoints.cli.main", "serve",
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_port_in_use_fails_before_the_model_loads():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        done = _serve("--host", "127.0.0.1", "--port", str(port))
        elapsed = time.monotonic() - t0
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "engine ready" not in done.stderr + done.stdout      # the model never loaded
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("flags,message", [
    (["--trust-remote-code"], "never runs code shipped with a model"),
    (["--quantization", "awq"], "--quantization awq: this is a GGUF file"),
    (["--data-parallel-size", "0"], "data_parallel_size must be >= 1, got 0"),
    (["--lora-modules", "a=/tmp/a"], "--lora-modules needs --enable-lora"),
    (["--enable-lora", "--lora-modules", "a"], "--lora-modules 'a': expected name=path"),
    (["--speculative-config", '{"method": "medusa", "model": "x"}'],
     "speculative_config.method 'medusa' is not supported yet"),
])
def test_unsupported_vllm_flags_fail_fast_with_the_reason(flags, message):
    done = _serve("--port", str(free_port()), *flags)
    assert done.returncode == 1
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_copied_vllm_serve_line_starts(tmp_path):
    """Defaults of the vLLM-only flags, --disable-log-requests and --root-path are accepted."""
    srv = start_server("fake", tmp_path, extra=[
        "--disable-log-requests", "--root-path", "/proxy", "--quantization", "gguf",
        "--pipeline-parallel-size", "1", "--data-parallel-size", "1"])
    try:
        doc = httpx.get(f"{srv.url}/openapi.json", headers=srv.headers()).json()
        assert doc["servers"] == [{"url": "/proxy"}]
        resp = httpx.post(f"{srv.url}/v1/completions", headers=srv.headers(),
                          json={"prompt": "hi", "max_tokens": 2})
        assert resp.status_code == 200
    finally:
        srv.stop()
