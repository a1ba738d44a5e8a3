"""A worker process that dies under the OpenAI server (mp executor, TP=2, gloo): the request
in flight ends with a 503 error event naming the dead rank, new requests and ``/health`` get
503, and the server exits with a non-zero status in bounded time, leaving no worker behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from dist_utils import alive, build_model_folder

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_pids(server_pid: int) -> list[int]:
    """The server's children started by multiprocessing's spawn (the ranks), not its
    resource tracker."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and "spawn_main" in cmdline:
            pids.append(int(entry))
    return sorted(pids)


def test_dead_worker_gives_503_and_the_server_exits_nonzero(tmp_path, model_root):
    folder = os.path.join(model_root, "llama")
    if not os.path.isdir(folder):
        folder = build_model_folder(model_root, "llama")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "vllm_core.entrypoints.cli.main", "serve", folder,
           "--host", "127.0.0.1", "--port", str(port), "-tp", "2", "--dtype", "float32",
           "--max-model-len", "256", "--max-num-seqs", "4", "--num-gpu-blocks-override", "64",
           # the portable backend: no CPU kernel build at start (not what is tested here)
           "--attention-backend", "reference", "--uvicorn-log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2, workers
        body = {"model": folder, "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0.0}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200

        # a long stream: kill rank 1 once it has started
        events = []
        stream_body = dict(body, max_tokens=200, stream=True, ignore_eos=True)
        with httpx.stream("POST", f"{url}/v1/completions", json=stream_body,
                          timeout=60) as resp:
            assert resp.status_code == 200
            killed_at = None
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if killed_at is None:
                    os.kill(workers[1], signal.SIGKILL)
                    killed_at = time.monotonic()
        assert time.monotonic() - killed_at < 30, "the stream hung"
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
        assert "worker rank 1" in error["message"], error

        # new requests and /health: 503 with the cause, until the server exits
        again = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert again.status_code == 503, again.text
        assert "worker rank 1" in again.json()["error"]["message"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        assert proc.wait(timeout=60) != 0
        end = time.monotonic() + 15
        while time.monotonic() < end and any(alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if alive(p)], "a worker outlived the server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
