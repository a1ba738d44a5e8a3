"""Where the ``ray`` executor's ranks go on a Ray cluster: pure decisions, no Ray calls.

The executor (``engine/ray_executor.py``) asks Ray for a placement group of ``world_size``
bundles of one ``key`` each (``CPU``, ``GPU``...), with the strategy the user picked
(``ParallelConfig.ray_placement_strategy``, default ``PACK``). Two decisions around it live
here, so that they can be tested without a cluster:

* ``unplaceable``: before asking, whether the cluster's nodes could ever hold the bundles
  with that strategy (their *total* resources, not what is free now). A request that can
  never be met is refused at once, naming what is needed and what each node has, instead of
  waiting out the start timeout. A request that could be met but is not now (other jobs hold
  the resources) is the executor's to wait for, within ``VLLM_WORKER_START_TIMEOUT_S``.
* ``assign_ranks``: once Ray has put one actor in each bundle and every actor has said where
  it runs (``ActorSite``), which actor is which rank. Invariants:

  - the ranks of one node are consecutive (rank = pp_rank * tp + tp_rank, so a TP group,
    ``tp`` consecutive ranks, stays on one node whenever the node counts allow it; PP stages
    then cross the nodes, where one send per step is cheap);
  - the driver's node comes first when it holds ranks, then the nodes in the order of their
    first bundle (Ray's order, deterministic for one placement);
  - ``local_rank`` is the rank's device index in its own process. With devices (Ray gave the
    actor accelerator ids), every rank of a node sees the same devices, the union of the ids
    Ray gave that node's ranks in numeric order (``visible_devices``, to be set as the
    platform's device-control variable), and its index is the position of its own id in that
    list: ranks of one node can then reach each other's devices (peer memory, IPC). Without
    devices (the CPU) it is the rank's position among its node's ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_core.config import RAY_PLACEMENT_STRATEGIES


@dataclass(frozen=True, slots=True)
class NodeResources:
    """One alive node of the cluster: its id, address and *total* resources (``ray.nodes()``)."""

    node_id: str
    ip: str
    total: dict[str, float]


@dataclass(frozen=True, slots=True)
class ActorSite:
    """Where one actor (the one in bundle ``bundle``) runs: its node, that node's address,
    its pid and the accelerator ids Ray gave it for the placement key (empty on the CPU)."""

    bundle: int
    node_id: str
    ip: str
    pid: int
    device_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RankSlot:
    """Rank ``rank`` runs in the actor of bundle ``bundle`` on ``node_id`` (``ip``), with device
    index ``local_rank``; ``local_world_size`` ranks share its node; ``visible_devices``: the
    device ids its process should see (empty: leave the device-control variable alone)."""

    rank: int
    bundle: int
    node_id: str
    ip: str
    pid: int
    local_rank: int
    local_world_size: int
    visible_devices: tuple[str, ...] = ()


def _describe(nodes: list[NodeResources], key: str) -> str:
    return "; ".join(f"node {n.node_id[:8]} ({n.ip}): {n.total.get(key, 0.0):g} {key}"
                     for n in nodes) or "no alive node"


def unplaceable(nodes: list[NodeResources], world_size: int, key: str,
                strategy: str) -> str | None:
    """Why ``world_size`` bundles of one ``key`` can never be placed with ``strategy`` on
    ``nodes`` (their total resources), or None when they can. The reason names the need, the
    strategy and every node's ``key`` count."""
    if strategy not in RAY_PLACEMENT_STRATEGIES:
        raise ValueError(f"unknown Ray placement strategy {strategy!r}; known: "
                         f"{', '.join(RAY_PLACEMENT_STRATEGIES)}")
    per_node = [int(n.total.get(key, 0.0)) for n in nodes]
    if strategy == "STRICT_PACK":
        ok, need = max(per_node, default=0) >= world_size, f"one node with {world_size} {key}"
    elif strategy == "STRICT_SPREAD":
        ok = sum(1 for c in per_node if c >= 1) >= world_size
        need = f"{world_size} different nodes with 1 {key} each"
    else:
        ok, need = sum(per_node) >= world_size, f"{world_size} {key} in all"
    if ok:
        return None
    return (f"the Ray cluster cannot hold {world_size} ranks of one {key} each with placement "
            f"strategy {strategy}: that needs {need}, and its nodes have: "
            f"{_describe(nodes, key)}")


def assign_ranks(sites: list[ActorSite], driver_node_id: str | None) -> list[RankSlot]:
    """One ``RankSlot`` per actor, in rank order (the module docstring's invariants)."""
    by_node: dict[str, list[ActorSite]] = {}
    for site in sorted(sites, key=lambda s: s.bundle):
        by_node.setdefault(site.node_id, []).append(site)
    order = list(by_node)
    if driver_node_id in by_node:
        order.remove(driver_node_id)
        order.insert(0, driver_node_id)
    slots: list[RankSlot] = []
    for node_id in order:
        group = by_node[node_id]
        devices = sorted({d for s in group for d in s.device_ids}, key=_device_sort_key)
        for position, site in enumerate(group):
            local_rank = devices.index(site.device_ids[0]) if site.device_ids else position
            slots.append(RankSlot(rank=len(slots), bundle=site.bundle, node_id=node_id,
                                  ip=site.ip, pid=site.pid, local_rank=local_rank,
                                  local_world_size=len(group),
                                  visible_devices=tuple(devices) if site.device_ids else ()))
    return slots


def rendezvous_method(ip: str, port: int) -> str:
    """``torch.distributed``'s ``init_method`` at rank 0's node address ``ip`` (an IPv6
    address in brackets)."""
    return f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"


def _device_sort_key(device_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order ("2" before "10"), others (UUIDs) after, by name."""
    return (0, int(device_id)) if device_id.isdigit() else (1, device_id)
