"""Encoder scheduling, torch-free: chunks are cut before an image that does not fit the
step's encoder budget, outputs are reused by hash, references end when the image's last
placeholder is computed, idle outputs are evicted LRU and reported once; the scheduler sends
the encoder work and frees in ``SchedulerOutput``; prefix-cache block keys carry image hashes."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_core.config import CacheConfig, SchedulerConfig
from vllm_core.engine.encoder_scheduler import EncoderScheduler
from vllm_core.engine.prefix_cache import update_block_hashes
from vllm_core.engine.request import Request
from vllm_core.engine.scheduler import Scheduler
from vllm_core.messages import ModelRunnerOutput
from vllm_core.multimodal.inputs import ImageItem, MultiModalFeatures
from vllm_core.sampling.params import SamplingParams


def item(h: str, offset: int, length: int) -> ImageItem:
    return ImageItem(hash=h, offset=offset, length=length,
                     pixel_values=np.zeros((length * 4, 8), np.float32), grid_thw=(1, 2, 2))


def request(rid: str, n: int, items: list[ImageItem]) -> Request:
    r = Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=2, temperature=0.0))
    r.mm_features = MultiModalFeatures(items=items)
    return r


def test_clip_cuts_before_an_image_over_budget_and_reuses_by_hash():
    enc = EncoderScheduler(budget_tokens=10, capacity_tokens=20)
    a = request("a", 30, [item("x", 2, 8), item("y", 12, 6)])
    b = request("b", 30, [item("x", 4, 8)])
    enc.begin_step()
    assert enc.clip(a, 0, 30) == 12            # x fits (8), y does not (8 + 6 > 10)
    assert enc.clip(b, 0, 30) == 30            # x is already being encoded: reused
    todo, freed = enc.end_step()
    assert [it.hash for it in todo] == ["x"] and freed == []
    enc.begin_step()
    assert enc.clip(a, 12, 18) == 18           # now y is encoded
    todo, _ = enc.end_step()
    assert [it.hash for it in todo] == ["y"]


def test_mid_image_chunk_keeps_reference_until_last_placeholder():
    enc = EncoderScheduler(budget_tokens=8, capacity_tokens=8)
    a = request("a", 20, [item("x", 2, 8)])
    c = request("c", 20, [item("z", 0, 8)])
    enc.begin_step()
    assert enc.clip(a, 0, 5) == 5              # splits x's run: x encoded, still referenced
    enc.end_step()
    enc.begin_step()
    assert enc.clip(c, 0, 8) == 0              # cache full of x, in use: c waits
    enc.unschedule(c)
    assert enc.clip(a, 5, 15) == 15            # a finishes x in this step
    _, freed = enc.end_step()
    assert freed == []
    enc.begin_step()
    assert enc.clip(c, 0, 8) == 8              # x idle now: evicted for z
    todo, freed = enc.end_step()
    assert [it.hash for it in todo] == ["z"] and freed == ["x"]


def test_check_request_refuses_an_image_larger_than_the_budget():
    enc = EncoderScheduler(budget_tokens=8, capacity_tokens=8)
    with pytest.raises(ValueError, match="takes 9 tokens, more than the encoder budget"):
        enc.check_request(request("a", 20, [item("x", 0, 9)]))


def test_scheduler_sends_encoder_inputs_and_frees():
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16,
                                      enable_chunked_prefill=True),
                      CacheConfig(block_size=4, num_blocks=64, enable_prefix_caching=False),
                      max_model_len=64)
    a = request("a", 20, [item("x", 2, 10)])
    b = request("b", 20, [item("w", 1, 10)])
    sched.add_request(a)
    sched.add_request(b)
    so = sched.schedule()
    # a takes 16 tokens (x encoded); b's image does not fit the rest of the encoder budget
    assert so.num_scheduled_tokens == {"a": 16}
    assert [it.hash for it in so.scheduled_encoder_inputs] == ["x"]
    sched.update_from_output(so, ModelRunnerOutput(sampled_token_ids={"a": []}))
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"a": 4, "b": 12}
    assert [it.hash for it in so.scheduled_encoder_inputs] == ["w"]
    # x was fully computed in step 1, so it is idle and evicted to make room for w
    assert so.free_encoder_hashes == ["x"]


def test_encoder_budget_setting():
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64,
                                      encoder_budget_tokens=12),
                      CacheConfig(block_size=4, num_blocks=64, enable_prefix_caching=False),
                      max_model_len=64)
    assert sched.encoder.budget_tokens == 12
    with pytest.raises(ValueError, match="encoder_budget_tokens"):
        sched.add_request(request("a", 30, [item("x", 2, 16)]))


def test_block_hashes_differ_only_where_images_differ():
    one = request("a", 12, [item("x", 4, 4)])
    two = request("b", 12, [item("y", 4, 4)])
    h1, h2 = update_block_hashes(one, 4), update_block_hashes(two, 4)
    assert h1[0] == h2[0]                      # block 0: text only
    assert h1[1] != h2[1] and h1[2] != h2[2]   # the image block and everything after it
