"""Tests of benchmarks/perplexity.py on a tiny random Llama: the engine's perplexity (prompt
logprobs, windowed) equals HF transformers' on the same weights, and ``run`` writes one JSON
line per configuration, quantized checkpoints included."""

from __future__ import annotations

import math

import perplexity as ppl
import pytest
import torch

from vllm_core.model_executor.quantization.testing import tiny_llama
from vllm_core.model_executor.testing import write_wordlevel_tokenizer


def _hf_perplexity(hf, ids: list[int], window: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), window):
            chunk = ids[i:i + window]
            if len(chunk) < 2:
                continue
            logp = hf(torch.tensor([chunk])).logits[0].float().log_softmax(-1)
            total += logp[torch.arange(len(chunk) - 1), torch.tensor(chunk[1:])].sum().item()
            count += len(chunk) - 1
    return math.exp(-total / count)


def test_engine_perplexity_equals_hf(tmp_path):
    hf = tiny_llama(seed=2)
    hf.save_pretrained(str(tmp_path))
    write_wordlevel_tokenizer(str(tmp_path), hf.config.vocab_size)
    ids = torch.randint(0, hf.config.vocab_size, (70,),
                        generator=torch.Generator().manual_seed(0)).tolist()
    got, n = ppl.engine_perplexity(str(tmp_path), ids, window=32)
    assert n == 70 - 3                        # windows of 32, 32, 6: first token unscored
    assert math.isclose(got, _hf_perplexity(hf, ids, 32), rel_tol=1e-4)


@pytest.mark.slow           # five engine starts
def test_run_writes_a_line_per_configuration(tmp_path):
    hf = tiny_llama(seed=2)
    folder = tmp_path / "model"
    hf.save_pretrained(str(folder))
    write_wordlevel_tokenizer(str(folder), hf.config.vocab_size)
    text = tmp_path / "text.md"
    text.write_text(" ".join(f"t{i % 90}" for i in range(0, 400, 7)))
    records = []
    configs = ["float32", "fp8-online", "int8-online", "gptq-4bit", "kv-fp8"]
    ppl.run(str(folder), configs, 64, records.append, text_path=str(text))
    assert [r["config"] for r in records] == configs
    assert records[-1]["kv_cache_dtype"] == "fp8" and records[0]["kv_cache_dtype"] == "auto"
    base = records[0]["perplexity"]
    assert all(r["tokens"] == records[0]["tokens"] > 0 for r in records)
    # quantized weights (or K / V) of the same model: close to, not equal to, the float one
    for r in records[1:]:
        assert r["perplexity"] != base and abs(math.log(r["perplexity"] / base)) < 0.2
