"""``--api-server-count N`` (N > 1): N front-end processes sharing one engine core (or the
``--data-parallel-size`` cores, each API server a front end of every core) and one port.

Processes: this one is the supervisor. It checks the port, builds the engine config, spawns
the engine core process and N API server processes (``api_server_main``), then waits. Each API
server binds the same ``host:port`` with ``SO_REUSEPORT`` (the kernel spreads new
connections over the listening processes), connects to the core as front end ``i``
(``EngineCoreClient.connect``) and serves with the ordinary single-process code
(``serve_engine``): its own tokenization, detokenization and SSE, so HTTP work scales with
cores. Metrics: prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh
temporary folder set here before any process imports prometheus_client); any server's
/metrics answers for all of them.

Shutdown: SIGTERM (or SIGINT) to the supervisor is passed to every API server, which drains
its requests as a single server does; then the core is told to stop. Failure: an API server
that exits with a non-zero status, or a core that dies (each API server then answers 503 and
exits 1), stops everything, and the supervisor exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any

from vllm_core.logger import init_logger

logger = init_logger(__name__)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT (shared by the API servers);
    ``RuntimeError`` naming the address when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another "
                           f"server running there? pick another --port)") from e
    return sock


def run_multi_server(args: argparse.Namespace, host: str, count: int) -> int:
    """The supervisor (see the module docstring); returns the exit status."""
    import multiprocessing

    from vllm_core.engine.core_client import send_shutdown
    from vllm_core.entrypoints.openai.api_server import engine_args_from

    # The children get the flags by pickle: drop what the CLI attached (its handler).
    args = argparse.Namespace(**{k: v for k, v in vars(args).items() if not callable(v)})
    metrics_dir = tempfile.mkdtemp(prefix="vllm-core-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir      # inherited by the children
    probe = reuseport_socket(host, args.port)                 # the port is ours, or fail now
    procs: list[Any] = []
    cores: list[Any] = []
    addresses: list[str] = []
    stop = {"signal": None}

    def on_signal(sig: int, _frame: Any) -> None:
        stop["signal"] = sig

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 1
    try:
        config, platform = engine_args_from(args).create_engine_config()
        cores, addresses = start_cores(config, platform)
        ctx = multiprocessing.get_context("spawn")
        for i in range(count):
            p = ctx.Process(target=api_server_main, name=f"vllm-core-api-server-{i}",
                            args=(args, config, platform, addresses, i, host))
            p.start()
            procs.append(p)
        logger.info("api servers: %d processes on %s:%d sharing engine core pids %s", count,
                    host, args.port, [c.pid for c in cores])
        status = _supervise(procs, cores, stop)
    finally:
        probe.close()
        for p in procs:                  # whatever is left: the drain is over or failed
            _stop(p, 0.0 if status else 5.0)
        for core, address in zip(cores, addresses, strict=True):
            if core.is_alive():
                send_shutdown(address)
        for core in cores:
            _stop(core, 10.0)
            if core.exitcode not in (0, None) and status == 0:
                status = 1
        for s, handler in old.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def start_cores(config: Any, platform: Any) -> tuple[list[Any], list[str]]:
    """The engine core process, or one per data-parallel rank (``dp_client``); (processes,
    input addresses)."""
    from vllm_core.engine.core_client import start_core_process
    from vllm_core.engine.dp_client import start_dp_core_process

    par = config.parallel
    if par.data_parallel_size == 1:
        proc, address = start_core_process(config, platform)
        return [proc], [address]
    envs = [dict(platform.data_parallel_env(r, par.world_size))
            for r in range(par.data_parallel_size)]
    started = [start_dp_core_process(config, platform, r, env) for r, env in enumerate(envs)]
    return [p for p, _ in started], [a for _, a in started]


def _supervise(procs: list[Any], cores: list[Any], stop: dict[str, Any]) -> int:
    from multiprocessing.connection import wait

    forwarded = False
    while True:
        if stop["signal"] is not None and not forwarded:
            forwarded = True
            logger.info("api servers: passing signal %d on to %d servers", stop["signal"],
                        len(procs))
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, stop["signal"])
        wait([p.sentinel for p in procs] + [c.sentinel for c in cores], timeout=0.5)
        failed = [p for p in procs if p.exitcode not in (None, 0)]
        if failed:
            logger.error("api server %s exited with status %s; stopping", failed[0].name,
                         failed[0].exitcode)
            return 1
        dead = [c for c in cores if not c.is_alive()]
        if dead and not forwarded:
            logger.error("the engine core %s exited with status %s; stopping", dead[0].name,
                         dead[0].exitcode)
            deadline = time.monotonic() + 10.0           # the servers answer 503, then exit 1
            while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
                wait([p.sentinel for p in procs], timeout=0.5)
            return 1
        if all(p.exitcode is not None for p in procs):
            return 0 if forwarded else 1


def _stop(proc: Any, grace_s: float) -> None:
    proc.join(grace_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(5.0)
    if proc.is_alive():
        proc.kill()
        proc.join(5.0)


def api_server_main(args: argparse.Namespace, config: Any, platform: Any,
                    core_addresses: list[str], index: int, host: str) -> None:
    """One API server process: front end ``index`` of the core(s) at ``core_addresses`` (one
    per data-parallel rank)."""
    import sys

    from vllm_core.engine.async_llm_engine import AsyncLLMEngine
    from vllm_core.engine.core_client import EngineCoreClient
    from vllm_core.engine.llm_engine import LLMEngine
    from vllm_core.entrypoints.openai.api_server import serve_engine, stat_loggers_for
    from vllm_core.entrypoints.openai.metrics import PrometheusStatLogger

    prometheus = PrometheusStatLogger()
    if len(core_addresses) == 1:
        client: Any = EngineCoreClient.connect(config, core_addresses[0], index)
    else:
        from vllm_core.engine.dp_client import DPEngineCoreClient

        client = DPEngineCoreClient.connect(config, core_addresses, index)
    engine = AsyncLLMEngine(LLMEngine(config, platform, stat_loggers_for(args, prometheus),
                                      core=client))
    sock = reuseport_socket(host, args.port)
    try:
        code = serve_engine(engine, args, sock, host, prometheus)
    finally:
        sock.close()
    sys.exit(code)
