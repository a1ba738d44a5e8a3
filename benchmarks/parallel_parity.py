"""Greedy parity of tensor / pipeline parallelism against one rank, on real (random) weights.

Dummy weights cannot be compared across layouts (each rank draws its own shard), so this
writes a random-weight safetensors checkpoint once (``--model-dir``; default the Llama-3.1-8B
shape in bf16, ~16 GB, generated on the GPU) and runs each layout in its own subprocess on the
same prompts, greedy, with the top-5 logprobs. Per layout it prints one JSON line::

    {"layout": "tp2", "identical": 7, "requests": 8, "within_top5": true, ...}

A request passes when its tokens are identical, or when at the first divergence each side's
token is in the other side's top-5 (bf16 reductions differ in order across layouts).

    python benchmarks/parallel_parity.py --layouts tp2,pp2             # two GPUs
    python benchmarks/parallel_parity.py --shape tiny --dtype float32  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from roofline import LLAMA_3_1_8B  # noqa: E402

RESULT_PREFIX = "PARITY_RESULT "
TINY = {**LLAMA_3_1_8B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 4096, "torch_dtype": "float32"}


def write_checkpoint(folder: Path, shape: dict[str, Any], dtype: str, seed: int) -> None:
    """config.json, random safetensors weights (std 0.02, norms 1) and a WordLevel tokenizer."""
    if (folder / "model.safetensors.index.json").is_file() or (folder / "model.safetensors").is_file():
        return
    import torch
    from safetensors.torch import save_file

    from vllm_core.model_executor.testing import write_wordlevel_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(shape, torch_dtype=dtype)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(seed)
    tdtype = getattr(torch, dtype)

    def rnd(*s: int) -> torch.Tensor:
        return (0.02 * torch.randn(*s, generator=gen, device=dev)).to(tdtype).cpu()

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=tdtype)

    shards: list[dict[str, torch.Tensor]] = [{"model.embed_tokens.weight": rnd(v, h),
                                              "model.norm.weight": ones(h),
                                              "lm_head.weight": rnd(v, h)}]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shards.append({p + "self_attn.q_proj.weight": rnd(q, h),
                       p + "self_attn.k_proj.weight": rnd(kv, h),
                       p + "self_attn.v_proj.weight": rnd(kv, h),
                       p + "self_attn.o_proj.weight": rnd(h, q),
                       p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
                       p + "mlp.down_proj.weight": rnd(h, i),
                       p + "input_layernorm.weight": ones(h),
                       p + "post_attention_layernorm.weight": ones(h)})
    weight_map = {}
    for n, tensors in enumerate(shards):
        name = f"model-{n:05d}.safetensors"
        save_file(tensors, str(folder / name))
        weight_map.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_wordlevel_tokenizer(str(folder), v)


def run_layout(args: argparse.Namespace) -> None:
    """In a subprocess: generate greedily with one layout, print the tokens and top-5s."""
    import numpy as np

    from vllm_core import LLM, SamplingParams

    tp, pp = (int(x) for x in args.run.split("x"))
    llm = LLM(args.model_dir, dtype=args.dtype, max_model_len=args.prompt_len + args.max_tokens,
              tensor_parallel_size=tp, pipeline_parallel_size=pp, seed=0,
              gpu_memory_utilization=0.85, max_num_seqs=args.requests)
    vocab = llm.llm_engine.config.model.arch.vocab_size
    prompts = np.random.default_rng(args.seed).integers(
        0, vocab, size=(args.requests, args.prompt_len)).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                            logprobs=5, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    res = [{"tokens": list(o.outputs[0].token_ids),
            "top5": [sorted(d) for d in o.outputs[0].logprobs]} for o in outs]
    llm.llm_engine.shutdown()
    print(RESULT_PREFIX + json.dumps(res), flush=True)


def compare(ref: list[dict], got: list[dict]) -> dict[str, Any]:
    identical, within, first = 0, True, []
    for a, b in zip(ref, got, strict=True):
        if a["tokens"] == b["tokens"]:
            identical += 1
            continue
        k = next(j for j, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y)
        first.append(k)
        ok = a["tokens"][k] in b["top5"][k] and b["tokens"][k] in a["top5"][k]
        within = within and ok
    return {"identical": identical, "requests": len(ref), "first_divergence": first,
            "within_top5": within}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default="tp2,pp2", help="comma list of tpN, ppN, tpNxppM")
    p.add_argument("--shape", default="8b", choices=["8b", "tiny"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model_dir is None:
        args.model_dir = str(HERE.parent / ".bench" / "models" / f"parity-{args.shape}-{args.dtype}")
    if args.run:
        run_layout(args)
        return
    write_checkpoint(Path(args.model_dir), LLAMA_3_1_8B if args.shape == "8b" else TINY,
                     args.dtype, args.seed)

    def spawn(layout: str) -> list[dict]:
        cmd = [sys.executable, __file__, "--run", layout, "--model-dir", args.model_dir,
               "--dtype", args.dtype, "--requests", str(args.requests), "--prompt-len",
               str(args.prompt_len), "--max-tokens", str(args.max_tokens), "--seed",
               str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        raise RuntimeError(f"layout {layout} failed:\n{proc.stderr[-3000:]}")

    ref = spawn("1x1")
    for name in args.layouts.split(","):
        tp = pp = 1
        for part in name.split("x"):
            if part.startswith("tp"):
                tp = int(part[2:])
            elif part.startswith("pp"):
                pp = int(part[2:])
        print(json.dumps({"layout": name, "shape": args.shape, "dtype": args.dtype,
                          **compare(ref, spawn(f"{tp}x{pp}"))}), flush=True)


if __name__ == "__main__":
    main()
