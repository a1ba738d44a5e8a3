"""Load cost and expert compute of a mixture-of-experts GGUF against the same weights as
safetensors, in one run.

    python benchmarks/gguf_moe_load.py [--output results.jsonl]

A random-weight Qwen3-MoE (hidden 512, 8 layers, 32 experts of 256, top-4; about 110 M
parameters, 100 M of them in experts) is written once as HF safetensors (float32) and as a
Q8_0 GGUF in llama.cpp's layout (stacked ``ffn_*_exps``; the writer is the tests'
``tests/model_executor/gguf_moe_writer.py``). Each system then builds the model with
``get_model`` (reference attention, CPU, float32) in its own subprocess, one after the other:

- ``safetensors-fp32``: the HF folder (the peer);
- ``gguf-q8_0``: the GGUF with the CPU default (everything of a kept type kept quantized, the
  routed experts included: ``GGUFMoEMethod``);
- ``gguf-q8_0-dequant``: the GGUF with ``gguf_dequantize`` (everything float).

Per system: load seconds, the process's RSS after the load minus before it (MiB; the peak
RSS delta is printed too, but the imports before the load may hold the peak), the model's
parameter bytes and the file size; then the sparse MLP blocks of all layers timed at
1 and 8 tokens (``moe_ms_t1`` / ``moe_ms_t8``: median of 20, the CPU plugin's kernels, one
thread). One JSON line per system with the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = "MOE_LOAD_RESULT "
CONFIG = dict(vocab_size=4096, hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_experts=32,
              num_experts_per_tok=4, moe_intermediate_size=256, norm_topk_prob=True,
              max_position_embeddings=512, tie_word_embeddings=False)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def make_files(folder: str) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT / "tests" / "model_executor"))
    import gguf
    from gguf_moe_writer import write_moe_gguf

    from vllm_core.model_executor.testing import random_hf_causal_lm

    hf = random_hf_causal_lm("qwen3_moe", CONFIG, seed=0, weight_scale=0.05)
    gguf_path = os.path.join(folder, "moe-Q8_0.gguf")
    write_moe_gguf(hf, gguf_path, "qwen3moe", quant=gguf.GGMLQuantizationType.Q8_0)
    st_folder = os.path.join(folder, "st")
    hf.save_pretrained(st_folder)           # the de-quantized values: same weights
    return st_folder, gguf_path


def child(system: str, path: str) -> None:
    import torch

    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.config import ModelConfig
    from vllm_core.model_executor.loader import get_model

    before = _rss_mib()
    start = time.perf_counter()
    from vllm_core_cpu.worker import CpuLayerOps

    torch.set_num_threads(1)
    model = get_model(ModelConfig(model=path, dtype="float32",
                                  gguf_dequantize=system.endswith("dequant")),
                      ReferenceAttentionBackend, torch.device("cpu"), ops=CpuLayerOps())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    size = (os.path.getsize(path) if path.endswith(".gguf") else
            sum(f.stat().st_size for f in Path(path).glob("*.safetensors")))
    record = {"load_s": round(seconds, 2), "peak_rss_delta_mib": round(peak - before, 1),
              "rss_delta_mib": round(_rss_mib() - before, 1),
              "model_param_mib": round(params / 2**20, 1), "file_mib": round(size / 2**20, 1)}
    blocks = [layer.mlp for layer in model.model.layers]
    gen = torch.Generator().manual_seed(0)
    for tokens in (1, 8):
        x = torch.randn(tokens, CONFIG["hidden_size"], generator=gen)
        times = []
        with torch.no_grad():
            for _ in range(22):
                t0 = time.perf_counter()
                for block in blocks:
                    block(x)
                times.append(time.perf_counter() - t0)
        record[f"moe_ms_t{tokens}"] = round(1000 * sorted(times[2:])[len(times[2:]) // 2], 3)
    print(RESULT + json.dumps(record), flush=True)


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as folder:
        st_folder, gguf_path = make_files(folder)
        systems = [("safetensors-fp32", st_folder), ("gguf-q8_0", gguf_path),
                   ("gguf-q8_0-dequant", gguf_path)]
        lines = []
        for system, path in systems:
            load_before = os.getloadavg()
            proc = subprocess.run([sys.executable, __file__, "--child", system, path],
                                  capture_output=True, text=True)
            record = {"kind": "moe_gguf_load", "system": system, "cpu": cpu_name(),
                      "load_avg_before": [round(x, 2) for x in load_before],
                      "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
            if found:
                record.update(json.loads(found[-1][len(RESULT):]))
            else:
                record["error"] = (proc.stderr or proc.stdout)[-2000:]
            lines.append(record)
            print(json.dumps(record), flush=True)
        peer = lines[0].get("load_s")
        ratios = {r["system"]: round(r["load_s"] / peer, 2) for r in lines[1:]
                  if peer and "load_s" in r}
        speed = {f"{r['system']}_t{t}": round(lines[0][f"moe_ms_t{t}"] / r[f"moe_ms_t{t}"], 2)
                 for r in lines[1:] for t in (1, 8)
                 if f"moe_ms_t{t}" in r and f"moe_ms_t{t}" in lines[0]}
        print(json.dumps({"kind": "moe_gguf_load_ratio", "load_s_vs_safetensors": ratios,
                          "moe_speed_vs_safetensors": speed}))
        if args.output:
            with open(args.output, "a") as f:
                for record in lines:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
