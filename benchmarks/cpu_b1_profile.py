"""Where the time of a ``cpu-b1`` decode step goes: the embedded SmolLM2-135M GGUF, one request
(128 random prompt tokens), ``--tokens`` greedy output tokens, in this process.

    python benchmarks/cpu_b1_profile.py [--dequantize] [--tokens 128] [--torch]

Two views, both printed as JSON lines:

- ``torch``: ``torch.profiler`` over the decode, self CPU time per op (``aten::*`` and the
  plugin's kernels) summed by op class (quantized linear, float linear, attention, norms,
  rotary, elementwise, sampling, copies), per decode step;
- ``stacks`` (default): a sampling profile of the Python stacks (``py-spy``, run on this
  process from outside; ``pip install py-spy``), each sample given to the first matching
  phase: the model forward by op class, the logits, the sampler, the runner's input
  staging, the scheduler, output processing / detokenization, the engine loop.

The step's wall time and the load average are printed with it (a loaded machine stretches
every phase; compare shares, not milliseconds).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

PROMPT_LEN = 128

#: (phase, any of these frame names in the stack) -- first match wins, innermost phases first
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("forward: fused decoder stack (one C++ call, CPU plugin)", ("DecodeStack.forward",)),
    ("forward: quantized linear (wna16 kernel)", ("wna16_linear",)),
    ("forward: attention", ("CpuAttentionImpl", "paged_attention", "Attention.forward",
                            "forward_with_rotary")),
    ("forward: norms", ("rms_norm", "fused_add_rms_norm", "RMSNorm.forward")),
    ("forward: rotary", ("rotary", "RotaryEmbedding.forward")),
    ("forward: float linear", ("CpuLayerOps.linear", "LayerOps.linear")),
    ("forward: embedding", ("VocabParallelEmbedding.forward",)),
    ("forward: other python", ("DecoderModel.forward",)),
    ("logits", ("compute_logits",)),
    ("sampler", ("Sampler.", "_sample", "sampling_metadata", "_sampling_metadata")),
    ("runner: staging / plan", ("_stage", "plan_step", "update_states", "build")),
    ("runner: other", ("ModelRunner.",)),
    ("scheduler", ("Scheduler.",)),
    ("output processing / detokenize", ("OutputProcessor", "detokeniz", "Detokenizer",
                                        "process_outputs", "RequestOutput")),
    ("engine loop", ("EngineCore.", "LLMEngine.", "LLM._run")),
)


def classify(stack: str) -> str:
    for phase, names in PHASES:
        if any(n in stack for n in names):
            return phase
    return "other"


def make_llm(dequantize: bool) -> Any:
    from vllm_core import LLM

    return LLM(dtype="float32", gguf_dequantize=dequantize, max_num_seqs=1,
               enable_prefix_caching=False)


def prompt() -> dict[str, Any]:
    import numpy as np

    ids = np.random.default_rng(0).integers(1000, 40000, PROMPT_LEN).tolist()
    return {"prompt_token_ids": ids}


def decode(llm: Any, tokens: int) -> float:
    from vllm_core import SamplingParams

    sp = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0)
    t = time.perf_counter()
    llm.generate([prompt()], sp, use_tqdm=False)
    return time.perf_counter() - t


def torch_view(llm: Any, tokens: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    classes = (("quantized linear", ("wna16",)), ("attention", ("attention", "sdpa")),
               ("float linear", ("addmm", "aten::mm", "linear", "matmul")),
               ("norms", ("rsqrt", "pow", "mean")), ("sampling", ("argmax", "topk", "sort",
                                                                  "softmax", "multinomial")),
               ("copies", ("copy_", "to", "cat", "index_select", "clone", "contiguous")),
               ("elementwise", ("mul", "add", "silu", "sub", "neg", "where")))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = decode(llm, tokens)
    totals: dict[str, float] = collections.Counter()
    top = []
    for ev in prof.key_averages():
        name = ev.key
        us = ev.self_cpu_time_total
        top.append((us, name, ev.count))
        cls = next((c for c, keys in classes if any(k in name for k in keys)), "other ops")
        totals[cls] += us
    steps = tokens
    return {"view": "torch", "wall_ms_per_step": round(1e3 * wall / steps, 3),
            "self_cpu_ms_per_step": {k: round(v / 1e3 / steps, 3)
                                     for k, v in sorted(totals.items(), key=lambda x: -x[1])},
            "top_ops": [{"op": n, "ms_per_step": round(us / 1e3 / steps, 3),
                         "calls_per_step": round(c / steps, 1)}
                        for us, n, c in sorted(top, reverse=True)[:15]]}


def stacks_view(tokens: int, dequantize: bool) -> dict[str, Any]:
    """Run ``--child`` under py-spy and attribute its samples to ``PHASES``."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "stacks.txt")
        cmd = [sys.executable, __file__, "--child", "--tokens", str(tokens)]
        if dequantize:
            cmd.append("--dequantize")
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = child.stdout.readline()            # "READY": warm, about to decode
        if not line.startswith("READY"):
            raise RuntimeError(f"child failed: {line!r}")
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(child.pid), "--rate", "250",
                                "--format", "raw", "--output", raw, "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)                           # py-spy attaches
        os.kill(child.pid, 10)                    # SIGUSR1: start decoding
        out = child.stdout.read()
        child.wait()
        spy.wait(timeout=60)
        counts: dict[str, int] = collections.Counter()
        with open(raw, encoding="utf-8") as f:
            for row in f:
                stack, _, n = row.rstrip().rpartition(" ")
                if "decode (cpu_b1_profile.py" not in stack:
                    continue                      # samples outside the timed decode
                counts[classify(stack)] += int(n)
    total = sum(counts.values()) or 1
    wall = json.loads(out.strip().splitlines()[-1])["wall_s"]
    return {"view": "stacks", "wall_ms_per_step": round(1e3 * wall / tokens, 3),
            "samples": total, "share": {k: round(v / total, 3)
                                        for k, v in sorted(counts.items(), key=lambda x: -x[1])}}


def child(tokens: int, dequantize: bool) -> None:
    import signal

    llm = make_llm(dequantize)
    decode(llm, 8)
    started = []
    signal.signal(signal.SIGUSR1, lambda *_: started.append(1))
    print("READY", flush=True)
    while not started:
        time.sleep(0.05)
    wall = decode(llm, tokens)
    print(json.dumps({"wall_s": wall}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--dequantize", action="store_true")
    p.add_argument("--torch", action="store_true", help="the torch.profiler view")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.tokens, args.dequantize)
        return 0
    load = os.getloadavg()[0]
    if args.torch:
        llm = make_llm(args.dequantize)
        decode(llm, 8)
        result = torch_view(llm, args.tokens)
    else:
        result = stacks_view(args.tokens, args.dequantize)
    result.update({"bench": "cpu-b1-profile", "dequantize": args.dequantize,
                   "tokens": args.tokens, "loadavg_before": round(load, 2),
                   "loadavg_after": round(os.getloadavg()[0], 2)})
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
