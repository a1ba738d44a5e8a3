"""Start and stop server processes on loopback for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
FAKE_ENGINE = Path(__file__).resolve().parent / "fake_engine.py"
API_KEY = "sk-test-key"
MAX_MODEL_LEN = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    kind: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(kind: str, tmp_dir: Path, extra: list[str] = (), api_key: str | None = API_KEY,
                 startup_timeout: float = 600.0) -> ServerProcess:
    """Start a server process on a free loopback port and wait until /health answers 200."""
    port = free_port()
    common = ["--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN),
              "--uvicorn-log-level", "warning", "--shutdown-timeout", "120"]
    if api_key:
        common += ["--api-key", api_key]
    if kind == "real":
        cmd = [sys.executable, "-m", "vllm_core.entrypoints.cli.main", "serve", *common]
    else:
        cmd = [sys.executable, str(FAKE_ENGINE), *common, "--step-delay", "0.01"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    log_path = tmp_dir / f"server-{kind}-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
    proc = subprocess.Popen([*cmd, *extra], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    server = ServerProcess(kind, proc, port, log_path, api_key)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{kind} server not healthy after {startup_timeout} s:\n{server.log()}")
