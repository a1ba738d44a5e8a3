"""The CPU image builds, starts, and serves the default model (needs a docker daemon).

Marked ``docker``: ``nox -s tests-cpu`` runs it where ``docker info`` succeeds and otherwise
lists it as NOT RUN with the reason (noxfile.py), like the device-marked tests.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "vllm-core-cpu:test"


@pytest.mark.docker
def test_cpu_image_builds_and_serves_the_default_model(tmp_path):
    subprocess.run(["docker", "build", "-f", "docker/Dockerfile.cpu", "-t", IMAGE, "."],
                   cwd=REPO, check=True, timeout=3600)
    container = subprocess.run(["docker", "run", "-d", "--rm", "-p", "127.0.0.1::8000", IMAGE],
                               check=True, capture_output=True, text=True).stdout.strip()
    try:
        port = subprocess.run(["docker", "port", container, "8000"], check=True,
                              capture_output=True, text=True).stdout.strip().rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the container never became healthy"
            time.sleep(1)
        resp = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8})
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"]
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
