"""M-RoPE positions of a prompt (Qwen2-VL / Qwen2.5-VL), computed on the host once per request.

Text tokens advance one position per token, the same on all three axes. An image's ``L``
placeholder tokens (a ``t x h' x w'`` grid of merged patches, row-major) start at the current
position ``s``: token ``(i, j, k)`` has positions ``(s + i, s + j, s + k)`` (for a still image
``t = 1``); the text after the image continues at ``s + max(t, h', w')``. ``delta`` is
``max position + 1 - P``: a generated token at sequence index ``p >= P`` has all three
positions ``p + delta``.
"""

from __future__ import annotations

import numpy as np

from vllm_core.multimodal.inputs import ImageItem


def mrope_positions(num_tokens: int, items: list[ImageItem], spatial_merge_size: int
                    ) -> tuple[np.ndarray, int]:
    """(positions int64 [3, num_tokens], delta) for a prompt whose image placeholder runs are
    ``items`` (ascending, disjoint)."""
    pos = np.zeros((3, num_tokens), dtype=np.int64)
    cur = 0
    prev_end = 0
    for it in items:
        text = it.offset - prev_end
        pos[:, prev_end:it.offset] = cur + np.arange(text)
        cur += text
        t, h, w = it.grid_thw
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        pos[0, it.offset:it.end] = cur + tt.reshape(-1)
        pos[1, it.offset:it.end] = cur + hh.reshape(-1)
        pos[2, it.offset:it.end] = cur + ww.reshape(-1)
        cur += max(t, gh, gw)
        prev_end = it.end
    pos[:, prev_end:] = cur + np.arange(num_tokens - prev_end)
    delta = int(pos.max()) + 1 - num_tokens if num_tokens else 0
    return pos, delta
