"""CUDA graphs per pipeline stage, the device-independent parts on the CPU: which decode sizes
are captured (with and without micro-batching), the static stage buffers (shapes per stage
position, copy-in, views, bounds) and the forward a stage's graph records, chained over three
stages of a random Llama through those buffers against the unsplit model. The graphs
themselves run on two GPUs (``test_pipeline_graphs_gpu.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import EngineConfig, ModelConfig, ParallelConfig
from vllm_core.distributed.communicator import SingleRankCommunicator
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.hf_config import arch_config_from_hf
from vllm_core.model_executor.loader import build_model
from vllm_core.model_executor.models.interface import IntermediateTensors
from vllm_core.model_executor.safetensors_loader import iter_safetensors_lazy
from vllm_core.model_executor.testing import random_hf_causal_lm
from vllm_core.worker.step_plan import plan_for_lengths
from vllm_core_cuda import platform as cuda_platform
from vllm_core_cuda.platform import (
    CudaPlatform,
    default_graph_batch_sizes,
    micro_batch_graph_sizes,
)
from vllm_core_cuda.stage_buffers import StageGraphBuffers, stage_forward


def test_micro_batch_graph_sizes_stop_at_the_half_batch():
    sizes = default_graph_batch_sizes(256)
    half = micro_batch_graph_sizes(sizes, 256, 2)
    assert half == [s for s in sizes if s <= 128] and half[-1] == 128
    assert micro_batch_graph_sizes(sizes, 256, 1) == sizes           # one step at a time
    assert micro_batch_graph_sizes(sizes, 200, 2)[-1] == 104         # ceil(200/2)=100 -> 104
    assert micro_batch_graph_sizes(sizes, 256, 3)[-1] == 88          # ceil(256/3)=86 -> 88
    assert micro_batch_graph_sizes([1, 2, 4], 1, 2) == [1]
    assert micro_batch_graph_sizes([], 256, 2) == []
    with pytest.raises(ValueError, match="depth"):
        micro_batch_graph_sizes(sizes, 256, 0)


def test_pipeline_parallel_keeps_graphs(monkeypatch):
    monkeypatch.setattr(cuda_platform, "device_capability", lambda index=0: (9, 0))

    def sizes(**parallel):
        cfg = EngineConfig(model=ModelConfig(model="m"), parallel=ParallelConfig(**parallel))
        CudaPlatform.check_and_update_config(cfg)
        return cfg.graph_batch_sizes

    full = default_graph_batch_sizes(256)
    assert sizes(pipeline_parallel_size=2) == full
    assert sizes(tensor_parallel_size=2, pipeline_parallel_size=2) == full
    micro = sizes(pipeline_parallel_size=2, pipeline_micro_batching=True)
    assert micro == micro_batch_graph_sizes(full, 256, 2) and micro[-1] == 128
    eager = EngineConfig(model=ModelConfig(model="m"), enforce_eager=True,
                         parallel=ParallelConfig(pipeline_parallel_size=2))
    CudaPlatform.check_and_update_config(eager)
    assert eager.graph_batch_sizes == []


def test_stage_buffers_per_stage_position():
    def make(first, last):
        return StageGraphBuffers.allocate(8, 4, torch.bfloat16, torch.device("cpu"), first, last)

    first, middle, last = make(True, False), make(False, False), make(False, True)
    assert not first.takes_input and first.gives_output
    assert middle.takes_input and middle.gives_output
    assert last.takes_input and not last.gives_output
    for t in (first.hidden_out, first.residual_out, last.hidden_in, last.residual_in):
        assert t.shape == (8, 4) and t.dtype == torch.bfloat16 and not t.any()
    with pytest.raises(RuntimeError, match="first pipeline stage"):
        first.inputs(2)
    with pytest.raises(RuntimeError, match="last pipeline stage"):
        last.outputs(2)
    with pytest.raises(ValueError, match="do not fit"):
        middle.inputs(9)
    with pytest.raises(ValueError, match="max_rows"):
        StageGraphBuffers.allocate(0, 4, torch.float32, torch.device("cpu"), False, True)
    assert StageGraphBuffers.allocate(4, 4, torch.float32, torch.device("cpu"), True,
                                      True).hidden_in is None


def test_load_copies_into_the_static_rows_a_graph_reads():
    stage = StageGraphBuffers.allocate(8, 4, torch.float32, torch.device("cpu"), False, False)
    captured = stage.inputs(6)            # what a graph of 6 rows was recorded reading
    received = IntermediateTensors(torch.randn(6, 4), torch.randn(6, 4))
    stage.load(received)
    assert captured.hidden.data_ptr() == stage.hidden_in.data_ptr()
    assert torch.equal(captured.hidden, received.hidden)
    assert torch.equal(captured.residual, received.residual)
    assert not stage.hidden_in[6:].any() and not stage.residual_in[6:].any()
    with pytest.raises(ValueError, match="rows"):
        stage.load(IntermediateTensors(torch.randn(6, 4), torch.randn(5, 4)))
    produced = IntermediateTensors(torch.randn(3, 4), torch.randn(3, 4))
    stage.store(produced)
    sent = stage.outputs(3)
    assert sent.hidden.data_ptr() == stage.hidden_out.data_ptr()
    assert torch.equal(sent.hidden, produced.hidden)
    assert torch.equal(sent.residual, produced.residual)


def _context(pp_rank: int, pp: int) -> ParallelContext:
    def comm(rank: int, size: int) -> SingleRankCommunicator:
        return SingleRankCommunicator(rank=rank, ranks=list(range(size)))

    return ParallelContext(tp_size=1, tp_rank=0, pp_size=pp, pp_rank=pp_rank, tp=comm(0, 1),
                           pp=comm(pp_rank, pp), world=comm(pp_rank, pp))


def test_stage_forward_chained_through_static_buffers_matches_the_whole_model(tmp_path):
    hf = random_hf_causal_lm("llama", dict(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False), seed=5)
    hf.save_pretrained(str(tmp_path))
    arch = arch_config_from_hf(hf.config.to_dict())
    cpu = torch.device("cpu")

    def load(parallel):
        model = build_model(arch, ReferenceAttentionBackend, cpu, torch.float32,
                            parallel=parallel)
        model.load_weights(iter_safetensors_lazy(str(tmp_path)))
        return model

    block_size = 16
    lengths = [5, 3]                          # two prompts, 8 token rows
    table = np.zeros((2, 1), dtype=np.int64)
    plan = plan_for_lengths([0, 0], lengths, table, block_size)
    md = ReferenceAttentionBackend.get_builder_cls()(block_size, cpu).build(
        plan.host_metadata(table, block_size))
    ids = torch.randint(0, arch.vocab_size, (8,), generator=torch.Generator().manual_seed(1))
    pos = torch.from_numpy(plan.positions)

    with torch.inference_mode():
        whole = load(None)
        want = whole.compute_local_logits(whole(ids, pos, [torch.empty(0)] * 3, md))
        sent = None
        for rank in range(3):
            model = load(_context(rank, 3))
            stage = StageGraphBuffers.allocate(16, arch.hidden_size, torch.float32, cpu,
                                               rank == 0, rank == 2)
            if sent is not None:
                stage.load(sent)              # copy-in before the (here: eager) replay
            out = stage_forward(model, ids, pos, [torch.empty(0)], md, stage)
            if rank < 2:
                assert out is None
                sent = IntermediateTensors(stage.outputs(8).hidden.clone(),
                                           stage.outputs(8).residual.clone())
                assert not stage.hidden_out[8:].any()      # rows past the step untouched
        got = out
    assert got.shape == want.shape == (8, arch.vocab_size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():                # no pipeline: stage None returns the logits
        torch.testing.assert_close(stage_forward(whole, ids, pos, [torch.empty(0)] * 3, md, None),
                                   want)
