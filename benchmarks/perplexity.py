"""Perplexity of a fixed shipped text through OUR engine (prompt logprobs), one JSON line per
configuration, all in one run.

The text is ``benchmarks/data/perplexity_text.md`` (the first 6000 characters of docs/moe.md,
frozen: ~2.3k SmolLM2 tokens), scored in windows of at most ``--window`` tokens (each window a
prompt with ``prompt_logprobs=0``: the logprob of every token given the window before it);
perplexity = exp(-mean logprob) over all scored tokens. Configurations:

- ``float32``, ``bfloat16``: the model as loaded (the default model is the embedded Q4_1
  GGUF, de-quantized at load);
- ``fp8-online``: ``--quantization fp8`` of the float32 checkpoint (a GGUF model is first
  saved as a float32 HF folder: GGUF files accept no other quantization);
- ``int8-online``: ``--quantization int8`` (W8A8: per-channel int8 weights made at load,
  dynamic per-token activations; a GGUF file is de-quantized first);
- ``kv-fp8``, ``kv-fp8-e5m2``: the float32 model with ``--kv-cache-dtype fp8`` (e4m3) /
  ``fp8_e5m2`` (scales 1.0): every window's keys and values are read back from the fp8 cache,
  prefill included;
- ``gptq-4bit``, ``awq-4bit``, ``ct-w4a16``, ``ct-w8a8-int8``, ``ct-w8a8-fp8``, ``fp8-ckpt``:
  checkpoints written from the same weights by the format writers of
  ``vllm_core/model_executor/quantization/testing.py`` (GPTQ / AWQ layouts, compressed-tensors
  via the ``compressed-tensors`` package, FP8 per-tensor), loaded by our loader. These writers
  quantize round-to-nearest (no calibration), so the figures bound what GPTQ / AWQ tools do.

Run on CPU: ``python benchmarks/perplexity.py`` (SmolLM2-135M, all configurations; each
engine start and 2.3k-token prefill takes minutes on a loaded 2-vCPU machine);
``--model DIR_OR_GGUF --configs float32,fp8-online`` for others.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "data", "perplexity_text.md")
ALL_CONFIGS = ("float32", "bfloat16", "fp8-online", "int8-online", "gptq-4bit", "awq-4bit", "ct-w4a16",
               "ct-w8a8-int8", "ct-w8a8-fp8", "fp8-ckpt", "kv-fp8", "kv-fp8-e5m2")
KV_CONFIGS = {"kv-fp8": "fp8", "kv-fp8-e5m2": "fp8_e5m2"}


def engine_perplexity(model: str, token_ids: list[int], *, dtype: str = "float32",
                      quantization: str | None = None, window: int = 1024,
                      tokenizer: str | None = None,
                      kv_cache_dtype: str = "auto") -> tuple[float, int]:
    """(perplexity, tokens scored) of ``token_ids`` through our engine, in windows of at most
    ``window`` tokens (the first token of each window is not scored)."""
    from vllm_core import LLM, SamplingParams

    llm = LLM(model, tokenizer=tokenizer, dtype=dtype, quantization=quantization,
              max_model_len=window + 1, max_num_seqs=4, kv_cache_dtype=kv_cache_dtype)
    try:
        chunks = [token_ids[i:i + window] for i in range(0, len(token_ids), window)]
        chunks = [c for c in chunks if len(c) > 1]
        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = llm.generate([{"prompt_token_ids": c} for c in chunks], sp, use_tqdm=False)
        total, count = 0.0, 0
        for chunk, out in zip(chunks, outs, strict=True):
            for tok, lp in zip(chunk[1:], out.prompt_logprobs[1:], strict=True):
                total += lp[tok].logprob
                count += 1
    finally:
        llm.llm_engine.shutdown()
        del llm
        gc.collect()
    return math.exp(-total / count), count


def _load_hf(model: str):
    """The model as an HF float32 module (a GGUF file through transformers' GGUF reader)."""
    import torch
    from transformers import AutoModelForCausalLM

    if model.endswith(".gguf"):
        return AutoModelForCausalLM.from_pretrained(os.path.dirname(model),
                                                    gguf_file=os.path.basename(model),
                                                    dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)


def _save_float(hf, folder: str) -> None:
    """The HF model as a float checkpoint (transformers refuses ``save_pretrained`` of a
    model read from GGUF): its tensors (tied ones copied) and config without the GGUF
    ``quantization_config``."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()},
              os.path.join(folder, "model.safetensors"))
    cfg = hf.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(hf).__name__]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)


def _writers() -> dict[str, Callable]:
    from vllm_core.model_executor.quantization import testing as t

    return {
        "gptq-4bit": lambda d, hf: t.write_gptq(d, hf, bits=4, group_size=64),
        "awq-4bit": lambda d, hf: t.write_awq(d, hf, group_size=64),
        "ct-w4a16": lambda d, hf: t.write_compressed_tensors(d, hf, "w4a16", group_size=64),
        "ct-w8a8-int8": lambda d, hf: t.write_compressed_tensors(d, hf, "w8a8-int8"),
        "ct-w8a8-fp8": lambda d, hf: t.write_compressed_tensors(d, hf, "w8a8-fp8-dynamic"),
        "fp8-ckpt": lambda d, hf: t.write_fp8(d, hf, static=False),
    }


def _tokenize(model: str, text_path: str) -> list[int]:
    from vllm_core.model_executor.tokenizer import get_tokenizer

    with open(text_path) as f:
        text = f.read()
    return list(get_tokenizer(model).encode(text))


def run(model: str | None, configs: list[str], window: int, out: Callable[[dict], None],
        text_path: str = TEXT) -> None:
    """Score every configuration on the text of ``text_path``; ``out`` receives each JSON
    record."""
    from vllm_core.model_executor.default_model import default_model_path

    model = model or default_model_path()
    ids = _tokenize(model, text_path)
    writers = _writers()
    hf = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            start = time.perf_counter()
            path, dtype, quant, tok = model, "float32", None, None
            kv = KV_CONFIGS.get(name, "auto")
            if name == "bfloat16":
                dtype = "bfloat16"
            elif name == "fp8-online":
                quant = "fp8"
                if model.endswith(".gguf"):    # online FP8 needs a float checkpoint
                    if hf is None:
                        hf = _load_hf(model)
                    path = os.path.join(tmp, "float32")
                    _save_float(hf, path)
                    tok = model
            elif name == "int8-online":       # a GGUF file is de-quantized, then int8
                quant = "int8"
            elif name in writers:
                if hf is None:
                    hf = _load_hf(model)
                path = os.path.join(tmp, name)
                writers[name](path, hf)
                tok = model                    # the written folders hold no tokenizer
            elif name != "float32" and name not in KV_CONFIGS:
                raise ValueError(f"unknown configuration {name!r} (one of {', '.join(ALL_CONFIGS)})")
            ppl, n = engine_perplexity(path, ids, dtype=dtype, quantization=quant,
                                       window=window, tokenizer=tok, kv_cache_dtype=kv)
            out({"kind": "perplexity", "config": name, "model": os.path.basename(model),
                 "dtype": dtype, "kv_cache_dtype": kv, "perplexity": round(ppl, 4), "tokens": n,
                 "text": os.path.basename(text_path), "seconds": round(time.perf_counter() - start, 1),
                 "cpu": platform.processor() or platform.machine(),
                 "load_avg": [round(x, 2) for x in os.getloadavg()]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint folder or .gguf (default: the "
                                                  "embedded SmolLM2-135M Q4_1)")
    p.add_argument("--configs", default=",".join(ALL_CONFIGS))
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--output", default=None, help="append the JSON lines to this file")
    a = p.parse_args()

    def out(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if a.output:
            with open(a.output, "a") as f:
                f.write(line + "\n")

    run(a.model, [c for c in a.configs.split(",") if c], a.window, out)


if __name__ == "__main__":
    main()
