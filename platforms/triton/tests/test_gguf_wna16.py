"""GGUF weights kept quantized run through the Triton WNA16 kernel: Q4_1 (group 32, float zero
points) and Q6_K (group 16, 6-bit values in 8-bit storage) repacked by ``gguf_blocks`` against
``gguf.quants.dequantize`` + matmul (``TRITON_INTERPRET=1`` without a GPU, conftest.py)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from vllm_core_triton.kernels.wna16 import wna16_linear

from vllm_core.model_executor.quantization.gguf_blocks import FORMATS, decode_rows

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def blocks(kind: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if kind in ("Q4_0", "Q4_1", "Q8_0"):
        return gguf.quants.quantize(rng.normal(0, 0.05, (n, k)).astype(np.float32),
                                    getattr(gguf.GGMLQuantizationType, kind))
    fmt = FORMATS[kind]
    b = rng.integers(0, 256, (n * k // fmt.block, fmt.block_bytes), dtype=np.uint8)
    for off in (208,) if kind == "Q6_K" else (0, 2):
        b[:, off:off + 2] = (np.abs(rng.normal(0, 2e-3, (b.shape[0], 1))) + 1e-4).astype(
            np.float16).view(np.uint8)
    return b.reshape(n, -1)


@pytest.mark.parametrize("kind", ["Q4_1", "Q6_K", "Q4_K"])
@pytest.mark.parametrize("rows", [1, 5])
def test_gguf_weight_through_triton_wna16(kind, rows):
    rng = np.random.default_rng(rows)
    n, k = 64, 256
    data = blocks(kind, n, k, rng)
    ref_w = torch.from_numpy(gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType,
                                                                  kind)).reshape(n, k))
    fmt = FORMATS[kind]
    w = decode_rows(kind, data, k).to_wna16(fmt.storage_bits)
    x = torch.from_numpy(rng.normal(0, 1, (rows, k)).astype(np.float32))
    got = wna16_linear(x.to(DEVICE), w.qweight.to(DEVICE), w.scales.to(DEVICE),
                       w.zeros.to(DEVICE), None, w.bits, w.group_size, None)
    torch.testing.assert_close(got.cpu(), x @ ref_w.t(), atol=1e-4, rtol=1e-4)
