"""Which devices a data-parallel engine core gets (used by the platforms' ``data_parallel_env``).

Core ``dp_rank`` of an engine whose cores have ``world_size`` (TP x PP) ranks each takes the
devices ``[dp_rank * world_size, (dp_rank + 1) * world_size)`` of those the front end sees:
the entries of the device-control variable when it is set (``CUDA_VISIBLE_DEVICES=4,5,6,7``:
core 1 of TP=2 gets ``6,7``), else the indices ``0 .. device_count - 1``. Inside the core the
devices are renumbered from 0, so each worker keeps using ``local_rank`` as its device index.
"""

from __future__ import annotations


def data_parallel_devices(visible: str | None, device_count: int, dp_rank: int,
                          world_size: int, env_var: str) -> list[str]:
    """The device ids (as the device-control variable ``env_var`` spells them) of core
    ``dp_rank``. ``visible``: the variable's current value (None or empty: unset).
    ``ValueError`` when there are fewer devices than ``(dp_rank + 1) * world_size``."""
    if dp_rank < 0 or world_size < 1:
        raise ValueError(f"bad data-parallel layout: dp_rank={dp_rank}, world_size={world_size}")
    ids = ([d.strip() for d in visible.split(",") if d.strip()] if visible
           else [str(i) for i in range(device_count)])
    need = (dp_rank + 1) * world_size
    if len(ids) < need:
        seen = f"{env_var}={visible}" if visible else f"{device_count} devices"
        raise ValueError(f"data-parallel engine core {dp_rank} needs devices "
                         f"{dp_rank * world_size}..{need - 1} ({world_size} per core: tensor x "
                         f"pipeline parallel size), but only {len(ids)} are visible ({seen}); "
                         f"lower --data-parallel-size or the ranks per core")
    return ids[dp_rank * world_size:need]
