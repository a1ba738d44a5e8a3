"""``engine/ray_placement.py`` without a cluster: which placements can never be met (each
strategy, the message naming every node) and how the actors Ray placed are numbered (a
node's ranks consecutive, the driver's node first, device indices and visible devices) and
the rendezvous address."""

from __future__ import annotations

import pytest

from vllm_core.engine.ray_placement import (
    ActorSite,
    NodeResources,
    assign_ranks,
    rendezvous_method,
    unplaceable,
)

TWO_NODES = [NodeResources("aaaa1111", "10.0.0.1", {"GPU": 2.0, "CPU": 8.0}),
             NodeResources("bbbb2222", "10.0.0.2", {"GPU": 2.0, "CPU": 8.0})]


@pytest.mark.parametrize(("world", "strategy", "ok"), [
    (4, "PACK", True), (5, "PACK", False), (4, "SPREAD", True), (5, "SPREAD", False),
    (2, "STRICT_PACK", True), (3, "STRICT_PACK", False),
    (2, "STRICT_SPREAD", True), (3, "STRICT_SPREAD", False)])
def test_unplaceable_per_strategy(world, strategy, ok):
    why = unplaceable(TWO_NODES, world, "GPU", strategy)
    assert (why is None) == ok
    if not ok:
        assert f"cannot hold {world} ranks of one GPU each with placement strategy {strategy}"\
            in why
        assert "node aaaa1111 (10.0.0.1): 2 GPU; node bbbb2222 (10.0.0.2): 2 GPU" in why


def test_unplaceable_names_a_missing_resource_and_unknown_strategy():
    why = unplaceable(TWO_NODES[:1], 1, "TPU", "PACK")
    assert "needs 1 TPU in all" in why and "(10.0.0.1): 0 TPU" in why
    assert "no alive node" in unplaceable([], 1, "CPU", "PACK")
    with pytest.raises(ValueError, match="unknown Ray placement strategy 'pack'"):
        unplaceable(TWO_NODES, 1, "GPU", "pack")


def test_ranks_are_consecutive_per_node_driver_node_first():
    # Ray put bundles 0 and 2 on node b, 1 and 3 on node a; the driver runs on node a
    sites = [ActorSite(0, "b", "10.0.0.2", 100, ("1",)), ActorSite(1, "a", "10.0.0.1", 200, ("3",)),
             ActorSite(2, "b", "10.0.0.2", 101, ("0",)), ActorSite(3, "a", "10.0.0.1", 201, ("2",))]
    slots = assign_ranks(sites, driver_node_id="a")
    assert [s.rank for s in slots] == [0, 1, 2, 3]
    assert [(s.node_id, s.bundle) for s in slots] == [("a", 1), ("a", 3), ("b", 0), ("b", 2)]
    # every rank of a node sees that node's GPUs (union, numeric order); its index is its own
    assert [s.visible_devices for s in slots] == [("2", "3")] * 2 + [("0", "1")] * 2
    assert [s.local_rank for s in slots] == [1, 0, 1, 0]
    assert [s.local_world_size for s in slots] == [2] * 4
    assert [s.pid for s in slots] == [200, 201, 100, 101]
    # a TP=2 x PP=2 layout: each TP group (ranks 0-1, 2-3) on one node
    assert slots[0].node_id == slots[1].node_id != slots[2].node_id == slots[3].node_id


def test_driver_without_ranks_keeps_ray_order_and_cpu_ranks_count_per_node():
    sites = [ActorSite(0, "x", "10.0.0.3", 1), ActorSite(1, "y", "10.0.0.4", 2),
             ActorSite(2, "x", "10.0.0.3", 3)]
    slots = assign_ranks(sites, driver_node_id="head")
    assert [(s.node_id, s.bundle) for s in slots] == [("x", 0), ("x", 2), ("y", 1)]
    assert [s.local_rank for s in slots] == [0, 1, 0]
    assert [s.visible_devices for s in slots] == [()] * 3
    assert [s.local_world_size for s in slots] == [2, 2, 1]


def test_device_ids_sort_numerically():
    sites = [ActorSite(i, "n", "ip", i, (d,)) for i, d in enumerate(["10", "2", "GPU-uuid"])]
    slots = assign_ranks(sites, None)
    assert slots[0].visible_devices == ("2", "10", "GPU-uuid")
    assert [s.local_rank for s in slots] == [1, 0, 2]


def test_rendezvous_method_brackets_ipv6():
    assert rendezvous_method("10.0.0.7", 29500) == "tcp://10.0.0.7:29500"
    assert rendezvous_method("fd00::2", 29500) == "tcp://[fd00::2]:29500"
