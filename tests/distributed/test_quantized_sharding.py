"""Quantized checkpoints shard like float ones: every TP rank's de-quantized weights are
exactly its slice of the reference weights (column-parallel rows of q/k/v and gate/up,
row-parallel input columns of o/down), for packed / grouped / act-order formats."""

from __future__ import annotations

import pytest
import torch

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.distributed.communicator import SingleRankCommunicator
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.model_executor.hf_config import read_config_json
from vllm_core.model_executor.loader import (
    build_model,
    load_arch_config,
    process_weights_after_loading,
)
from vllm_core.model_executor.quantization.quantized_weights import (
    dequantize_fp8,
    dequantize_wna16,
)
from vllm_core.model_executor.quantization.selection import select_quantization
from vllm_core.model_executor.quantization.testing import (
    tiny_llama,
    write_awq,
    write_compressed_tensors,
    write_fp8,
    write_gptq,
)
from vllm_core.model_executor.safetensors_loader import iter_safetensors_lazy

CASES = {
    "gptq-actorder": (write_gptq, dict(bits=4, group_size=16, desc_act=True, sym=False)),
    "gptq-g16": (write_gptq, dict(bits=4, group_size=16)),
    "awq": (write_awq, dict(group_size=16)),
    "ct-w4a16": (write_compressed_tensors, dict(scheme_name="w4a16", group_size=16)),
    "fp8-tensor": (write_fp8, dict(static=True)),
}
COLUMN = {"qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj")),
          "gate_up_proj": ("mlp", ("gate_proj", "up_proj"))}
ROW = {"o_proj": "self_attn", "down_proj": "mlp"}


def context(tp_rank: int, tp: int) -> ParallelContext:
    def comm(rank: int, size: int) -> SingleRankCommunicator:
        return SingleRankCommunicator(rank=rank, ranks=list(range(size)))

    return ParallelContext(tp_size=tp, tp_rank=tp_rank, pp_size=1, pp_rank=0,
                           tp=comm(tp_rank, tp), pp=comm(0, 1), world=comm(0, tp))


def _dequantized(layer) -> torch.Tensor:
    qw = layer.qweights
    return dequantize_fp8(qw) if hasattr(qw, "block_scale") else dequantize_wna16(qw)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tp_rank", [0, 1])
def test_each_rank_holds_its_slice(tmp_path, case, tp_rank):
    writer, kwargs = CASES[case]
    hf = tiny_llama()
    reference = writer(str(tmp_path), hf, **kwargs)
    arch = load_arch_config(str(tmp_path))
    quant = select_quantization(read_config_json(str(tmp_path / "config.json")), None)
    model = build_model(arch, ReferenceAttentionBackend, torch.device("cpu"), torch.float32,
                        parallel=context(tp_rank, 2), quant_config=quant)
    model.load_weights(iter_safetensors_lazy(str(tmp_path)))
    process_weights_after_loading(model, quant)
    for i in range(arch.num_hidden_layers):
        for leaf, (block, parts) in COLUMN.items():
            layer = model.get_submodule(f"model.layers.{i}.{block}.{leaf}")
            want = []
            for p in parts:
                full = reference[f"model.layers.{i}.{block}.{p}"]
                half = full.shape[0] // 2
                want.append(full[tp_rank * half:(tp_rank + 1) * half])
            torch.testing.assert_close(_dequantized(layer), torch.cat(want), atol=0, rtol=0)
        for leaf, block in ROW.items():
            layer = model.get_submodule(f"model.layers.{i}.{block}.{leaf}")
            full = reference[f"model.layers.{i}.{block}.{leaf}"]
            half = full.shape[1] // 2
            torch.testing.assert_close(_dequantized(layer),
                                       full[:, tp_rank * half:(tp_rank + 1) * half],
                                       atol=0, rtol=0)
