"""LoRA pieces in isolation: the PEFT loader's refusals, the batched product (segment and the
graph-safe dense path against a per-token loop), slot swapping and the scheduler's bound."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from vllm_core.config import LoRAConfig, ModelArchConfig
from vllm_core.lora.batch import LoRABatch
from vllm_core.lora.peft_adapter import load_peft_adapter
from vllm_core.lora.registry import LoRARegistry
from vllm_core.lora.request import LoRARequest
from vllm_core.lora.testing import write_random_adapter

ARCH = ModelArchConfig(architecture="LlamaForCausalLM", model_type="llama", vocab_size=64,
                       hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _edit_config(folder, **changes):
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_loader_maps_targets_onto_fused_layers_with_scaling(tmp_path):
    folder = write_random_adapter(str(tmp_path / "a"), ARCH, rank=4, alpha=8)
    adapter = load_peft_adapter(1, folder, ARCH, max_rank=8)
    assert adapter.rank == 4 and adapter.scaling == 2.0
    assert set(adapter.modules["model.layers.1.self_attn.qkv_proj"]) == {"q", "k", "v"}
    assert set(adapter.modules["model.layers.0.mlp.gate_up_proj"]) == {"gate", "up"}
    assert set(adapter.modules["model.layers.0.mlp.down_proj"]) == {"in"}
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "pt") as f:
        b = f.get_tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight")
    torch.testing.assert_close(adapter.modules["model.layers.0.self_attn.qkv_proj"]["k"].b,
                               2.0 * b)
    _edit_config(folder, use_rslora=True)
    assert load_peft_adapter(1, folder, ARCH, max_rank=8).scaling == 8 / 2


@pytest.mark.parametrize("change,message", [
    (dict(r=32), "exceeds --max-lora-rank 8"),
    (dict(target_modules=["q_proj", "embed_tokens"]), "embedding and LM-head adapters"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(use_dora=True), "DoRA"),
    (dict(bias="all"), "train biases"),
    (dict(peft_type="IA3"), "peft_type 'IA3'"),
])
def test_loader_refuses_unsupported_configs(tmp_path, change, message):
    folder = write_random_adapter(str(tmp_path / "a"), ARCH, rank=4)
    _edit_config(folder, **change)
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(1, folder, ARCH, max_rank=8)


def test_loader_refuses_pickle_missing_files_and_a_foreign_model(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_peft_adapter(1, str(tmp_path / "nope"), ARCH, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no adapter_config.json"):
        load_peft_adapter(1, str(empty), ARCH, 8)
    folder = write_random_adapter(str(tmp_path / "a"), ARCH, rank=4)
    os.rename(os.path.join(folder, "adapter_model.safetensors"),
              os.path.join(folder, "adapter_model.bin"))
    with pytest.raises(ValueError, match="pickle file, which is never loaded"):
        load_peft_adapter(1, folder, ARCH, 8)
    bigger = ModelArchConfig(**{**{f: getattr(ARCH, f) for f in ARCH.__dataclass_fields__},
                                "hidden_size": 64})
    other = write_random_adapter(str(tmp_path / "b"), bigger, rank=4)
    with pytest.raises(ValueError, match="does not fit the base model"):
        load_peft_adapter(1, other, ARCH, 8)
    deeper = ModelArchConfig(**{**{f: getattr(ARCH, f) for f in ARCH.__dataclass_fields__},
                                "num_hidden_layers": 3})
    with pytest.raises(ValueError, match="base model has 2 layers"):
        load_peft_adapter(1, write_random_adapter(str(tmp_path / "c"), deeper, 4), ARCH, 8)


@pytest.mark.parametrize("mode", ["segment", "dense"])
def test_batched_product_matches_a_per_token_loop(mode):
    gen = torch.Generator().manual_seed(0)
    slots, rank, n_in, outs = 3, 4, 16, [10, 6]
    a = torch.randn(slots, 2 * rank, n_in, generator=gen)
    b = torch.randn(sum(outs), slots, rank, generator=gen)
    shards = [(slice(0, 10), 0), (slice(10, 16), 1)]
    token_slots = np.array([2, -1, 0, 0, 0, 2, 1, -1, 2], dtype=np.int64)
    x = torch.randn(len(token_slots), n_in, generator=gen)
    y0 = torch.randn(len(token_slots), sum(outs), generator=gen)
    expected = y0.clone()
    for t, s in enumerate(token_slots.tolist()):
        if s < 0:
            continue
        xa = a[s] @ x[t]
        for rows, i in shards:
            expected[t, rows] += b[rows, s] @ xa[i * rank:(i + 1) * rank]
    batch = LoRABatch(slots, 16, torch.device("cpu"), torch.float32, mode)
    batch.set_step(token_slots, num_padded=12)
    got = batch.add_lora(y0.clone(), x, a, b, shards, rank)
    torch.testing.assert_close(got, expected)


def test_manager_swaps_lru_slot_not_used_by_the_step(tmp_path):
    from vllm_core.lora.manager import LoRAManager

    loads = []

    class Layer:
        def __init__(self):
            self.slots = {}

        def set_slot(self, slot, weights):
            self.slots[slot] = weights

    def loader(lora_id, path):
        loads.append(lora_id)
        from vllm_core.lora.peft_adapter import LoRAAdapter
        return LoRAAdapter(lora_id, path, 4, 1.0, {"m": {"in": lora_id}})

    layer = Layer()
    batch = LoRABatch(2, 8, torch.device("cpu"), torch.float32, "segment")
    mgr = LoRAManager(LoRAConfig(max_loras=2, max_cpu_loras=2), {"m": layer}, batch, loader)
    for i in (1, 2, 3):
        mgr.add(i, f"/p{i}")
    assert loads == [1, 2, 3] and list(mgr.host) == [2, 3]          # host LRU of 2
    mgr.prepare_step(np.array([1, 1, 0, 2]))
    assert loads == [1, 2, 3, 1] and sorted(mgr.slot_ids) == [1, 2]    # 1 read again
    assert [g[0] for g in batch.groups] == [mgr.slot_ids.index(1), mgr.slot_ids.index(2)]
    mgr.prepare_step(np.array([2]))
    mgr.prepare_step(np.array([3, 2]))              # evicts 1 (not in the step), keeps 2
    assert sorted(mgr.slot_ids) == [2, 3] and mgr.num_swaps == 1
    with pytest.raises(RuntimeError, match="more than max_loras"):
        mgr.prepare_step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="already loaded from"):
        mgr.add(2, "/elsewhere")
    assert mgr.remove(3) and 3 not in mgr.slot_ids and not mgr.remove(3)


def test_registry_names_and_ids_are_one_to_one():
    reg, loaded = LoRARegistry(), []
    a = LoRARequest("a", 1, "/a")
    assert reg.add(a, lambda i, p: loaded.append(i)) and not reg.add(a, None)
    with pytest.raises(ValueError, match="already loaded"):
        reg.add(LoRARequest("a", 2, "/b"), lambda i, p: None)
    with pytest.raises(ValueError, match="already used by adapter 'a'"):
        reg.add(LoRARequest("b", 1, "/b"), lambda i, p: None)
    assert reg.next_id() == 2 and reg.remove("a") == a and len(reg) == 0
    with pytest.raises(ValueError, match="lora_int_id must be an integer >= 1"):
        LoRARequest("x", 0, "/x")


def test_scheduler_runs_at_most_max_loras_adapters_at_once():
    from vllm_core.config import CacheConfig, SchedulerConfig
    from vllm_core.engine.request import Request
    from vllm_core.engine.scheduler import Scheduler
    from vllm_core.sampling.params import SamplingParams

    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256),
                      CacheConfig(block_size=4, num_blocks=64), 64, max_loras=2)
    for i, lora in enumerate([1, 2, 3, 0, 1]):
        sched.add_request(Request(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=4),
                                  lora_id=lora))
    out = sched.schedule()
    assert sorted(out.num_scheduled_tokens) == ["r0", "r1", "r3", "r4"]   # r2 waits
    assert [r.request_id for r in sched.waiting] == ["r2"]
