"""Host-side parts of the CUDA runner that need no device: the graph size lookup (runs
everywhere, CI included)."""

from __future__ import annotations

import pytest
import torch

from vllm_core_cuda.graphs import DecodeGraphs


def test_graph_padded_size():
    g = DecodeGraphs([8, 1, 2, 4, 16, 8], vocab_size=3, device=torch.device("cpu"))
    assert g.sizes == [1, 2, 4, 8, 16] and g.logits.shape == (16, 3)
    assert [g.padded_size(n) for n in (1, 3, 5, 8, 9, 16, 17)] == [1, 4, 8, 8, 16, 16, None]
    with pytest.raises(ValueError, match="graph batch sizes"):
        DecodeGraphs([], vocab_size=3, device=torch.device("cpu"))
