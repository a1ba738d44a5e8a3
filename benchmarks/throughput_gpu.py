"""Offline GPU throughput and batch-1 latency: vllm-core against HF transformers, with the
roofline computed in the same run.

One command per workload (or all), one JSON line per system, then a summary line per workload
with the ratios and the fraction of the roofline::

    python benchmarks/throughput_gpu.py --workload gpu-8b --output results.jsonl
    python benchmarks/throughput_gpu.py --workload gpu-8b-long --peer-requests 0
    python benchmarks/throughput_gpu.py --workload gpu-8b-b1

Method (design section 6):

- Model: the Llama-3.1-8B shape (``roofline.LLAMA_3_1_8B``) with random weights in bf16;
  the ``gpu-70b*`` workloads use the Llama-3.1-70B shape (``--num-layers`` keeps fewer of its
  layers, for a host where the whole model does not fit).
  vllm-core loads it with ``load_format="dummy"`` from a folder holding only ``config.json``
  and a synthetic WordLevel tokenizer (one word per id); HF builds the same config with its own
  random initialisation, on the GPU. Weights' values do not change the work done.
- Prompts: ``requests`` x ``prompt_len`` token ids drawn uniformly with a fixed seed; every
  system gets the same ids; ``ignore_eos`` (HF: no EOS id, ``min_new_tokens``), so each request
  yields exactly ``output_len`` tokens (the lines report the tokens actually produced).
- Systems, each in its own subprocess, one after another: ``vllm-core``; ``hf-batch``
  (``model.generate_batch``, transformers' continuous batching); ``hf-static``
  (``model.generate`` in static batches of ``--hf-batch-size``, default 64).
  ``--peer-requests N`` runs the HF peers on the first N requests only (their line says so).
- ``elapsed_s`` times generation only, after a small warm-up request; ``startup_s`` is engine /
  model construction (vllm-core: profiling, KV allocation and CUDA graph capture included).
- Roofline: ``roofline.measure_ceilings`` (device copy bandwidth, bf16 matmul rate) in a
  subprocess of the same run, then ``roofline.roofline`` for the workload with vllm-core's
  ``max_num_seqs``; ``fraction_of_roofline`` = measured output tok/s over roofline tok/s
  (batch 1: decode tok/s over the decode roofline; the roofline assumes bf16 weights). The
  shape is read from the model folder's config.json; with ``tp x pp`` GPUs the ceilings of one
  GPU are multiplied by their number (``roofline.scaled``), so the fraction is of the whole set.
- Several GPUs: vllm-core with ``-tp`` / ``-pp``; HF with ``device_map="auto"`` over every
  visible GPU (accelerate's layer split) when more than one GPU is visible.
- ``--quantization`` (vllm-core only): ``fp8`` / ``int8`` quantize the random bf16 weights at load;
  ``gptq`` / ``awq`` / ``compressed-tensors`` (W4A16, group 128) load random packed weights
  through a copy of the model folder whose config.json declares that checkpoint format
  (``QUANT_CONFIGS``). ``--kv-cache-dtype`` is passed through. Lines carry both fields.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from roofline import SHAPES, Ceilings, ModelShape, roofline, scaled  # noqa: E402

RESULT_PREFIX = "BENCH_RESULT "
SYSTEMS = ("vllm-core", "hf-batch", "hf-static")
MODELS_DIR = REPO / ".bench" / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "llama-3.1-8b-shape"


@dataclass(slots=True, frozen=True)
class Workload:
    name: str
    requests: int
    prompt_len: int
    output_len: int
    shape: str = "8b"


WORKLOADS = {
    "gpu-8b": Workload("gpu-8b", 256, 512, 256),
    "gpu-8b-long": Workload("gpu-8b-long", 1000, 1024, 1024),
    "gpu-8b-b1": Workload("gpu-8b-b1", 1, 128, 512),
    "gpu-70b": Workload("gpu-70b", 256, 512, 256, "70b"),
    "gpu-70b-b1": Workload("gpu-70b-b1", 1, 128, 512, "70b"),
}


def default_model_dir(shape: str, num_layers: int | None) -> Path:
    suffix = f"-{num_layers}l" if num_layers else ""
    return MODELS_DIR / f"llama-3.1-{shape}-shape{suffix}"


# ---- model folder and prompts ------------------------------------------------------------------

# a checkpoint format's quantization_config for the random-weight model (W4A16, group 128)
QUANT_CONFIGS: dict[str, dict[str, Any]] = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
             "sym": True, "checkpoint_format": "gptq"},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
            "version": "gemm"},
    "compressed-tensors": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                           "config_groups": {"group_0": {
                               "targets": ["Linear"], "input_activations": None,
                               "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                           "strategy": "group", "group_size": 128}}},
                           "ignore": ["lm_head"]},
}


def quantized_model_dir(folder: Path, method: str | None) -> Path:
    """``folder`` itself, or for a checkpoint format of ``QUANT_CONFIGS`` a sibling folder
    with the same files whose config.json declares it (weights stay random: dummy load)."""
    if method not in QUANT_CONFIGS:
        return folder
    target = folder.parent / f"{folder.name}-{method}"
    target.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.name != "config.json":
            (target / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = QUANT_CONFIGS[method]
    (target / "config.json").write_text(json.dumps(cfg, indent=1))
    return target


def ensure_model_dir(folder: Path, shape: str = "8b", num_layers: int | None = None) -> Path:
    """config.json of the shape (8B unless named; ``num_layers`` keeps that many of its
    layers) plus a WordLevel tokenizer covering its vocabulary."""
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(SHAPES[shape])
    if num_layers:
        cfg["num_hidden_layers"] = num_layers
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    vocab = {f"t{i}": i for i in range(cfg["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(str(folder))
    return folder


def warmup_prompts(w: Workload) -> list[list[int]]:
    """Prompts of the workload's length (two, or one for a one-request workload, so that
    Triton's specialisation on integer arguments equal to 1 is compiled before timing) that
    share no prefix with its prompts, so the warm-up leaves nothing the run could hit in the
    prefix cache."""
    import numpy as np

    rng = np.random.default_rng(10_000 + w.prompt_len)
    count = 1 if w.requests == 1 else 2
    return rng.integers(0, SHAPES[w.shape]["vocab_size"], size=(count, w.prompt_len)).tolist()


def stored_bytes(shape: ModelShape, weights_gib: float, kv_cache_dtype: str
                 ) -> dict[str, float]:
    """The roofline's bytes for a quantized model or cache: a decode step reads the weights
    as loaded (``weights_gib``, the engine's figure) but one row of the embedding table, and
    one byte per KV element in an fp8 cache."""
    embed = 0 if shape.tie_word_embeddings else (shape.vocab_size * shape.hidden_size
                                                 * shape.dtype_bytes)
    kv = shape.kv_bytes_per_token
    if kv_cache_dtype.startswith("fp8"):
        kv = kv // shape.dtype_bytes
    return {"weight_bytes": weights_gib * 2**30 - embed, "kv_bytes_per_token": kv}


def make_prompts(w: Workload, vocab_size: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, size=(w.requests, w.prompt_len)).tolist()


# ---- the systems (run in a subprocess each) -----------------------------------------------------

def _gpu_facts() -> dict[str, Any]:
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"gpu": torch.cuda.get_device_name(0),
            "peak_torch_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "gpu_used_gib": round((total - free) / 2**30, 2)}


def run_vllm_core(args: argparse.Namespace, w: Workload, prompts: list[list[int]]
                  ) -> dict[str, Any]:
    import torch

    from vllm_core import LLM, SamplingParams

    start = time.perf_counter()
    model_dir = quantized_model_dir(Path(args.model_dir), args.quantization)
    quant = None if args.quantization in QUANT_CONFIGS else args.quantization
    llm = LLM(str(model_dir), dtype="bfloat16", load_format="dummy", quantization=quant,
              kv_cache_dtype=args.kv_cache_dtype,
              max_model_len=w.prompt_len + w.output_len, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens,
              gpu_memory_utilization=args.gpu_memory_utilization,
              enforce_eager=args.enforce_eager, attention_backend=args.attention_backend,
              async_scheduling=args.async_scheduling,
              tensor_parallel_size=args.tensor_parallel_size,
              pipeline_parallel_size=args.pipeline_parallel_size,
              data_parallel_size=args.data_parallel_size,
              pipeline_micro_batching=args.pipeline_micro_batching)
    startup = time.perf_counter() - start
    engine = llm.llm_engine
    if engine.config.parallel.world_size > 1 or not engine.in_process:
        return _run_vllm_core_parallel(llm, w, prompts, startup)
    worker = engine.executor.worker
    runner = worker.runner
    warm = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in warmup_prompts(w)], warm, use_tqdm=False)
    from vllm_core.worker.runner_stats import KVWasteStats, StepTiming

    runner.kv_waste = KVWasteStats()
    runner.num_graph_steps = runner.num_eager_steps = 0
    torch.cuda.reset_peak_memory_stats()
    params = SamplingParams(temperature=0.0, max_tokens=w.output_len, ignore_eos=True,
                            detokenize=False)
    phases = {}
    if args.profile:
        from gpu_profile import profile_phases

        phases = profile_phases(llm, prompts, args.profile)
    runner.timing = StepTiming()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    res: dict[str, Any] = {
        "output_tokens": out_tokens, "elapsed_s": round(elapsed, 3),
        "output_tok_s": round(out_tokens / elapsed, 1),
        "total_tok_s": round((out_tokens + w.requests * w.prompt_len) / elapsed, 1),
        "startup_s": round(startup, 2),
        "graph_capture_s": round(worker.graph_capture_seconds, 2),
        "kv_blocks": engine.config.cache.num_blocks,
        "kv_block_size": engine.config.cache.block_size,
        "kv_cache_gib": round(worker.memory_report.get("kv_cache_gib", 0.0), 2),
        "weights_gib": round(worker.memory_report.get("weights_gib", 0.0), 2),
        "graph_steps": runner.num_graph_steps, "eager_steps": runner.num_eager_steps,
        "attention_backend": runner.attn_backend.name,
        "async_scheduling": engine.async_scheduling, "fed_rows": runner.num_fed_rows,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": engine.config.scheduler.max_num_batched_tokens,
        **runner.kv_waste.as_dict(), **runner.timing.as_dict(), **_gpu_facts(), **phases,
    }
    if args.timeline:
        from gpu_profile import fresh_prompts
        from gpu_timeline import timeline

        res.update(timeline(llm, fresh_prompts(prompts, 50_000), params, args.timeline))
    if w.requests == 1:
        m = outs[0].metrics
        if m is not None and m.first_token_time and m.last_token_time:
            res["ttft_s"] = round(m.first_token_time - m.arrival_time, 4)
            decode = m.last_token_time - m.first_token_time
            res["decode_tok_s"] = round((out_tokens - 1) / decode, 1)
            res["tpot_ms"] = round(1e3 * decode / (out_tokens - 1), 3)
    engine.shutdown()
    return res


def _run_vllm_core_parallel(llm: Any, w: Workload, prompts: list[list[int]],
                            startup: float) -> dict[str, Any]:
    """The timed run with several ranks (mp executor) or engine cores (data parallelism): the
    runners live in other processes, so only the engine-side figures are reported."""
    from vllm_core import SamplingParams

    engine = llm.llm_engine
    par = engine.config.parallel
    warm = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in warmup_prompts(w)], warm, use_tqdm=False)
    params = SamplingParams(temperature=0.0, max_tokens=w.output_len, ignore_eos=True,
                            detokenize=False)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    res: dict[str, Any] = {
        "tensor_parallel_size": par.tensor_parallel_size,
        "pipeline_parallel_size": par.pipeline_parallel_size,
        "data_parallel_size": par.data_parallel_size,
        "output_tokens": out_tokens, "elapsed_s": round(elapsed, 3),
        "output_tok_s": round(out_tokens / elapsed, 1),
        "total_tok_s": round((out_tokens + w.requests * w.prompt_len) / elapsed, 1),
        "startup_s": round(startup, 2), "kv_blocks": engine.config.cache.num_blocks,
        "async_scheduling": engine.async_scheduling,
        "graphs": bool(engine.config.graph_batch_sizes),
        "pipeline_micro_batching": par.max_concurrent_batches > 1,
    }
    queue = engine.core.batch_queue if engine.in_process else None
    if queue is not None:                        # cumulative, warm-up included
        st = queue.stats
        res.update(pp_steps=st.num_steps, pp_overlapped_steps=st.num_overlapped_steps,
                   pp_max_in_flight=st.max_in_flight)
    if engine.in_process and par.data_parallel_size == 1:   # per rank: graph / eager steps
        res["ranks"] = [{k: r[k] for k in ("rank", "graph_steps", "eager_steps")}
                        | {"max_graph_size": max(r["graph_sizes"], default=0)}
                        for r in engine.executor.collective_rpc("graph_report")]
    if w.requests == 1:
        m = outs[0].metrics
        if m is not None and m.first_token_time and m.last_token_time:
            res["ttft_s"] = round(m.first_token_time - m.arrival_time, 4)
            decode = m.last_token_time - m.first_token_time
            res["decode_tok_s"] = round((out_tokens - 1) / decode, 1)
            res["tpot_ms"] = round(1e3 * decode / (out_tokens - 1), 3)
    engine.shutdown()
    return res


def _hf_model(args: argparse.Namespace) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(args.model_dir))
    cfg.eos_token_id = None
    if torch.cuda.device_count() > 1:
        model = _hf_model_split(cfg)
    else:
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _hf_model_split(cfg: Any) -> Any:
    """The model's layers spread over every visible GPU by accelerate (``device_map="auto"``),
    each weight initialised at random directly on its GPU (normal, std 0.02); buffers
    (rotary tables) are computed as usual and moved by ``dispatch_model``."""
    import torch
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n = torch.cuda.device_count()
    free = {i: int(torch.cuda.mem_get_info(i)[0] * 0.85) for i in range(n)}
    device_map = infer_auto_device_map(model, max_memory=free,
                                       no_split_module_classes=model._no_split_modules)
    for name, p in model.named_parameters():   # buffers (rotary tables) stay real, on the CPU
        prefix = name
        while prefix and prefix not in device_map:
            prefix = prefix.rpartition(".")[0]
        dev = device_map.get(prefix, device_map.get("", 0))
        value = torch.empty(p.shape, dtype=p.dtype, device=dev).normal_(0.0, 0.02)
        set_module_tensor_to_device(model, name, dev, value=value)
    return dispatch_model(model, device_map=device_map)


def run_hf_batch(args: argparse.Namespace, w: Workload, prompts: list[list[int]]
                 ) -> dict[str, Any]:
    import inspect

    import torch
    from transformers import GenerationConfig

    start = time.perf_counter()
    model = _hf_model(args)
    startup = time.perf_counter() - start
    extra = {}
    if "progress_bar" in inspect.signature(model.generate_batch).parameters:
        extra["progress_bar"] = False

    def cfg(n: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None,
                                pad_token_id=0)

    model.generate_batch(inputs=warmup_prompts(w), generation_config=cfg(8), **extra)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = model.generate_batch(inputs=prompts, generation_config=cfg(w.output_len), **extra)
    elapsed = time.perf_counter() - t0
    out_tokens = sum(len(o.generated_tokens) for o in outs.values())
    return {"output_tokens": out_tokens, "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(out_tokens / elapsed, 1), "startup_s": round(startup, 2),
            "attn_implementation": str(getattr(model.config, "_attn_implementation", None)),
            **_gpu_facts()}


def run_hf_static(args: argparse.Namespace, w: Workload, prompts: list[list[int]]
                  ) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    model = _hf_model(args)
    startup = time.perf_counter() - start
    bs = args.hf_batch_size

    def gen(batch: list[list[int]], n: int) -> int:
        ids = torch.tensor(batch, device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        return int((out.shape[1] - ids.shape[1]) * ids.shape[0])

    gen(warmup_prompts(w), 8)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out_tokens = sum(gen(prompts[i:i + bs], w.output_len) for i in range(0, len(prompts), bs))
    elapsed = time.perf_counter() - t0
    return {"output_tokens": out_tokens, "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(out_tokens / elapsed, 1), "startup_s": round(startup, 2),
            "batch_size": bs, **_gpu_facts()}


def run_ceilings(args: argparse.Namespace) -> dict[str, Any]:
    from roofline import measure_ceilings

    c = measure_ceilings()
    return {"bandwidth_bytes_s": c.bandwidth_bytes_s, "matmul_flops_s": c.matmul_flops_s,
            "device": c.device}


def worker_main(args: argparse.Namespace) -> None:
    if args.worker == "ceilings":
        res = run_ceilings(args)
    else:
        w = WORKLOADS[args.workload]
        if args.requests:
            w = Workload(w.name, args.requests, w.prompt_len, w.output_len)
        prompts = make_prompts(w, SHAPES[w.shape]["vocab_size"], args.seed)
        fn = {"vllm-core": run_vllm_core, "hf-batch": run_hf_batch,
              "hf-static": run_hf_static}[args.worker]
        res = fn(args, w, prompts)
    print(RESULT_PREFIX + json.dumps(res), flush=True)


# ---- the driver ----------------------------------------------------------------------------------

def spawn(args: argparse.Namespace, worker: str, workload: str | None = None,
          requests: int | None = None, timeout: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", worker, "--model-dir", str(args.model_dir),
           "--max-num-seqs", str(args.max_num_seqs),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--gpu-memory-utilization", str(args.gpu_memory_utilization),
           "--hf-batch-size", str(args.hf_batch_size), "--seed", str(args.seed),
           "--tensor-parallel-size", str(args.tensor_parallel_size),
           "--pipeline-parallel-size", str(args.pipeline_parallel_size),
           "--data-parallel-size", str(args.data_parallel_size),
           "--kv-cache-dtype", args.kv_cache_dtype]
    if args.quantization:
        cmd += ["--quantization", args.quantization]
    if workload:
        cmd += ["--workload", workload]
    if requests:
        cmd += ["--requests", str(requests)]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    if args.attention_backend:
        cmd += ["--attention-backend", args.attention_backend]
    if args.async_scheduling is not None:
        cmd.append("--async-scheduling" if args.async_scheduling else "--no-async-scheduling")
    cmd.append("--pipeline-micro-batching" if args.pipeline_micro_batching
               else "--no-pipeline-micro-batching")
    if args.profile and worker == "vllm-core":
        cmd += ["--profile", args.profile]
    if args.timeline and worker == "vllm-core":
        cmd += ["--timeline", args.timeline]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as e:
        text = e.stderr or e.output or ""
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        sys.stderr.write(f"[{worker}] timed out after {timeout} s; its last output:\n"
                         f"{text[-3000:]}\n")
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    text = proc.stderr or proc.stdout
    tail = text[-3000:]
    cause = [ln for ln in text.splitlines()           # a native abort's message precedes frames
             if any(k in ln for k in ("Error", "what()", "terminate called", "Traceback"))]
    sys.stderr.write(f"[{worker}] failed (rc {proc.returncode}, "
                     f"{time.perf_counter() - t0:.0f} s):\n" + "\n".join(cause[:20])
                     + f"\n...\n{tail}\n")
    raised = [ln for ln in tail.splitlines()      # the exception, not a warning after it
              if ln and not ln[0].isspace() and ("Error:" in ln or "Exception:" in ln)]
    last = tail.strip().splitlines()[-1] if tail.strip() else f"rc {proc.returncode}"
    return {"error": raised[-1] if raised else last}


def driver(args: argparse.Namespace) -> None:
    names = ([n for n, w in WORKLOADS.items() if w.shape == "8b"] if args.workload == "all"
             else args.workload.split(","))
    shapes = {WORKLOADS[n].shape for n in names}
    if len(shapes) > 1:
        raise SystemExit("--workload: one model shape per run (8B and 70B workloads apart)")
    shape_name = shapes.pop()
    if args.model_dir is None:
        args.model_dir = default_model_dir(shape_name, args.num_layers)
    args.model_dir = ensure_model_dir(Path(args.model_dir), shape_name, args.num_layers)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            raise SystemExit(f"--systems: unknown system {s!r} (known: {', '.join(SYSTEMS)})")
    c = spawn(args, "ceilings")
    if "error" in c:
        raise SystemExit(f"could not measure the ceilings: {c['error']}")
    ceilings = Ceilings(c["bandwidth_bytes_s"], c["matmul_flops_s"], c["device"])
    num_gpus = (args.tensor_parallel_size * args.pipeline_parallel_size
                * args.data_parallel_size)
    shape = ModelShape.from_hf_config(json.loads((args.model_dir / "config.json").read_text()))
    out = open(args.output, "a") if args.output else None

    def emit(obj: dict[str, Any]) -> None:
        line = json.dumps(obj)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    emit({"kind": "ceilings", "gpu": ceilings.device,
          "bandwidth_tb_s": round(ceilings.bandwidth_bytes_s / 1e12, 3),
          "matmul_tflop_s": round(ceilings.matmul_flops_s / 1e12, 1)})
    ceilings = scaled(ceilings, num_gpus)
    for name in names:
        w = WORKLOADS[name]
        roof = roofline(shape, ceilings, requests=w.requests, prompt_len=w.prompt_len,
                        output_len=w.output_len, max_num_seqs=args.max_num_seqs)
        results: dict[str, dict[str, Any]] = {}
        for system in systems:
            peer = system != "vllm-core"
            if peer and w.requests == 1 and system == "hf-batch":
                continue
            n = w.requests
            if peer and args.peer_requests is not None:
                n = min(n, args.peer_requests)
                if n == 0:
                    continue
            res = spawn(args, system, name, n if n != w.requests else None,
                        timeout=args.timeout)
            res = {"system": system, "workload": name, "requests": n,
                   "prompt_len": w.prompt_len, "output_len": w.output_len,
                   **({"quantization": args.quantization or "none",
                       "kv_cache_dtype": args.kv_cache_dtype, **kernel_knobs()}
                      if not peer else {}), **res}
            results[system] = res
            emit(res)
        core = results.get("vllm-core", {})
        if core.get("weights_gib") and (args.quantization or args.kv_cache_dtype != "auto"):
            roof = roofline(shape, ceilings, requests=w.requests, prompt_len=w.prompt_len,
                            output_len=w.output_len, max_num_seqs=args.max_num_seqs,
                            **stored_bytes(shape, core["weights_gib"], args.kv_cache_dtype))
        summary: dict[str, Any] = {"kind": "summary", "workload": name, "gpu": ceilings.device,
                                   "num_gpus": num_gpus, "num_layers": shape.num_layers,
                                   "quantization": args.quantization or "none",
                                   "kv_cache_dtype": args.kv_cache_dtype, **kernel_knobs(),
                                   **{k: round(v, 2) if isinstance(v, float) else v
                                      for k, v in roof.items()}}
        if "output_tok_s" in core:
            summary["vllm_core_output_tok_s"] = core["output_tok_s"]
            summary["fraction_of_roofline"] = round(
                core["output_tok_s"] / roof["roofline_output_tok_s"], 3)
            if "decode_tok_s" in core and "roofline_decode_tok_s" in roof:
                summary["decode_fraction_of_roofline"] = round(
                    core["decode_tok_s"] / roof["roofline_decode_tok_s"], 3)
            for system, res in results.items():
                if system != "vllm-core" and res.get("output_tok_s"):
                    summary[f"ratio_vs_{system}"] = round(
                        core["output_tok_s"] / res["output_tok_s"], 2)
                    if res["requests"] != w.requests:
                        summary[f"{system}_requests"] = res["requests"]
        emit(summary)
    if out:
        out.close()


#: Engine variables an A/B of this benchmark may set, recorded with every ``VLLM_TRITON_*`` /
#: ``VLLM_CUDA_*`` one.
ENGINE_KNOBS = ("VLLM_FREEZE_GC_HEAP",)


def kernel_knobs() -> dict[str, dict[str, str]]:
    """The kernel and engine variables set for this run (``VLLM_TRITON_*``, ``VLLM_CUDA_*``,
    ``ENGINE_KNOBS``), so A/B lines say which variant they measured; empty when none is set."""
    knobs = {k: v for k, v in sorted(os.environ.items())
             if v and (k.startswith(("VLLM_TRITON_", "VLLM_CUDA_")) or k in ENGINE_KNOBS)}
    return {"knobs": knobs} if knobs else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="gpu-8b",
                   help="gpu-8b, gpu-8b-long, gpu-8b-b1, gpu-70b, gpu-70b-b1, a comma list of "
                        "one shape's workloads, or all (the 8B ones)")
    p.add_argument("--systems", default="vllm-core,hf-batch,hf-static")
    p.add_argument("--peer-requests", type=int, default=None,
                   help="run the HF peers on the first N requests only (0: skip them)")
    p.add_argument("--model-dir", default=None,
                   help="a model folder (default: the workload's shape under .bench/models)")
    p.add_argument("--num-layers", type=int, default=None,
                   help="keep this many of the shape's layers (a 70B shape that fits fewer GPUs)")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--attention-backend", default=None)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="vllm-core: overlap steps (default: the platform's choice, on for CUDA)")
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--quantization", default=None,
                   help="vllm-core: fp8 / int8 (online), or gptq / awq / compressed-tensors (random "
                        "W4A16 weights in that checkpoint layout)")
    p.add_argument("--kv-cache-dtype", default="auto", help="vllm-core: auto, fp8, fp8_e5m2")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="vllm-core: TP ranks (mp executor, one GPU each)")
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1,
                   help="vllm-core: pipeline stages (mp executor, one GPU each)")
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                   help="vllm-core: engine cores, each on its own TP x PP GPUs")
    p.add_argument("--pipeline-micro-batching", action=argparse.BooleanOptionalAction,
                   default=False, help="vllm-core with -pp > 1: one batch in flight per stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None, help="seconds per system")
    p.add_argument("--profile", default=None,
                   help="vllm-core: time and profile prefill-only and prefill+decode windows before the measured run (gpu_profile.py), kernel tables to this file")
    p.add_argument("--timeline", default=None,
                   help="vllm-core: after the measured run, one more on fresh prompts under a CUDA-only trace (gpu_timeline.py): GPU busy share and idle gaps in the record, the longest gaps to this file")
    p.add_argument("--output", default=None, help="append the JSON lines to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
