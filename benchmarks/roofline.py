"""Roofline of LLM generation on one GPU from two measured ceilings.

Ceilings, measured in the same run as the benchmark (``measure_ceilings``):
  * memory bandwidth: a device-to-device copy of a large buffer, bytes read + written over the
    median time;
  * matmul rate: an ``N x N x N`` bf16 matrix product through torch (cuBLAS), ``2 N^3`` FLOPs
    over the median time, on random data.

Model of a workload (``roofline``), for a Llama-shaped decoder:
  * prefill: every prompt token costs ``flops_per_token(ctx)`` (2 x the linear weights' elements
    plus causal attention ``4 x layers x q_heads x head_dim x ctx``); prefill is taken as
    compute-bound: ``sum FLOPs / matmul rate``;
  * decode: requests run in waves of ``max_num_seqs`` concurrent sequences; each decode step of
    a wave reads every weight once (embedding rows excluded, the LM head included) plus the KV
    of every sequence's context, and writes one KV row per sequence; its time is
    ``max(bytes / bandwidth, FLOPs / matmul rate)``. The first output token of a request comes
    out of its prefill, so a request of ``O`` output tokens has ``O - 1`` decode steps.
The roofline time is prefill + decode; ``output tokens / time`` is the roofline throughput, and
for one request ``decode_tok_s`` (decode steps per second) is the batch-1 latency bound.

    python benchmarks/roofline.py            # measures the ceilings, prints the 8B workloads
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class ModelShape:
    """What the roofline needs of a Llama-family decoder (bytes per element ``dtype_bytes``)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    dtype_bytes: int = 2

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], dtype_bytes: int = 2) -> ModelShape:
        heads = int(cfg["num_attention_heads"])
        return cls(hidden_size=int(cfg["hidden_size"]),
                   intermediate_size=int(cfg["intermediate_size"]),
                   num_layers=int(cfg["num_hidden_layers"]), num_heads=heads,
                   num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
                   vocab_size=int(cfg["vocab_size"]),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   dtype_bytes=dtype_bytes)

    @property
    def linear_params(self) -> int:
        """Elements of the matrices every token multiplies by (layers + LM head)."""
        h, q = self.hidden_size, self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size + 2 * h
        return self.num_layers * per_layer + self.vocab_size * h + h

    @property
    def total_params(self) -> int:
        embed = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.linear_params + embed

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def flops_per_token(self, context: float) -> float:
        attn = 4.0 * self.num_layers * self.num_heads * self.head_dim * context
        return 2.0 * self.linear_params + attn


@dataclass(slots=True)
class Ceilings:
    bandwidth_bytes_s: float
    matmul_flops_s: float
    device: str


def _median_ms(fn: Any, reps: int) -> float:
    import torch

    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _copy_bandwidth(nbytes: int, reps: int) -> float:
    import torch

    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    return 2 * nbytes / (_median_ms(lambda: dst.copy_(src), reps) / 1e3)


def _matmul_rate(n: int, reps: int) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    return 2 * n ** 3 / (_median_ms(lambda: a @ b, reps) / 1e3)


def measure_ceilings(copy_bytes: int = 4 * 2**30, matmul_n: int = 8192,
                     reps: int = 20) -> Ceilings:
    """Measure device-to-device copy bandwidth (read + write) and bf16 matmul FLOP/s."""
    import torch

    bandwidth = _copy_bandwidth(copy_bytes, reps)
    torch.cuda.empty_cache()
    rate = _matmul_rate(matmul_n, reps)
    torch.cuda.empty_cache()
    return Ceilings(bandwidth, rate, torch.cuda.get_device_name(0))


def roofline(shape: ModelShape, ceilings: Ceilings, *, requests: int, prompt_len: int,
             output_len: int, max_num_seqs: int, weight_bytes: float | None = None,
             kv_bytes_per_token: float | None = None) -> dict[str, float]:
    """Roofline seconds and throughput of a workload (see the module docstring).
    ``weight_bytes`` / ``kv_bytes_per_token``: what a decode step reads of the weights and
    per token of KV when not the shape's in its dtype (quantized weights, an fp8 cache). The
    matmul rate stays the measured bf16 one, so for FP8 matmuls the compute-bound parts are
    not their own ceiling (a fraction of this roofline is then an upper bound)."""
    bw, rate = ceilings.bandwidth_bytes_s, ceilings.matmul_flops_s
    # prefill: sum over prompt positions of the per-token FLOPs (causal context = position)
    mean_ctx = (prompt_len - 1) / 2.0
    prefill_flops = requests * prompt_len * shape.flops_per_token(mean_ctx)
    prefill_s = prefill_flops / rate
    if weight_bytes is None:
        weight_bytes = shape.linear_params * shape.dtype_bytes
    kv_tok = shape.kv_bytes_per_token if kv_bytes_per_token is None else kv_bytes_per_token
    decode_s = 0.0
    bytes_total = 0.0
    remaining = requests
    steps = 0
    while remaining > 0:
        batch = min(remaining, max_num_seqs)
        remaining -= batch
        for s in range(output_len - 1):
            ctx = prompt_len + s                      # tokens already in the KV
            step_bytes = weight_bytes + batch * (ctx + 1) * kv_tok
            step_flops = batch * shape.flops_per_token(ctx + 1)
            decode_s += max(step_bytes / bw, step_flops / rate)
            bytes_total += step_bytes
            steps += 1
    total_s = prefill_s + decode_s
    out = {
        "roofline_s": total_s,
        "roofline_prefill_s": prefill_s,
        "roofline_decode_s": decode_s,
        "roofline_output_tok_s": requests * output_len / total_s,
        "roofline_decode_steps": steps,
    }
    if requests == 1 and output_len > 1:
        out["roofline_decode_tok_s"] = (output_len - 1) / decode_s
    return out


LLAMA_3_1_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
}


LLAMA_3_1_70B: dict[str, Any] = {
    **LLAMA_3_1_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
    "num_attention_heads": 64, "num_key_value_heads": 8,
}

SHAPES: dict[str, dict[str, Any]] = {"8b": LLAMA_3_1_8B, "70b": LLAMA_3_1_70B}


def scaled(ceilings: Ceilings, num_gpus: int) -> Ceilings:
    """The ceilings of ``num_gpus`` such devices working together (bandwidth and matmul rate
    add up: the roofline of a model sharded over them with no communication cost)."""
    return Ceilings(ceilings.bandwidth_bytes_s * num_gpus, ceilings.matmul_flops_s * num_gpus,
                    f"{num_gpus} x {ceilings.device}" if num_gpus > 1 else ceilings.device)


def main() -> None:
    ceilings = measure_ceilings()
    shape = ModelShape.from_hf_config(LLAMA_3_1_8B)
    print(json.dumps({"ceilings": asdict(ceilings)}))
    for name, (n, p, o) in {"gpu-8b": (256, 512, 256), "gpu-8b-long": (1000, 1024, 1024),
                            "gpu-8b-b1": (1, 128, 512)}.items():
        r = roofline(shape, ceilings, requests=n, prompt_len=p, output_len=o, max_num_seqs=256)
        print(json.dumps({"workload": name, **{k: round(v, 4) for k, v in r.items()}}))


if __name__ == "__main__":
    main()
