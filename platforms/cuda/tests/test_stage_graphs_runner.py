"""The CUDA runner's pipeline-stage graph path, driven on the CPU: two ``CudaModelRunner``
stages (PP=2, micro-batching's token hand-over) in one process, joined by a loopback pipe,
with graphs stood in by ``RerunGraphs`` (capture records the forward, replay re-runs it over
the same static buffers a CUDA graph reads: the step inputs, the stage's static intermediate
inputs and outputs). Decode steps pad to the captured sizes, the received intermediates must
be copied into the static inputs and the sent ones come from the static outputs, or the
tokens differ from HF's greedy continuation. Attention is the Triton backend (interpreted on
the CPU; on a GPU machine the stages run on the GPU, still with the stand-in graphs). The real
graphs run on two GPUs (``test_pipeline_graphs_gpu.py``)."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from vllm_core.distributed.communicator import SingleRankCommunicator
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.messages import CachedRequestData, NewRequestData, SchedulerOutput
from vllm_core.model_executor.testing import (
    hf_greedy_tokens,
    random_hf_causal_lm,
    write_wordlevel_tokenizer,
)
from vllm_core.sampling.params import SamplingParams
from vllm_core_cuda.graphs import DecodeGraphs
from vllm_core_cuda.model_runner import CudaModelRunner

# Triton runs interpreted only where there is no GPU (conftest): elsewhere tensors must be there
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RerunGraphs(DecodeGraphs):
    """A graph set whose replay re-runs the recorded forward (reads the same buffers)."""

    def capture(self, prepare, forward, warmup_runs=2, capture_error_mode="global", pool=None):
        self.pool = pool if pool is not None else object()
        self.forward = forward
        self.graphs = dict.fromkeys(self.sizes)
        self.replayed: list[int] = []
        return 0.0

    def replay(self, size):
        self.replayed.append(size)
        out = self.forward(size)
        if self.logits is None:
            assert out is None
            return None
        rows = size * self.query_len
        self.logits[:rows].copy_(out)
        return self.logits[:rows]


class CpuStageRunner(CudaModelRunner):
    pin_memory = False
    graphs_cls = RerunGraphs

    def new_step_event(self):
        return None


class Pipe(SingleRankCommunicator):
    """A stage's PP communicator: ``send`` appends to the shared queue, ``recv`` pops it."""

    def __init__(self, rank: int, queue: deque) -> None:
        super().__init__(rank=rank, ranks=[0, 1])
        self.queue = queue

    def send(self, x, dst):
        self.queue.append(x.clone())

    def recv(self, shape, dtype, device, src):
        x = self.queue.popleft()
        assert tuple(x.shape) == tuple(shape) and x.dtype == dtype
        return x


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stage_runner"))
    hf = random_hf_causal_lm("llama", dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None),
        seed=7, weight_scale=0.08)
    hf.save_pretrained(path)
    write_wordlevel_tokenizer(path, 256)
    return path, hf


def _stages(folder: str, graph_sizes: list[int]) -> list[CpuStageRunner]:
    from vllm_core_triton.attention import TritonAttentionBackend

    config, _ = EngineArgs(model=folder, dtype="float32", max_model_len=64, max_num_seqs=4,
                           max_num_batched_tokens=64, pipeline_parallel_size=2,
                           pipeline_micro_batching=True, seed=0).create_engine_config()
    config.graph_batch_sizes = graph_sizes
    config.cache.block_size = 16
    assert config.parallel.max_concurrent_batches == 2      # tokens from the scheduler
    queue: deque = deque()
    world = SingleRankCommunicator(rank=0, ranks=[0, 1])
    runners = []
    for rank in range(2):
        par = ParallelContext(tp_size=1, tp_rank=0, pp_size=2, pp_rank=rank,
                              tp=SingleRankCommunicator(), pp=Pipe(rank, queue), world=world)
        runner = CpuStageRunner(config, DEVICE, TritonAttentionBackend,
                                parallel=par)
        runner.load_model()
        runner.initialize_cache(32)
        runner.capture_graphs()
        runners.append(runner)
    return runners


def _run(runners, prompts: list[list[int]], max_tokens: int, finish_after: int):
    """Greedy generation through both stages with hand-made scheduler outputs (the request
    ``r2`` finishes after ``finish_after`` decode steps, so the batch shrinks to 2)."""
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = [f"r{i}" for i in range(len(prompts))]
    out = {r: [] for r in ids}
    new = [NewRequestData(r, p, greedy, [1 + 4 * i + b for b in range(4)], 0)
           for i, (r, p) in enumerate(zip(ids, prompts, strict=True))]
    so = SchedulerOutput(new, [], {r: len(p) for r, p in zip(ids, prompts, strict=True)},
                         sum(map(len, prompts)), sampling_req_ids=frozenset(ids))
    live = list(ids)
    for step in range(max_tokens):
        results = [runner.execute_model(so) for runner in runners]
        for r in live:
            out[r] += results[1].sampled_token_ids[r]
        assert not any(results[0].sampled_token_ids.values())   # stage 0 does not sample
        if step == max_tokens - 1:
            break
        finished = set()
        if step == finish_after:
            finished = {"r2"}
            live.remove("r2")
        cached = [CachedRequestData(r, [], len(prompts[ids.index(r)]) + len(out[r]) - 1,
                                    [out[r][-1]]) for r in live]
        so = SchedulerOutput([], cached, dict.fromkeys(live, 1), len(live),
                             finished_req_ids=finished, sampling_req_ids=frozenset(live))
    return out


def test_two_stage_graph_path_matches_hf_greedy(folder):
    path, hf = folder
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 11, 3)]
    runners = _stages(path, [1, 2, 4])
    first, last = runners
    assert first.graphs.logits is None and last.graphs.logits is not None
    assert first.stage_buffers.gives_output and not first.stage_buffers.takes_input
    assert last.stage_buffers.takes_input and not last.stage_buffers.gives_output
    got = _run(runners, prompts, max_tokens=6, finish_after=2)
    for runner in runners:
        # 5 decode steps: 3 requests pad to 4 (twice, r2 finishing after the second),
        # then 2 requests use the graph of 2
        assert runner.graphs.replayed == [4, 4, 2, 2, 2]
        assert runner.num_graph_steps == 5 and runner.num_eager_steps == 1
    want = {f"r{i}": hf_greedy_tokens(hf, p, 6) for i, p in enumerate(prompts)}
    want["r2"] = want["r2"][:3]             # finished after its third token
    assert got == want
