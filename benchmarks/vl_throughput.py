"""Qwen2.5-VL offline throughput and time to first token: vllm-core against HF transformers'
``generate``, in the same run (design section 6).

    python benchmarks/vl_throughput.py --shape 7b --output vl.jsonl          # the H200 job
    python benchmarks/vl_throughput.py --shape tiny --requests 8 --image-size 112   # CPU check

Method:

- Model: the Qwen2.5-VL-7B-Instruct shape (``SHAPES["7b"]``: 28 decoder layers, hidden 3584,
  32-block vision tower) with random weights in bf16 (``--dtype``); vllm-core loads it with
  ``load_format="dummy"`` from a folder holding ``config.json``, a word-level tokenizer with the
  vision special tokens and ``preprocessor_config.json``; HF builds the same config with its own
  random initialisation on the device. Weights' values do not change the work done.
- Requests: ``--requests`` (64) prompts of ``--text-len`` random tokens around one
  ``--image-size`` x ``--image-size`` random RGB image (448: 1024 patches, 256 image tokens);
  every request has its own image (no encoder-cache or prefix reuse across requests);
  ``--output-len`` (128) tokens each, EOS ignored.
- vllm-core: all requests submitted at once to ``LLM.generate``; TTFT per request from its
  ``RequestMetrics`` (first token time - arrival), mean and p50/p90 reported.
- HF: ``generate`` in static batches of ``--hf-batch-size`` (16; images preprocessed once by
  the same image processor, outside the timing), one batch after another as a server without
  continuous batching would; a request's TTFT is its batch's start (all requests arrive at 0)
  plus the time until the batch's first token (a streamer timestamps it).
- Each system runs in its own subprocess; one JSON line per system, then a summary line with
  the ratios (vllm-core / HF output tok/s; HF / vllm-core mean TTFT).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
IDS = {"image": 151655, "video": 151656, "start": 151652, "end": 151653}
SHAPES: dict[str, dict[str, Any]] = {
    "7b": {
        "text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     max_position_embeddings=128000, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                      "mrope_section": [16, 24, 24]}),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                       temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    },
    "tiny": {
        "text": dict(vocab_size=152064, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=4096, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                      "mrope_section": [2, 3, 3]}),
        "vision": dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2,
                       out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                       temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1, 3]),
    },
}


def hf_config(shape: str) -> Any:
    from transformers import Qwen2_5_VLConfig

    s = SHAPES[shape]
    return Qwen2_5_VLConfig(
        text_config={**s["text"], "bos_token_id": None, "eos_token_id": None,
                     "pad_token_id": None},
        vision_config=s["vision"], image_token_id=IDS["image"], video_token_id=IDS["video"],
        vision_start_token_id=IDS["start"], vision_end_token_id=IDS["end"],
        tie_word_embeddings=False)


def ensure_model_dir(folder: Path, shape: str, image_size: int) -> Path:
    """config.json + tokenizer + preprocessor_config.json (no weights: dummy loading)."""
    from transformers import Qwen2VLImageProcessor

    from vllm_core.multimodal.testing import write_vl_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(shape)
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    cfg.save_pretrained(str(folder))
    if not (folder / "tokenizer.json").is_file():
        write_vl_tokenizer(str(folder), cfg.text_config.vocab_size,
                           (IDS["image"], IDS["video"], IDS["start"], IDS["end"]))
    pixels = image_size * image_size
    Qwen2VLImageProcessor(min_pixels=min(pixels, 56 * 56), max_pixels=pixels).save_pretrained(
        str(folder))
    return folder


def make_requests(args: argparse.Namespace, seed: int = 0) -> list[dict[str, Any]]:
    """Token-id prompts (text, one placeholder, text) and one random image each (``seed``:
    the warm-up uses other images and prompts than the timed run)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    half = args.text_len // 2
    for _ in range(args.requests):
        text = rng.integers(0, 150000, size=args.text_len).tolist()
        ids = text[:half] + [IDS["start"], IDS["image"], IDS["end"]] + text[half:]
        img = Image.fromarray(rng.integers(0, 256, (args.image_size, args.image_size, 3),
                                           dtype=np.uint8))
        out.append({"prompt_token_ids": ids, "multi_modal_data": {"image": img}})
    return out


def _device_facts() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu"}
    return {"device": torch.cuda.get_device_name(0),
            "peak_torch_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_vllm_core(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from vllm_core import LLM, SamplingParams

    reqs = make_requests(args)
    t0 = time.perf_counter()
    llm = LLM(str(args.model_dir), dtype=args.dtype, load_format="dummy",
              max_model_len=args.text_len + 3 + (args.image_size // 28) ** 2
              + args.output_len + 16,
              max_num_seqs=args.requests, max_num_batched_tokens=args.max_num_batched_tokens,
              enforce_eager=args.enforce_eager)
    startup = time.perf_counter() - t0
    warm = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, detokenize=False)
    args_w = argparse.Namespace(**{**vars(args), "requests": 2})
    llm.generate(make_requests(args_w, seed=1), warm, use_tqdm=False)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True,
                            detokenize=False)
    runner = llm.llm_engine.executor.worker.runner
    encoded0 = runner.mm.num_encoded
    _sync()
    t0 = time.perf_counter()
    outs = llm.generate(reqs, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    ttft = np.array([o.metrics.first_token_time - o.metrics.arrival_time for o in outs
                     if o.metrics is not None and o.metrics.first_token_time])
    res = {"output_tokens": tokens, "elapsed_s": round(elapsed, 3),
           "output_tok_s": round(tokens / elapsed, 1), "startup_s": round(startup, 2),
           "ttft_mean_s": round(float(ttft.mean()), 4),
           "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
           "ttft_p90_s": round(float(np.percentile(ttft, 90)), 4),
           "images_encoded": runner.mm.num_encoded - encoded0,
           "prompt_tokens": len(outs[0].prompt_token_ids),
           "graph_steps": runner.num_graph_steps, "eager_steps": runner.num_eager_steps,
           "attention_backend": runner.attn_backend.name, **_device_facts()}
    llm.llm_engine.shutdown()
    return res


class _FirstTokenClock:
    """A ``generate`` streamer that records when the first generated tokens arrive."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:      # call 1 is the prompt
            _sync()
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_hf(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

    from vllm_core.multimodal.testing import hf_mm_kwargs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(hf_config(args.shape),
                                                                dtype=dtype).eval()
    startup = time.perf_counter() - t0
    proc = AutoImageProcessor.from_pretrained(str(args.model_dir))
    reqs = make_requests(args)
    bs = args.hf_batch_size
    batches = []
    for i in range(0, len(reqs), bs):
        chunk = reqs[i:i + bs]
        out = proc(images=[r["multi_modal_data"]["image"] for r in chunk], return_tensors="pt")
        grid = out["image_grid_thw"]
        n_img = int(grid[0].prod()) // 4
        ids = []
        for r in chunk:
            p = r["prompt_token_ids"]
            k = p.index(IDS["image"])
            ids.append(p[:k] + [IDS["image"]] * n_img + p[k + 1:])
        input_ids = torch.tensor(ids, device=device)
        batches.append(dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            **hf_mm_kwargs(model, input_ids, IDS["image"]),
                            pixel_values=out["pixel_values"].to(device, dtype),
                            image_grid_thw=grid.to(device)))

    def gen(batch: dict[str, Any], n: int, streamer: Any = None) -> Any:
        with torch.no_grad():
            return model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  eos_token_id=None, pad_token_id=0, streamer=streamer)

    gen(batches[0], 2)       # warm-up
    _sync()
    ttft: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    for batch in batches:
        clock = _FirstTokenClock()
        out = gen(batch, args.output_len, clock)
        _sync()
        first = (clock.first - t0) if clock.first is not None else time.perf_counter() - t0
        ttft += [first] * batch["input_ids"].shape[0]
        tokens += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    elapsed = time.perf_counter() - t0
    t = np.array(ttft)
    return {"output_tokens": int(tokens), "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(tokens / elapsed, 1), "startup_s": round(startup, 2),
            "ttft_mean_s": round(float(t.mean()), 4),
            "ttft_p50_s": round(float(np.percentile(t, 50)), 4),
            "ttft_p90_s": round(float(np.percentile(t, 90)), 4),
            "hf_batch_size": bs,
            "attn_implementation": str(getattr(model.config, "_attn_implementation", None)),
            **_device_facts()}


SYSTEMS = {"vllm-core": run_vllm_core, "hf": run_hf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--systems", default="vllm-core,hf")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--timeout", type=int, default=240, help="seconds per system")
    ap.add_argument("--output", default=None, help="append the JSON lines to this file")
    ap.add_argument("--system", default=None, help=argparse.SUPPRESS)   # child process
    args = ap.parse_args()
    if args.model_dir is None:
        args.model_dir = Path(f"/tmp/vl_bench/qwen2_5_vl-{args.shape}-{args.image_size}")
    if args.system is not None:
        res = SYSTEMS[args.system](args)
        print(RESULT_PREFIX + json.dumps(res), flush=True)
        return
    ensure_model_dir(args.model_dir, args.shape, args.image_size)
    base = {"benchmark": "qwen2_5_vl", "shape": args.shape, "requests": args.requests,
            "image_size": args.image_size, "text_len": args.text_len,
            "output_len": args.output_len, "dtype": args.dtype}
    lines = []
    results: dict[str, dict[str, Any]] = {}
    for system in args.systems.split(","):
        cmd = [sys.executable, __file__, "--system", system]
        for key, value in vars(args).items():
            if key in ("system", "systems", "output") or value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            cmd += [flag] if value is True else [flag, str(value)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env=os.environ.copy())
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
            if found:
                res = json.loads(found[-1][len(RESULT_PREFIX):])
            else:
                res = {"error": f"rc={proc.returncode}", "stderr_tail": proc.stderr[-1500:]}
        except subprocess.TimeoutExpired as e:
            res = {"error": f"timeout after {args.timeout}s",
                   "stderr_tail": (e.stderr or b"")[-1500:].decode(errors="replace")
                   if isinstance(e.stderr, bytes) else str(e.stderr)[-1500:]}
        results[system] = res
        line = {**base, "system": system, **res}
        lines.append(line)
        print(json.dumps(line), flush=True)
    ours, hf = results.get("vllm-core", {}), results.get("hf", {})
    summary = {**base, "system": "summary"}
    if "output_tok_s" in ours and "output_tok_s" in hf:
        summary["output_tok_s_ratio_vs_hf"] = round(ours["output_tok_s"] / hf["output_tok_s"], 2)
        summary["ttft_mean_hf_over_ours"] = round(hf["ttft_mean_s"] / ours["ttft_mean_s"], 2)
    lines.append(summary)
    print(json.dumps(summary), flush=True)
    if args.output:
        with open(args.output, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
