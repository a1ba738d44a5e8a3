"""A real Ray cluster of several nodes on this one machine, started with ``ray start`` as on a
multi-host deployment: a head node, then each further node joining it with ``ray start
--address``. Every node is its own raylet with its own node id, resources and address (extra
nodes take loopback addresses 127.0.0.2, 127.0.0.3...: Linux routes all of 127/8 to this
host, so each node has an address of its own, as hosts do).

``stop`` ends exactly this cluster's processes: those whose command line names its temp
dir (GCS, raylets, monitors) and their descendants (agents, actors). ``ray stop`` would end
every Ray process of the machine, other users' clusters included.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field


def ray_cli() -> str:
    local = os.path.join(os.path.dirname(sys.executable), "ray")
    return local if os.path.exists(local) else (shutil.which("ray") or "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRayCluster:
    """``head_cpus`` CPUs on the head node; one further node per entry of ``node_cpus``, each
    declaring ``node_gpus`` GPUs (Ray's bookkeeping only: it hands an actor holding one a
    GPU id and sets its ``CUDA_VISIBLE_DEVICES``; there is no GPU behind it).
    Started without token authentication (the refusal of a token-less driver is tested
    elsewhere); ``address`` is what a driver's ``RAY_ADDRESS`` names."""

    head_cpus: int = 0
    node_cpus: tuple[int, ...] = (1, 1)
    node_gpus: int = 0
    temp_dir: str = ""
    address: str = ""
    node_ips: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> LocalRayCluster:
        self.temp_dir = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: socket paths
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        out = self._ray_start(["--head", "--num-gpus=0", f"--port={free_port()}",
                               f"--num-cpus={self.head_cpus}", "--include-dashboard=false",
                               f"--dashboard-port={free_port()}"])
        joined = re.search(r"ray start --address='([^']+)'", out)
        assert joined, out[-3000:]
        self.address = joined.group(1)
        for i, cpus in enumerate(self.node_cpus):
            ip = f"127.0.0.{i + 2}"
            self._ray_start([f"--address={self.address}", f"--node-ip-address={ip}",
                             f"--num-cpus={cpus}", f"--num-gpus={self.node_gpus}"])
            self.node_ips.append(ip)
        return self

    def _ray_start(self, args: list[str]) -> str:
        common = [f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
                  "--object-store-memory=80000000",
                  f"--dashboard-agent-listen-port={free_port()}",
                  f"--dashboard-agent-grpc-port={free_port()}",
                  f"--metrics-export-port={free_port()}",
                  f"--runtime-env-agent-port={free_port()}"]
        done = subprocess.run([ray_cli(), "start", *args, *common], env=self.env,
                              capture_output=True, text=True, timeout=180)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        return out

    def processes(self) -> list[int]:
        """The pids of this cluster's processes (see the module docstring)."""
        import psutil

        me = psutil.Process()
        skip = {me.pid, *(p.pid for p in me.parents())}    # e.g. a command naming the dir
        roots = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid not in skip and self.temp_dir and any(self.temp_dir in a for a in proc.info["cmdline"] or []):
                    roots.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        pids = set()
        for proc in roots:
            pids.add(proc.pid)
            try:
                pids.update(c.pid for c in proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return sorted(pids)

    def stop(self, grace_s: float = 2.0) -> list[int]:
        """SIGTERM to every process of the cluster, SIGKILL to those left after ``grace_s``;
        removes the temp dir. Returns the pids still alive afterwards (none expected)."""
        pids = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(_running(p) for p in pids):
                time.sleep(0.1)
            pids = [p for p in pids if _running(p)]
            if not pids:
                break
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return pids


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
