"""Expert-load accounting: per-EP-rank routed pairs from the FusedMoE counters (reset per
snapshot), the outputs of an expert-parallel rank, and the per-step load reaching the engine's
stat loggers (``IterationStats.expert_load``) and the Prometheus gauge."""

from __future__ import annotations

import torch

from vllm_core.distributed.communicator import SingleRankCommunicator
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.layers.fused_moe import FusedMoE
from vllm_core.model_executor.layers.fused_moe.load_stats import (
    ExpertLoadTracker,
    load_imbalance,
)
from vllm_core.model_executor.layers.fused_moe.torch_moe import reference_fused_moe
from vllm_core.model_executor.layers.ops import TorchLayerOps


def _ep_rank0_layer(seed: int) -> FusedMoE:
    """EP rank 0 of 2 (experts 0 and 1 of 4); the group's all-reduce is the identity here."""
    pair = SingleRankCommunicator(ranks=[0, 1])
    ctx = ParallelContext(tp_size=2, tp_rank=0, pp_size=1, pp_rank=0, tp=pair,
                          pp=SingleRankCommunicator(), world=pair, enable_expert_parallel=True)
    layer = FusedMoE(4, 2, 8, 6, True, "softmax", TorchLayerOps(), ctx)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.w13_weight.copy_(torch.randn(layer.w13_weight.shape, generator=gen))
        layer.w2_weight.copy_(torch.randn(layer.w2_weight.shape, generator=gen))
    return layer


def test_ep_rank_computes_its_experts_and_tracker_counts_per_rank():
    layers = [_ep_rank0_layer(s) for s in (0, 1)]
    assert layers[0].w13_weight.shape == (2, 12, 8)
    # token 0 -> experts {0, 1}, token 1 -> {2, 3}, token 2 -> {0, 1}
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0], [0.0, 0.0, 5.0, 4.0], [4.0, 5.0, 0.0, 0.0]])
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    out = layers[0](x, logits)
    weights, ids = torch.topk(torch.softmax(logits, -1), 2, -1)
    weights = weights / weights.sum(-1, keepdim=True)
    local = torch.where(ids < 2, ids, torch.full_like(ids, -1))      # rank 0's experts only
    torch.testing.assert_close(out, reference_fused_moe(x, layers[0].w13_weight,
                                                        layers[0].w2_weight, weights, local))
    assert out[1].abs().max() == 0                     # token 1 went to rank 1's experts only
    layers[1](x, logits)
    tracker = ExpertLoadTracker(layers)
    assert tracker.num_ranks == 2
    assert tracker.snapshot().tolist() == [8, 4]       # 2 layers x (4 pairs, 2 pairs)
    assert tracker.snapshot().tolist() == [0, 0]       # reset by the snapshot
    assert load_imbalance([8, 4]) == 8 / 6 and load_imbalance([0, 0]) == 1.0


def test_engine_reports_expert_load_per_step(tmp_path):
    from vllm_core import LLM, SamplingParams
    from vllm_core.engine.stats import IterationStats, SchedulerStats
    from vllm_core.entrypoints.openai.metrics import PrometheusStatLogger
    from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

    cfg = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
               num_experts_per_tok=2, moe_intermediate_size=16, max_position_embeddings=128)
    random_hf_causal_lm("qwen3_moe", cfg).save_pretrained(str(tmp_path))
    write_wordlevel_tokenizer(str(tmp_path), 101)

    class Recorder:
        def __init__(self) -> None:
            self.loads: list[list[int] | None] = []

        def record(self, s: SchedulerStats, it: IterationStats) -> None:
            self.loads.append(it.expert_load)

    llm = LLM(str(tmp_path), dtype="float32", max_model_len=64, num_gpu_blocks_override=32,
              enforce_eager=True)
    recorder, prom = Recorder(), PrometheusStatLogger()
    prom.bind("moe", 64)
    llm.llm_engine.stat_loggers.extend([recorder, prom])
    try:
        llm.generate([{"prompt_token_ids": [1, 2, 3, 4, 5]}, {"prompt_token_ids": [7, 8]}],
                     SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True),
                     use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    loads = [load for load in recorder.loads if load is not None]
    # every sampling step reports one EP group (no expert parallelism) with 2 layers x top-2
    # pairs per scheduled token: the first step 7 tokens, then 2 decode tokens per step
    assert loads[0] == [2 * 2 * 7] and all(load == [2 * 2 * 2] for load in loads[1:])
    assert b"vllm:moe_expert_load_imbalance" in prom.exposition()
