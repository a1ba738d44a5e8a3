"""A vocabulary table (token embedding / LM head) kept quantized in the ``WNA16Weight`` layout.

A GGUF file stores its embedding (often shared with the LM head, ``tie_word_embeddings``) in a
block type such as Q8_0 or Q6_K. De-quantized to float32 the SmolLM2-135M table is 49152 x 576
x 4 bytes = 113 MB, read whole by the LM head at every decode step; kept in 8 bits it is 4x
fewer bytes (plus the group scales and zero points). The table is then used two ways:

- LM head: ``ops.wna16_linear(hidden, table)``, the platform's int4 / int8 kernel (the CPU
  plugin's C++ GEMV), with the vocabulary rows as the kernel's output features;
- embedding: ``wna16_rows(table, ids, dtype)`` de-quantizes only the looked-up rows (a column
  gather of the ``[K // p, N]`` words and ``[G, N]`` scales / zero points), so no float copy
  of the table is kept.

Both give exactly the float path's values of the de-quantized weight
(``W = (q - z) * s`` in float32, then cast), so the lookup matches ``F.embedding`` of
``dequantize_wna16(table)`` bit for bit.
"""

from __future__ import annotations

import torch

from vllm_core.model_executor.quantization.quantized_weights import WNA16Weight


def wna16_rows(w: WNA16Weight, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``ids`` (output features, int64 ``[T]``, each in ``[0, w.out_features)``) of the
    de-quantized weight, ``[T, K]`` in ``dtype``: ``dequantize_wna16(w, dtype)[ids]`` without
    de-quantizing the other rows. ``w`` must have no act-order ``g_idx``."""
    if w.g_idx is not None:
        raise ValueError("wna16_rows: act-order g_idx is not supported for vocabulary tables")
    p = w.pack
    words = w.qweight.index_select(1, ids).t()                       # [T, K // p] int32
    shifts = torch.arange(p, device=words.device, dtype=torch.int32) * w.bits
    q = (words.unsqueeze(-1) >> shifts) & ((1 << w.bits) - 1)        # [T, K // p, p]
    q = q.reshape(ids.shape[0], w.in_features // w.group_size, w.group_size).float()
    scales = w.scales.index_select(1, ids).t().float().unsqueeze(-1)  # [T, G, 1]
    zeros = w.zeros.index_select(1, ids).t().float().unsqueeze(-1)
    return ((q - zeros) * scales).reshape(ids.shape[0], w.in_features).to(dtype)


def pad_outputs(w: WNA16Weight, out_features: int) -> WNA16Weight:
    """``w`` with zero output features appended up to ``out_features`` (the padding rows of
    the last vocabulary shard: ``q = z = s = 0``, so the de-quantized rows are 0)."""
    extra = out_features - w.out_features
    if extra < 0:
        raise ValueError(f"cannot pad {w.out_features} output features down to "
                         f"{out_features}")
    if extra == 0:
        return w

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(t.shape[0], extra)], dim=1)

    return WNA16Weight(pad(w.qweight), pad(w.scales), pad(w.zeros), None, w.bits,
                       w.group_size, w.in_features, out_features)
