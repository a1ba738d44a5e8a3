"""Offline GPU throughput of a mixture-of-experts model: vllm-core against HF transformers
(``generate_batch`` and static ``generate``), with the roofline computed in the same run.

    python benchmarks/throughput_moe_gpu.py --output moe.jsonl            # 256 x 512/256
    python benchmarks/throughput_moe_gpu.py -tp 2 --enable-expert-parallel --systems vllm-core

Method: as ``throughput_gpu.py`` (design section 6), on the Qwen3-30B-A3B shape
(``QWEN3_30B_A3B``: 48 layers, 128 experts, top-8, expert intermediate 768) with random
weights in bf16 (vllm-core ``load_format="dummy"``; HF from the same config.json, random
init on the GPU). HF runs use the same prompts (``--peer-requests N``: the first N only).

Roofline (``moe_roofline``): prefill FLOPs use the *active* parameters (attention + top-k
experts + LM head per token) over the measured matmul rate; each decode step of a wave of B
sequences reads the non-expert weights, the KV of every sequence, and the experts' weights,
counted two ways: ``active`` (top_k experts per layer: the issue's definition, the bound at
batch 1) and ``touched`` (the expected number of distinct experts B tokens route to with
uniform routing, ``E * (1 - (1 - k/E)^B)``: the bytes a step must really read at batch B).
``fraction_of_roofline`` uses ``active``; ``fraction_of_touched_roofline`` the other.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from roofline import Ceilings  # noqa: E402

RESULT_PREFIX = "BENCH_RESULT "
SYSTEMS = ("vllm-core", "hf-batch", "hf-static")

QWEN3_30B_A3B: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "torch_dtype": "bfloat16",
    "bos_token_id": 151643, "eos_token_id": 151645, "use_sliding_window": False,
}
DEFAULT_MODEL_DIR = REPO / ".bench" / "models" / "qwen3-30b-a3b-shape"


def ensure_model_dir(folder: Path, cfg: dict[str, Any]) -> Path:
    """config.json of the shape plus a WordLevel tokenizer covering its vocabulary."""
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    vocab = {f"t{i}": i for i in range(cfg["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(str(folder))
    return folder


# ---- roofline ------------------------------------------------------------------------------

def _params(cfg: dict[str, Any]) -> dict[str, int]:
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    attn = layers * (h * (q + 2 * kv) + q * h)
    expert = 3 * h * cfg["moe_intermediate_size"]
    router = layers * h * cfg["num_experts"]
    head = cfg["vocab_size"] * h
    return {"dense": attn + router + head, "expert": expert, "layers": layers,
            "kv_bytes_per_token": 2 * layers * kv * 2}


def moe_roofline(cfg: dict[str, Any], c: Ceilings, requests: int, prompt_len: int,
                 output_len: int, max_num_seqs: int) -> dict[str, float]:
    """Roofline seconds and output tok/s (module docstring), bf16 weights and KV."""
    p = _params(cfg)
    e, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    heads_dim = cfg["num_attention_heads"] * cfg["head_dim"]
    active = p["dense"] + p["layers"] * k * p["expert"]

    def flops(ctx: float) -> float:
        return 2.0 * active + 4.0 * p["layers"] * heads_dim * ctx

    prefill_s = requests * prompt_len * flops((prompt_len - 1) / 2.0) / c.matmul_flops_s
    out: dict[str, float] = {"active_params_b": active / 1e9,
                             "total_params_b": (p["dense"] + p["layers"] * e * p["expert"]
                                                + cfg["vocab_size"] * cfg["hidden_size"]) / 1e9}
    for name in ("active", "touched"):
        decode_s, remaining = 0.0, requests
        while remaining > 0:
            batch = min(remaining, max_num_seqs)
            remaining -= batch
            used = k if name == "active" else e * (1.0 - (1.0 - k / e) ** batch)
            weights = 2 * (p["dense"] + p["layers"] * used * p["expert"])
            for s in range(output_len - 1):
                ctx = prompt_len + s
                step_bytes = weights + batch * (ctx + 1) * p["kv_bytes_per_token"]
                decode_s += max(step_bytes / c.bandwidth_bytes_s,
                                batch * flops(ctx + 1) / c.matmul_flops_s)
        total = prefill_s + decode_s
        key = "roofline" if name == "active" else "touched_roofline"
        out[f"{key}_s"] = total
        out[f"{key}_output_tok_s"] = requests * output_len / total
    out["roofline_prefill_s"] = prefill_s
    return out


# ---- systems (one subprocess each) ----------------------------------------------------------

def make_prompts(n: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab, size=(n, prompt_len)).tolist()


def run_vllm_core(args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, Any]:
    from vllm_core import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(str(args.model_dir), dtype="bfloat16", load_format="dummy",
              max_model_len=args.prompt_len + args.output_len, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens,
              gpu_memory_utilization=args.gpu_memory_utilization,
              enforce_eager=args.enforce_eager, tensor_parallel_size=args.tensor_parallel_size,
              enable_expert_parallel=args.enable_expert_parallel)
    startup = time.perf_counter() - start
    warm_prompts = make_prompts(2, args.prompt_len, QWEN3_30B_A3B["vocab_size"], 10_000)
    warm = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in warm_prompts], warm, use_tqdm=False)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True,
                            detokenize=False)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    engine = llm.llm_engine
    phases = {}
    if args.profile:      # after the measured run: it does not disturb it
        from gpu_profile import profile_phases

        phases = profile_phases(llm, prompts, args.profile)
    res = {"output_tokens": out_tokens, "elapsed_s": round(elapsed, 3),
           "output_tok_s": round(out_tokens / elapsed, 1), "startup_s": round(startup, 2),
           "tensor_parallel_size": args.tensor_parallel_size,
           "enable_expert_parallel": args.enable_expert_parallel,
           "kv_blocks": engine.config.cache.num_blocks,
           "graphs": bool(engine.config.graph_batch_sizes), **phases}
    engine.shutdown()
    return res


def worker_main(args: argparse.Namespace) -> None:
    prompts = make_prompts(args.requests, args.prompt_len, QWEN3_30B_A3B["vocab_size"],
                           args.seed)
    if args.worker == "ceilings":
        from roofline import measure_ceilings

        c = measure_ceilings()
        res = {"bandwidth_bytes_s": c.bandwidth_bytes_s, "matmul_flops_s": c.matmul_flops_s,
               "device": c.device}
    elif args.worker == "vllm-core":
        res = run_vllm_core(args, prompts)
    else:
        import throughput_gpu as tg

        w = tg.Workload("gpu-moe", args.requests, args.prompt_len, args.output_len)
        fn = tg.run_hf_batch if args.worker == "hf-batch" else tg.run_hf_static
        res = fn(args, w, prompts)
    print(RESULT_PREFIX + json.dumps(res), flush=True)


def spawn(args: argparse.Namespace, worker: str, requests: int,
          timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", worker, "--model-dir", str(args.model_dir),
           "--requests", str(requests), "--prompt-len", str(args.prompt_len),
           "--output-len", str(args.output_len), "--max-num-seqs", str(args.max_num_seqs),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--gpu-memory-utilization", str(args.gpu_memory_utilization),
           "--hf-batch-size", str(args.hf_batch_size), "--seed", str(args.seed),
           "-tp", str(args.tensor_parallel_size)]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    if args.enable_expert_parallel:
        cmd.append("--enable-expert-parallel")
    if args.profile and worker == "vllm-core":
        cmd += ["--profile", args.profile]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout)[-3000:]
    sys.stderr.write(f"[{worker}] failed (rc {proc.returncode}):\n{tail}\n")
    return {"error": tail.strip().splitlines()[-1] if tail.strip() else f"rc {proc.returncode}"}


def driver(args: argparse.Namespace) -> None:
    args.model_dir = ensure_model_dir(Path(args.model_dir), QWEN3_30B_A3B)
    out = open(args.output, "a") if args.output else None

    def emit(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)
        if out:
            out.write(json.dumps(obj) + "\n")
            out.flush()

    c = spawn(args, "ceilings", 1, 300)
    ceilings = Ceilings(c["bandwidth_bytes_s"], c["matmul_flops_s"], c["device"]) \
        if "error" not in c else None
    base = {"workload": "gpu-moe", "shape": "qwen3-30b-a3b", "prompt_len": args.prompt_len,
            "output_len": args.output_len}
    results: dict[str, dict[str, Any]] = {}
    for system in [s.strip() for s in args.systems.split(",") if s.strip()]:
        n = args.requests if system == "vllm-core" else min(args.requests,
                                                            args.peer_requests or args.requests)
        limit = args.core_timeout if system == "vllm-core" else args.timeout
        res = {"system": system, **base, "requests": n, **spawn(args, system, n, limit)}
        if system == "vllm-core" and "error" in res and not args.enforce_eager:
            emit(res)                    # a failure with graphs: say so, then try eager
            args.enforce_eager = True
            res = {"system": system, **base, "requests": n, "retry": "enforce_eager",
                   **spawn(args, system, n, limit)}
            args.enforce_eager = False
        results[system] = res
        emit(res)
    summary: dict[str, Any] = {"kind": "summary", **base, "requests": args.requests}
    core = results.get("vllm-core", {})
    if ceilings is not None:
        roof = moe_roofline(QWEN3_30B_A3B, ceilings, args.requests, args.prompt_len,
                            args.output_len, args.max_num_seqs)
        summary.update({"gpu": ceilings.device,
                        "bandwidth_tb_s": round(ceilings.bandwidth_bytes_s / 1e12, 3),
                        **{k: round(v, 2) for k, v in roof.items()}})
        if "output_tok_s" in core:
            summary["fraction_of_roofline"] = round(
                core["output_tok_s"] / roof["roofline_output_tok_s"], 3)
            summary["fraction_of_touched_roofline"] = round(
                core["output_tok_s"] / roof["touched_roofline_output_tok_s"], 3)
    if "output_tok_s" in core:
        summary["vllm_core_output_tok_s"] = core["output_tok_s"]
        for system, res in results.items():
            if system != "vllm-core" and res.get("output_tok_s"):
                # per-request-normalised when the peer ran fewer requests
                summary[f"ratio_vs_{system}"] = round(core["output_tok_s"]
                                                      / res["output_tok_s"], 2)
                summary[f"{system}_requests"] = res["requests"]
    emit(summary)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default="vllm-core,hf-batch,hf-static")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--peer-requests", type=int, default=None,
                   help="run the HF peers on the first N requests only")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--enable-expert-parallel", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None, help="seconds per HF peer")
    p.add_argument("--core-timeout", type=float, default=None, help="seconds for vllm-core")
    p.add_argument("--output", default=None)
    p.add_argument("--profile", default=None,
                   help="vllm-core: after the measured run, time and profile prefill-only and "
                        "prefill+decode windows (gpu_profile.py), kernel tables to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
