"""RayExecutor: one Ray actor per rank (``--distributed-executor-backend ray``).

The same worker code as the ``mp`` executor (``platform.worker_class()``, the same
``init_device`` / ``load_model`` / ``execute_model`` calls, the same process groups over
``torch.distributed``); Ray only places and runs the ranks:

* **Cluster**: joins the Ray instance this process is already connected to, else
  ``ray.init()``, which connects to ``RAY_ADDRESS`` when it is set (``RAY_ADDRESS=auto`` for a
  cluster started with ``ray start --head`` on this host) or starts a private local instance
  (stopped again at ``shutdown``). A cluster started by ``ray start`` uses token
  authentication by default: the driver then needs ``RAY_AUTH_MODE=token`` (a refused token
  is reported with that fix).
* **Placement**: a placement group of ``world_size`` bundles of one ``platform.ray_device_key``
  each (``CPU`` for the CPU plugin, ``GPU`` for CUDA) with ``ray_placement_strategy``
  (default ``PACK``: one node when the ranks fit there, else as few nodes as possible;
  ``STRICT_SPREAD``: one rank per node...). A cluster whose nodes can never hold them is
  refused at once, naming each node's resources; one that could but is busy is waited for
  within ``VLLM_WORKER_START_TIMEOUT_S``. One actor per bundle; each says where it runs, and
  ``ray_placement.assign_ranks`` numbers them: a node's ranks consecutive (a TP group on one
  node when it fits), each rank's device index and, with GPUs, the node's devices it sees
  (the union of the GPUs Ray gave that node's ranks, so ranks of one node can reach each
  other's memory). Rank 0's node address and a free port there are the
  ``torch.distributed`` rendezvous (the node's address, not the driver's). The actors get the
  driver's vllm-core / Hugging Face / collective-library settings (``envs.ray_carried_env``):
  a node's raylet starts them with its own environment, not the driver's.
* **Steps**: the ``SchedulerOutput`` is pickled once per step (not once per rank). Up to
  ``VLLM_RAY_INLINE_MAX_BYTES`` (64 KiB: every decode step) those bytes travel inside each
  actor call (Ray inlines small arguments: no object-store write and fetch); a larger one is
  put once in Ray's object store and every call names it (each node's store fetches it once).
  No shared memory, so it reaches actors on other hosts. The sampling rank's
  ``ModelRunnerOutput`` is the step's result. Calls to one actor run in submission order, so
  ``execute_model_async`` lets the engine schedule the next step while the actors compute.
* **Faults**: waiting watches every rank's reply; an actor that dies or raises stops the
  engine at once with ``WorkerFailure`` naming the rank and the cause, one that replies
  nothing for ``VLLM_WORKER_STEP_TIMEOUT_S`` is declared hung; the actors are then killed and
  later calls raise the same error. A lost host's rank is named first (its peers' collectives
  fail too, naming no one). ``check_health`` probes the actors while the engine is idle.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import threading
import time
from typing import Any

from vllm_core import envs
from vllm_core.config import EngineConfig
from vllm_core.distributed.parallel_context import sampling_rank
from vllm_core.engine.mp_executor import WorkerFailure
from vllm_core.engine.ranked_executor import RankedExecutor
from vllm_core.engine.ray_placement import (
    ActorSite,
    NodeResources,
    RankSlot,
    assign_ranks,
    rendezvous_method,
    unplaceable,
)
from vllm_core.logger import init_logger
from vllm_core.messages import ModelRunnerOutput, SchedulerOutput

logger = init_logger(__name__)

START_TIMEOUT = "VLLM_WORKER_START_TIMEOUT_S"
#: After a rank's call fails, how long the others' replies are still awaited, so that a rank
#: whose actor died (a lost host) is named first rather than the peer that noticed it.
FAILURE_GRACE_S = 5.0
#: How often ``check_health`` probes every actor with a no-op call (a lost host is noticed
#: while the engine is idle).
HEALTH_PING_S = 2.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(error: Exception) -> str:
    """Ray's error text without its terminal colours."""
    return _ANSI.sub("", str(error))

# Ray's own names for its built-in resources; any other key is a custom resource.
_ACTOR_RESOURCES: dict[str, dict[str, Any]] = {
    "CPU": {"num_cpus": 1}, "GPU": {"num_cpus": 0, "num_gpus": 1}}


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError("distributed_executor_backend='ray' needs Ray: "
                          "pip install 'vllm-core[ray]'") from e
    return ray


def _join_ray(ray: Any) -> None:
    """``ray.init()`` (the cluster of ``RAY_ADDRESS``, else a private instance); a cluster
    that refuses this process's credentials is explained in words, with the fix."""
    try:
        ray.init(include_dashboard=False, log_to_driver=True)
    except ConnectionError as e:
        chain, cause = [], e
        while cause is not None:
            chain.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__ or cause.__context__
        if any("InvalidAuthToken" in c or "AuthenticationError" in c for c in chain):
            raise ConnectionError(
                f"the Ray cluster at {os.environ.get('RAY_ADDRESS', '?')} requires token "
                "authentication (`ray start` enables it by default in recent Ray, e.g. 2.60): set "
                "RAY_AUTH_MODE=token in this process's environment (the token is read from "
                "~/.ray/auth_token or RAY_AUTH_TOKEN), or start the cluster with "
                "RAY_AUTH_MODE=disabled") from e
        raise


def _free(ray: Any, key: str) -> str:
    """``"1 of 2 CPU free"``: the cluster's free and total ``key`` resources now."""
    free = ray.available_resources().get(key, 0.0)
    return f"{free:g} of {ray.cluster_resources().get(key, 0.0):g} {key} free"


class RayWorkerActor:
    """One rank inside a Ray actor (wrapped with ``ray.remote`` by the executor)."""

    def __init__(self) -> None:
        self.worker: Any = None

    def site(self, bundle: int, key: str) -> ActorSite:
        """Where this actor runs: its node, the node's address, its pid and the ids of the
        ``key`` accelerators Ray gave it (none for ``CPU``)."""
        import ray

        context = ray.get_runtime_context()
        ids = context.get_accelerator_ids().get(key, [])      # no entry for CPU
        return ActorSite(bundle=bundle, node_id=context.get_node_id(),
                         ip=ray.util.get_node_ip_address(), pid=os.getpid(),
                         device_ids=tuple(str(i) for i in ids))

    def node_address(self) -> tuple[str, int]:
        """This node's IP address and a free TCP port on it (rank 0's: the rendezvous)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def start(self, config: EngineConfig, platform: Any, worker_cls_path: str,
              slot: RankSlot, init_method: str) -> int:
        """Build ``slot.rank``'s worker on device ``slot.local_rank``, join the process
        groups, load its shard; returns the actor's pid. With ``slot.visible_devices`` the
        platform's device-control variable is set to them first (Ray set it to this actor's
        own device alone), before anything touches a device."""
        from vllm_core.engine.executor import _import_class
        from vllm_core.plugins import load_general_plugins

        control = getattr(platform, "device_control_env_var", "")
        if slot.visible_devices and control:
            os.environ[control] = ",".join(slot.visible_devices)
        load_general_plugins()
        worker_cls = _import_class(worker_cls_path)
        self.worker = worker_cls(config, slot.rank, slot.local_rank, platform=platform,
                                 distributed_init_method=init_method)
        self.worker.init_device()
        self.worker.load_model()
        return os.getpid()

    def execute_pickled(self, payload: bytes) -> ModelRunnerOutput:
        """One step: ``payload`` is the pickled ``SchedulerOutput`` (see ``RayExecutor``)."""
        return self.worker.execute_model(pickle.loads(payload))

    def ping(self) -> None:
        """A no-op: ``RayExecutor.check_health``'s liveness probe."""

    def call(self, method: str, *args: Any) -> Any:
        if method == "num_blocks":
            from vllm_core.worker.worker_process import _num_blocks

            return _num_blocks(self.worker)
        return getattr(self.worker, method)(*args)


class _PendingStep:
    """``execute_model_async``'s handle: every rank's reply, the sampling rank's output."""

    __slots__ = ("executor", "refs", "output")

    def __init__(self, executor: RayExecutor, refs: list[Any]) -> None:
        self.executor = executor
        self.refs = refs
        self.output: ModelRunnerOutput | None = None

    def result(self) -> ModelRunnerOutput:
        if self.output is None:
            replies = self.executor._wait(self.refs, self.executor.step_timeout_s)
            self.output = replies[self.executor.output_rank]
        return self.output


class RayExecutor(RankedExecutor):
    """Drives ``tensor_parallel_size * pipeline_parallel_size`` Ray actors (module docstring)."""

    def __init__(self, config: EngineConfig, platform: Any) -> None:
        ray = import_ray()

        par = config.parallel
        self.config = config
        self.world_size = par.world_size
        self.output_rank = sampling_rank(par.tensor_parallel_size, par.pipeline_parallel_size)
        self.step_timeout_s = envs.worker_step_timeout_s()
        self.inline_max_bytes = envs.ray_inline_max_bytes()
        self._failed: str | None = None
        self.actors: list[Any] = []
        self.placement: Any = None
        self.slots: list[RankSlot] = []        # rank order: where each rank runs
        self._pings: dict[Any, int] = {}       # check_health's probes in flight -> rank
        self._last_ping = 0.0
        self._ping_lock = threading.Lock()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _join_ray(ray)
        key = getattr(platform, "ray_device_key", "CPU")
        start_timeout = envs.worker_start_timeout_s()
        try:
            self.placement = self._place(ray, key, par.ray_placement_strategy, start_timeout)
            self.actors, self.slots = self._start_actors(ray, key)
            host, port = ray.get(self.actors[0].node_address.remote(), timeout=start_timeout)
            self.init_method = rendezvous_method(host, port)
            config_ref = ray.put(config)
            self.pids = self._wait(
                [a.start.remote(config_ref, platform, platform.worker_class(), slot,
                                self.init_method)
                 for a, slot in zip(self.actors, self.slots, strict=True)], start_timeout,
                START_TIMEOUT)
        except BaseException:
            self._abort()
            raise
        nodes = {}
        for slot in self.slots:
            nodes.setdefault((slot.node_id[:8], slot.ip), []).append(slot.rank)
        logger.info("ray executor: %d actors ready (pids %s), tp=%d pp=%d, %s per rank, "
                    "strategy %s, rendezvous %s; %s", self.world_size, self.pids,
                    par.tensor_parallel_size, par.pipeline_parallel_size, key,
                    par.ray_placement_strategy, self.init_method,
                    "; ".join(f"node {n} ({ip}): ranks {r}" for (n, ip), r in nodes.items()))

    def _place(self, ray: Any, key: str, strategy: str, timeout_s: float) -> Any:
        """The ready placement group of ``world_size`` bundles of one ``key``; refused at once
        when the cluster's nodes can never hold it, after ``timeout_s`` when they stay busy."""
        from ray.util.placement_group import placement_group

        nodes = [NodeResources(n["NodeID"], n.get("NodeManagerAddress", "?"),
                               dict(n.get("Resources", {})))
                 for n in ray.nodes() if n.get("Alive")]
        why = unplaceable(nodes, self.world_size, key, strategy)
        if why is not None:
            raise WorkerFailure(why)
        group = placement_group([{key: 1.0}] * self.world_size, strategy=strategy)
        self.placement = group                  # removed by _abort if anything below fails
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            ready, _ = ray.wait([group.ready()], timeout=max(0.0, min(left, 10.0)))
            if ready:
                return group
            if left <= 10.0:
                raise WorkerFailure(
                    f"the Ray cluster cannot place {self.world_size} ranks of one {key} each "
                    f"(strategy {strategy}) within {timeout_s:.0f} s: its nodes could hold "
                    f"them but other work holds the resources ({_free(ray, key)})")
            logger.info("waiting for the Ray cluster to place %d ranks of one %s each "
                        "(strategy %s; %s)", self.world_size, key, strategy, _free(ray, key))

    def _start_actors(self, ray: Any, key: str) -> tuple[list[Any], list[RankSlot]]:
        """One actor per bundle of ``self.placement``, in rank order, and their ``RankSlot``s
        (``ray_placement.assign_ranks``)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        resources = dict(_ACTOR_RESOURCES.get(key, {"num_cpus": 0, "resources": {key: 1.0}}))
        carried = envs.ray_carried_env()
        if carried:
            resources["runtime_env"] = {"env_vars": carried}
        actor_cls = ray.remote(RayWorkerActor)
        by_bundle = []
        for bundle in range(self.world_size):
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=self.placement, placement_group_bundle_index=bundle)
            by_bundle.append(actor_cls.options(
                name=None, scheduling_strategy=strategy, **resources).remote())
        self.actors = by_bundle                 # killed by _abort if anything below fails
        sites = self._wait([a.site.remote(b, key) for b, a in enumerate(by_bundle)],
                           envs.worker_start_timeout_s(), START_TIMEOUT)
        slots = assign_ranks(sites, ray.get_runtime_context().get_node_id())
        return [by_bundle[slot.bundle] for slot in slots], slots

    # ------------------------------------------------------------------ waiting
    def _wait(self, refs: list[Any], timeout_s: float,
              timeout_name: str = "VLLM_WORKER_STEP_TIMEOUT_S") -> list[Any]:
        """Every reply of ``refs`` (one per rank, in rank order). A failing rank stops the
        engine at once (``WorkerFailure``), not when the others time out; the report leads
        with a rank whose actor died, if one did within ``FAILURE_GRACE_S`` of the first
        failure (when a host is lost, its peers' collectives fail first, with a connection
        error that names no one)."""
        import ray
        from ray.exceptions import RayActorError, RayError

        if self._failed is not None:
            raise WorkerFailure(self._failed)
        rank_of = {ref: r for r, ref in enumerate(refs)}
        values: dict[int, Any] = {}
        died: list[str] = []
        failed: list[str] = []
        pending = list(refs)
        deadline = time.monotonic() + timeout_s
        while pending and not died:
            left = deadline - time.monotonic()
            if left <= 0:
                if failed:
                    break
                hung = sorted(rank_of[r] for r in pending)
                self._fail(f"no reply from worker rank(s) {hung} for {timeout_s:.0f} s: a "
                           f"worker hung (set {timeout_name} to wait longer)")
            ready, pending = ray.wait(pending, num_returns=1, timeout=min(left, 1.0))
            for ref in ready:
                rank = rank_of[ref]
                try:
                    values[rank] = ray.get(ref)
                except RayActorError as e:
                    died.append(f"worker rank {rank} (Ray actor) died: {_plain(e)}")
                except RayError as e:
                    failed.append(f"worker failed: rank {rank}: {_plain(e)}")
                    if len(failed) == 1:
                        deadline = min(deadline, time.monotonic() + FAILURE_GRACE_S)
        if died or failed:
            self._fail("; then ".join(died + failed))
        return [values[r] for r in range(len(refs))]

    def _fail(self, why: str) -> None:
        self._failed = f"distributed engine stopped: {why}"
        logger.error("%s", self._failed)
        self._abort()
        raise WorkerFailure(self._failed)

    def _abort(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.placement is not None:
            try:
                remove_placement_group(self.placement)
            except Exception:  # noqa: BLE001
                pass
            self.placement = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    # ------------------------------------------------------------------ executor contract
    def check_health(self) -> None:
        """Raise ``WorkerFailure`` once the executor has failed (a rank died, hung or raised),
        or when a rank's actor died while the engine was idle (a lost host): every
        ``HEALTH_PING_S`` each actor gets a no-op call, and a call that failed because its
        actor died is reported (the others, still queued behind a step, are just left).
        Cheap and non-blocking; any thread (the server's watchdog calls it). It kills
        nothing: the engine's shutdown does."""
        if self._failed is not None:
            raise WorkerFailure(self._failed)
        dead = self._dead_from_pings()
        if dead:
            self._failed = "distributed engine stopped: " + "; ".join(dead)
            logger.error("%s", self._failed)
            raise WorkerFailure(self._failed)

    def _dead_from_pings(self) -> list[str]:
        import ray
        from ray.exceptions import RayActorError, RayError

        with self._ping_lock:
            if self._pings:
                refs = list(self._pings)
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                dead = []
                for ref in ready:
                    try:
                        ray.get(ref)
                    except RayActorError as e:
                        dead.append(f"worker rank {self._pings[ref]} (Ray actor) died: "
                                    f"{_plain(e)}")
                    except RayError:
                        pass                    # not a death; a step call reports it
                if dead or len(ready) < len(refs):
                    return dead
                self._pings = {}
            if self.actors and time.monotonic() - self._last_ping >= HEALTH_PING_S:
                self._pings = {a.ping.remote(): r for r, a in enumerate(self.actors)}
                self._last_ping = time.monotonic()
        return []

    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        """Call ``method(*args)`` on every rank's worker; their results in rank order."""
        return self._wait([a.call.remote(method, *args) for a in self.actors],
                          self.step_timeout_s)

    def execute_model_async(self, scheduler_output: SchedulerOutput) -> _PendingStep:
        import ray

        if self._failed is not None:
            raise WorkerFailure(self._failed)
        payload = pickle.dumps(scheduler_output, protocol=pickle.HIGHEST_PROTOCOL)
        arg = payload if len(payload) <= self.inline_max_bytes else ray.put(payload)
        return _PendingStep(self, [a.execute_pickled.remote(arg) for a in self.actors])

    def shutdown(self) -> None:
        """Stop every actor, free the placement group, and stop a Ray instance this executor
        started (idempotent)."""
        if not self.actors:
            return
        if self._failed is None:
            try:
                self._wait([a.call.remote("shutdown") for a in self.actors], 10.0)
            except Exception as e:  # noqa: BLE001 - stopping them anyway
                logger.warning("workers did not shut down cleanly: %s", e)
        self._abort()

    def __repr__(self) -> str:
        return f"RayExecutor(world_size={self.world_size})"
