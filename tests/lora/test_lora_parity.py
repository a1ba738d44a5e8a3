"""Multi-LoRA parity with HuggingFace + PEFT (fp32, greedy): random-initialised adapters with
non-zero B on random Llama and Qwen2 models; a mixed batch of 4 adapters + the base model
equals each request run alone and PEFT's tokens; swapping with fewer slots than adapters
(--max-loras 2, --max-cpu-loras 2) changes nothing."""

from __future__ import annotations

import pytest
import torch
from lora_utils import PeftOracle, make_peft_adapter, tiny_model_folder

from vllm_core import LLM, LoRARequest, SamplingParams

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = str(tmp_path_factory.mktemp("lora_llama"))
    folder = tiny_model_folder(root, "llama")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    specs = [dict(r=8, alpha=16), dict(r=16, alpha=8, use_rslora=True),
             dict(r=4, alpha=32, targets=["q_proj", "v_proj"]),
             dict(r=8, alpha=16, targets=["o_proj", "gate_proj", "down_proj"])]
    adapters = [make_peft_adapter(hf, f"{root}/a{i}", seed=i + 1, **spec)
                for i, spec in enumerate(specs)]
    return folder, PeftOracle(hf, adapters), adapters


def _prompts():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(1, 500, (n,), generator=gen).tolist() for n in (9, 33, 17, 5, 21)]


def _tokens(llm, prompts, loras):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False,
                        lora_request=loras)
    return [list(o.outputs[0].token_ids) for o in outs]


def _engine(folder, **kw):
    return LLM(folder, dtype="float32", max_model_len=128, num_gpu_blocks_override=96,
               max_num_seqs=8, max_num_batched_tokens=64, enable_lora=True,
               max_lora_rank=16, **kw)


def test_mixed_batch_of_four_adapters_and_base_matches_peft_and_runs_alone(llama):
    folder, oracle, adapters = llama
    prompts = _prompts()
    loras = [None] + [LoRARequest(f"a{i}", i + 1, p) for i, p in enumerate(adapters)]
    expected = [oracle.greedy(r and r.lora_path, p, MAX_TOKENS) for p, r in zip(prompts, loras)]
    base = [oracle.greedy(None, p, MAX_TOKENS) for p in prompts]
    assert sum(e != b for e, b in zip(expected[1:], base[1:])) >= 3   # adapters matter

    llm = _engine(folder, max_loras=4)
    assert _tokens(llm, prompts, loras) == expected
    for p, r, e in zip(prompts, loras, expected):              # each request alone
        assert _tokens(llm, [p], [r]) == [e]
    # the same prompt under every adapter (prefix caching must keep their KV apart)
    same = [prompts[1]] * 5
    assert _tokens(llm, same, loras) == [oracle.greedy(r and r.lora_path, prompts[1],
                                                       MAX_TOKENS) for r in loras]


def test_fewer_slots_than_adapters_swaps_between_steps(llama):
    folder, oracle, adapters = llama
    prompts = _prompts()[:4] * 2
    loras = [LoRARequest(f"a{i}", i + 1, p) for i, p in enumerate(adapters)] * 2
    expected = [oracle.greedy(r.lora_path, p, MAX_TOKENS) for p, r in zip(prompts, loras)]
    llm = _engine(folder, max_loras=2, max_cpu_loras=2)
    assert _tokens(llm, prompts, loras) == expected
    manager = llm.llm_engine.executor.worker.runner.lora
    assert manager.num_swaps > 0 and manager.num_disk_loads > 4     # evicted and re-read


def test_qwen2_with_attention_bias_matches_peft(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_folder(str(tmp_path), "qwen2")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    adapter = make_peft_adapter(hf, str(tmp_path / "q"), seed=7, r=8, alpha=16,
                                use_rslora=True)
    oracle = PeftOracle(hf, [adapter])
    prompts = _prompts()[:3]
    lora = LoRARequest("q", 1, adapter)
    llm = _engine(folder, max_loras=1)
    got = _tokens(llm, prompts, [lora, None, lora])
    assert got == [oracle.greedy(adapter, prompts[0], MAX_TOKENS),
                   oracle.greedy(None, prompts[1], MAX_TOKENS),
                   oracle.greedy(adapter, prompts[2], MAX_TOKENS)]


def test_engine_core_process_serves_adapters(llama, tmp_path):
    """The core in its own process: adapters load there (``LoRACall`` messages), a mixed batch
    matches PEFT, a refused adapter is a ValueError with the core's reason and the engine keeps
    serving, and unloading works."""
    folder, oracle, adapters = llama
    prompts = _prompts()[:3]
    loras = [None, LoRARequest("a0", 1, adapters[0]), LoRARequest("a1", 2, adapters[1])]
    expected = [oracle.greedy(r and r.lora_path, p, MAX_TOKENS) for p, r in zip(prompts, loras)]
    llm = _engine(folder, max_loras=2, engine_core_process=True)
    try:
        engine = llm.llm_engine
        assert not engine.in_process
        assert _tokens(llm, prompts, loras) == expected
        with pytest.raises(ValueError):
            engine.add_lora(LoRARequest("bad", 7, str(tmp_path / "no-such-adapter")))
        assert engine.loras.get("bad") is None
        engine.remove_lora("a1")
        assert [r.lora_name for r in engine.loras] == ["a0"]
        assert _tokens(llm, prompts[:2], loras[:2]) == expected[:2]
    finally:
        llm.shutdown()
