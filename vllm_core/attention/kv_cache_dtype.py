"""``--kv-cache-dtype`` names and the torch dtype of the cache they select.

``auto``: the model dtype; ``bfloat16`` / ``float16`` / ``float32``: that dtype; ``fp8`` (=
``fp8_e4m3``): float8_e4m3fn, ``fp8_e5m2``: float8_e5m2, one byte per element, so the same
memory holds twice the blocks of a 16-bit cache. FP8 caches hold K and V with a per-tensor
scale of 1.0 (values are cast on write and widened to the query dtype on read, like vLLM's
default when a checkpoint carries no calibrated ``k_scale`` / ``v_scale``): e4m3 keeps 3
mantissa bits over +-448, e5m2 2 bits over +-57344.
"""

from __future__ import annotations

import torch

FP8_KV_CACHE_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                       "fp8_e5m2": torch.float8_e5m2}
FLOAT_KV_CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                         "float32": torch.float32}


def kv_cache_torch_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache dtype of ``--kv-cache-dtype name`` (``ValueError`` naming the known ones)."""
    if name == "auto":
        return model_dtype
    dtype = FP8_KV_CACHE_DTYPES.get(name) or FLOAT_KV_CACHE_DTYPES.get(name)
    if dtype is None:
        known = ["auto", *FLOAT_KV_CACHE_DTYPES, *FP8_KV_CACHE_DTYPES]
        raise ValueError(f"kv_cache_dtype {name!r} is not known (one of {', '.join(known)})")
    return dtype
