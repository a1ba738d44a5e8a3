"""Each rank reads only its slices of the checkpoint: the parameters of TP rank r (of 2) and of
pipeline stage s (of 2) are exactly the matching slices of the HF model's tensors, sharded
tensors are never read whole, and a stage never reads another stage's layers. No processes:
the rank's communicators are built for its position without collectives."""

from __future__ import annotations

import pytest
import torch

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.distributed.communicator import SingleRankCommunicator
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.hf_config import arch_config_from_hf
from vllm_core.model_executor.loader import build_model
from vllm_core.model_executor.safetensors_loader import iter_safetensors_lazy
from vllm_core.model_executor.testing import random_hf_causal_lm
from vllm_core.model_executor.weight_source import LazyTensor


def context(tp_rank: int, tp: int, pp_rank: int, pp: int) -> ParallelContext:
    def comm(rank: int, size: int) -> SingleRankCommunicator:
        return SingleRankCommunicator(rank=rank, ranks=list(range(size)))

    return ParallelContext(tp_size=tp, tp_rank=tp_rank, pp_size=pp, pp_rank=pp_rank,
                           tp=comm(tp_rank, tp), pp=comm(pp_rank, pp), world=comm(0, tp * pp))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sharded"))
    hf = random_hf_causal_lm("qwen2", dict(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False), seed=3)
    hf.save_pretrained(path)
    return path, hf.state_dict(), arch_config_from_hf(hf.config.to_dict())


def recording(path: str, reads: list):
    for name, src in iter_safetensors_lazy(path):
        def reader(dim, start, size, src=src, name=name):
            reads.append((name, dim))
            return src.read(dim, start, size)
        yield name, LazyTensor(src.shape, reader)


@pytest.mark.parametrize("tp_rank,pp_rank,tp,pp", [(1, 0, 2, 1), (0, 1, 1, 2)])
def test_rank_reads_only_its_slices(checkpoint, tp_rank, pp_rank, tp, pp):
    path, hf, arch = checkpoint
    par = context(tp_rank, tp, pp_rank, pp)
    model = build_model(arch, ReferenceAttentionBackend, torch.device("cpu"),
                        torch.float32, parallel=par)
    reads: list = []
    loaded = model.load_weights(recording(path, reads))
    missing = {k for k in model.expected_weight_keys() - loaded if k.split("[")[0] not in loaded}
    assert not missing
    whole = {n for n, dim in reads if dim is None}
    if tp > 1:           # only norms (replicated) are read whole
        assert all("norm" in n for n in whole), whole
        params = dict(model.named_parameters())
        q = hf["model.layers.1.self_attn.q_proj.weight"]        # 4 heads x 8: rank 1 rows 16..
        k = hf["model.layers.1.self_attn.k_proj.bias"]
        qkv = params["model.layers.1.self_attn.qkv_proj.weight"]
        assert torch.equal(qkv[:16], q[16:32])
        assert torch.equal(params["model.layers.1.self_attn.qkv_proj.bias"][16:24], k[8:16])
        o = hf["model.layers.1.self_attn.o_proj.weight"]
        assert torch.equal(params["model.layers.1.self_attn.o_proj.weight"], o[:, 16:32])
        down = hf["model.layers.0.mlp.down_proj.weight"]
        assert torch.equal(params["model.layers.0.mlp.down_proj.weight"], down[:, 24:48])
        up = hf["model.layers.0.mlp.up_proj.weight"]
        assert torch.equal(params["model.layers.0.mlp.gate_up_proj.weight"][24:], up[24:48])
        emb = params["model.embed_tokens.weight"]                # 101 rows: rank 1 has 50
        assert emb.shape[0] == 51 and torch.equal(emb[:50], hf["model.embed_tokens.weight"][51:])
        assert torch.equal(emb[50], torch.zeros(32))
    else:                # stage 1 of 2: layer 1, the norm and the LM head only
        assert not [n for n, _ in reads if n.startswith(("model.layers.0.", "model.embed"))]
        assert model.model.embed_tokens is None and model.model.norm is not None
        assert torch.equal(dict(model.named_parameters())["lm_head.weight"],
                           hf["lm_head.weight"])
