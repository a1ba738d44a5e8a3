"""``StepBuffers`` padding layouts: a padded decode batch and a padded verification batch
(``pad_token_batch``: one-token padding requests, then one request holding the leftover
padding tokens), on the host buffers of a CPU runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_core.worker.step_buffers import StepBuffers


def _buffers() -> StepBuffers:
    b = StepBuffers(64, 9, 4, torch.device("cpu"), pin_memory=False)
    for name in StepBuffers.NAMES:                 # stale values from an earlier step
        getattr(b, name + "_np")[...] = 7
    return b


def test_pad_decode_batch_adds_one_token_requests():
    b = _buffers()
    b.query_start_loc_np[:3] = [0, 1, 2]
    b.pad_decode_batch(2, 4)
    assert b.query_start_loc_np[:5].tolist() == [0, 1, 2, 3, 4]
    assert b.slot_mapping_np[2:4].tolist() == [-1, -1]
    assert b.seq_lens_np[2:4].tolist() == [1, 1] and (b.block_table_np[2:4] == 0).all()
    assert b.logits_indices_np[2:4].tolist() == [2, 3]
    assert b.slot_mapping_np[:2].tolist() == [7, 7]        # the real rows are untouched


def test_pad_token_batch_lays_out_a_verification_batch():
    """3 real requests of 5, 1 and 3 tokens padded to 4 (+1) requests of at most 5 tokens."""
    b = _buffers()
    b.query_start_loc_np[:4] = [0, 5, 6, 9]
    b.input_ids_np[:9] = np.arange(100, 109)
    b.pad_token_batch(3, 9, 4, 20)
    assert b.query_start_loc_np[:6].tolist() == [0, 5, 6, 9, 10, 20]
    assert b.input_ids_np[:9].tolist() == list(range(100, 109))      # real tokens kept
    assert (b.input_ids_np[9:20] == 0).all() and (b.slot_mapping_np[9:20] == -1).all()
    assert (b.positions_np[9:20] == 0).all()
    assert b.seq_lens_np[3:5].tolist() == [1, 10]           # the last holds the 10 leftovers
    assert b.context_lens_np[3:5].tolist() == [0, 0] and (b.block_table_np[3:5] == 0).all()
    assert b.logits_indices_np[9:20].tolist() == list(range(9, 20))


def test_pad_token_batch_with_no_padding_request_and_no_leftover():
    b = _buffers()
    b.query_start_loc_np[:3] = [0, 5, 10]
    b.pad_token_batch(2, 10, 2, 10)
    assert b.query_start_loc_np[:4].tolist() == [0, 5, 10, 10] and b.seq_lens_np[2] == 0
    with pytest.raises(ValueError, match="cannot pad"):
        b.pad_token_batch(2, 10, 3, 10)                     # no room for a padding request
