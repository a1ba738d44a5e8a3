"""The model loader: the public entry points the model runner and the engine call.

A model is one of
  * a HuggingFace folder: ``config.json`` + ``*.safetensors`` (optionally sharded with
    ``model.safetensors.index.json``), tokenizer files, ``generation_config.json``;
  * a ``.gguf`` file (or a folder holding exactly one): weights dequantized, architecture,
    tokenizer and chat template from its metadata;
  * for ``load_format="dummy"``: anything carrying a config (a folder with ``config.json``, a
    ``config.json`` path, a ``.gguf``), or ``ModelConfig.arch`` given directly; weights are
    random (uniform in [-1e-3, 1e-3], norms 1), generated on the target device.
``model=None`` means the embedded default model (``default_model.default_model_path``).

Models are built directly on the target device in the target dtype with uninitialised
parameters, so no time is spent on random initialisation that loading would overwrite.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vllm_core.attention.backend import AttentionBackend
from vllm_core.config import ModelArchConfig, ModelConfig
from vllm_core.distributed.parallel_context import ParallelContext
from vllm_core.logger import init_logger
from vllm_core.model_executor.default_model import default_model_path
from vllm_core.model_executor.gguf_loader import (
    gguf_arch_config,
    gguf_generation_defaults,
    iter_gguf_weights_lazy,
)
from vllm_core.model_executor.hf_config import arch_config_from_hf, read_config_json
from vllm_core.model_executor.layers.attention import Attention
from vllm_core.model_executor.layers.fused_moe.method import MoEMethod
from vllm_core.model_executor.layers.ops import LayerOps, TorchLayerOps
from vllm_core.model_executor.layers.weight_method import LinearMethod
from vllm_core.model_executor.models.registry import resolve_model_cls
from vllm_core.model_executor.quantization.base import (
    QuantizationConfig,
    QuantizedLinearMethod,
)
from vllm_core.model_executor.quantization.selection import select_quantization
from vllm_core.model_executor.safetensors_loader import iter_safetensors_lazy
from vllm_core.model_executor.tokenizer import get_tokenizer

__all__ = ["resolve_model", "load_arch_config", "load_generation_defaults",
           "generation_defaults_for", "get_tokenizer",
           "get_model", "build_model", "initialize_dummy_weights"]

logger = init_logger(__name__)

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
DUMMY_RANGE = 1e-3


def resolve_model(model: str | None) -> str:
    """Turn the user's ``model`` into the path the other functions take.

    None -> the default model's GGUF file; a folder with ``config.json`` -> that folder; a
    folder without one but with exactly one ``.gguf`` -> that file; a ``.gguf`` or
    ``config.json`` file -> itself. Returns an absolute path (Hub ids are turned into local
    snapshot folders before, by ``hub.locate_model``). ``FileNotFoundError`` when nothing
    usable is there,
    ``ValueError`` when a folder holds several ``.gguf`` files.
    """
    if model is None:
        model = default_model_path()
    path = os.path.abspath(os.path.expanduser(model))
    if os.path.isfile(path):
        if path.endswith((".gguf", ".json")):
            return path
        raise ValueError(f"model file {path} is neither a .gguf file nor a config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path {model!r} does not exist (models are local "
                                "folders, .gguf files, or Hugging Face Hub ids org/name)")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
    if len(ggufs) == 1:
        return os.path.join(path, ggufs[0])
    if len(ggufs) > 1:
        raise ValueError(f"model folder {path} holds several .gguf files ({', '.join(ggufs)}); "
                         "pass the file to use")
    raise FileNotFoundError(f"model folder {path} has no config.json and no .gguf file")


def load_arch_config(model_path: str, load_format: str = "auto") -> ModelArchConfig:
    """Architecture facts of ``model_path`` (as returned by ``resolve_model``)."""
    _check_load_format(load_format)
    path = resolve_model(model_path)
    if path.endswith(".gguf"):
        if load_format == "safetensors":
            raise ValueError(f"load_format='safetensors' but {path} is a GGUF file")
        return gguf_arch_config(path)
    if load_format == "gguf":
        raise ValueError(f"load_format='gguf' but {path} is not a .gguf file")
    config_file = path if path.endswith(".json") else os.path.join(path, "config.json")
    cfg = read_config_json(config_file)
    try:
        return arch_config_from_hf(cfg)
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from e


def load_generation_defaults(model_path: str) -> dict[str, Any]:
    """Sampling defaults of the model: any of temperature / top_p / top_k / min_p /
    repetition_penalty that its generation config (or GGUF metadata) sets, ``"max_tokens"``
    from its ``max_new_tokens``, plus ``"eos_token_id"``: a list of ints, when known. Empty when
    the model declares nothing."""
    path = resolve_model(model_path)
    if path.endswith(".gguf"):
        return gguf_generation_defaults(path)
    folder = os.path.dirname(path) if path.endswith(".json") else path
    out = _read_generation_config(folder)
    if "eos_token_id" not in out and os.path.isfile(os.path.join(folder, "config.json")):
        eos = read_config_json(os.path.join(folder, "config.json")).get("eos_token_id")
        if eos is not None:
            out["eos_token_id"] = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return out


def _read_generation_config(folder: str) -> dict[str, Any]:
    """The defaults ``folder/generation_config.json`` sets ({} when there is no such file)."""
    gen_file = os.path.join(folder, "generation_config.json")
    if not os.path.isfile(gen_file):
        return {}
    gen = read_config_json(gen_file)
    out: dict[str, Any] = {k: gen[k] for k in SAMPLING_KEYS if gen.get(k) is not None}
    if isinstance(gen.get("max_new_tokens"), int) and gen["max_new_tokens"] > 0:
        out["max_tokens"] = gen["max_new_tokens"]
    eos = gen.get("eos_token_id")
    if eos is not None:
        out["eos_token_id"] = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return out


def generation_defaults_for(model_path: str, generation_config: str) -> dict[str, Any]:
    """The engine's generation defaults for ``--generation-config``:

    - ``"auto"``: the model's own (``load_generation_defaults``);
    - ``"vllm"``: no sampling defaults, but the model's end-of-sequence ids are kept (they are
      part of the model, not a sampling preference);
    - a folder holding ``generation_config.json`` (nothing else needed): its values, with the
      model's eos ids where the file names none. ``FileNotFoundError`` when the folder or the
      file is missing.
    """
    if generation_config == "auto":
        return load_generation_defaults(model_path)
    model_defaults = load_generation_defaults(model_path)
    eos = {"eos_token_id": model_defaults["eos_token_id"]} if "eos_token_id" in model_defaults \
        else {}
    if generation_config == "vllm":
        return eos
    folder = os.path.abspath(os.path.expanduser(generation_config))
    if os.path.isfile(folder) and os.path.basename(folder) == "generation_config.json":
        folder = os.path.dirname(folder)
    if not os.path.isfile(os.path.join(folder, "generation_config.json")):
        raise FileNotFoundError(f"--generation-config {generation_config!r}: expected 'auto', "
                                "'vllm' or a folder holding generation_config.json")
    return {**eos, **_read_generation_config(folder)}


def get_model(model_config: ModelConfig, attn_backend: type[AttentionBackend],
              device: torch.device, ops: LayerOps | None = None,
              parallel: ParallelContext | None = None) -> nn.Module:
    """Build the model of ``model_config`` on ``device`` in ``model_config.dtype`` with its
    weights loaded (or random for ``load_format="dummy"``), in eval mode.

    ``model_config.arch`` is used when set, else read from the model files. Attention layers
    are built from ``attn_backend``; elementwise kernels come from ``ops`` (default
    ``TorchLayerOps``). ``parallel`` (this rank's ``ParallelContext``; None: one rank) shards
    the model, and each rank reads only its slices of the checkpoint. Raises ``ValueError`` for unknown architectures, missing or
    mismatching tensors, and corrupted files; ``FileNotFoundError`` for missing files.
    """
    load_format = model_config.load_format
    _check_load_format(load_format)
    arch = model_config.arch
    path: str | None = None
    if arch is None or load_format != "dummy":
        path = resolve_model(model_config.model)
        if arch is None:
            arch = load_arch_config(path, load_format)
    dtype = _torch_dtype(model_config.dtype, arch)
    quant = model_config.quant_config
    if quant is None:
        quant = select_quantization(arch.hf_config, model_config.quantization,
                                    is_gguf=bool(path and path.endswith(".gguf")),
                                    gguf_dequantize=model_config.gguf_dequantize)
    model = build_model(arch, attn_backend, torch.device(device), dtype, ops, parallel, quant)
    if load_format == "dummy" or path is None:
        initialize_dummy_weights(model, model_config.seed)
    else:
        _load_checkpoint(model, _weights_of(path, arch, quant))
    process_weights_after_loading(model, quant)
    return model.eval()


def build_model(arch: ModelArchConfig, attn_backend: type[AttentionBackend],
                device: torch.device, dtype: torch.dtype, ops: LayerOps | None = None,
                parallel: ParallelContext | None = None,
                quant_config: QuantizationConfig | None = None) -> nn.Module:
    """Construct the registered class of ``arch.architecture`` on ``device`` with ``dtype`` as
    the default dtype; its parameters are left uninitialised (``torch.empty``). A sharded
    ``parallel`` context is passed as ``parallel=``, a quantization config as
    ``quant_config=`` (each only when set, so model classes written before keep working)."""
    cls = resolve_model_cls(arch.architecture)
    kwargs: dict[str, Any] = ({} if parallel is None or parallel.world_size == 1
                              else {"parallel": parallel})
    if quant_config is not None:
        kwargs["quant_config"] = quant_config
    with default_dtype(dtype), device:
        model = cls(arch, attn_backend, ops or TorchLayerOps(), **kwargs)
    return model.requires_grad_(False)


@torch.no_grad()
def initialize_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Fill every parameter in place on its device: norm weights 1, everything else uniform in
    [-DUMMY_RANGE, DUMMY_RANGE] from a generator seeded with ``seed`` (fast on GPUs). Layers
    whose weight method fills its own (quantized) parameters
    (``LinearMethod.initialize_dummy``) are left to it."""
    generators: dict[torch.device, torch.Generator] = {}
    done: set[str] = set()
    for mname, module in model.named_modules():
        method = getattr(module, "method", None)
        if isinstance(method, LinearMethod):
            dev = next(module.parameters()).device
            gen = torch.Generator(device=dev)
            gen.manual_seed(seed)
            if method.initialize_dummy(module, gen):
                done.update(f"{mname}.{p}" for p, _ in module.named_parameters(recurse=False))
    for name, param in model.named_parameters():
        if name in done:
            continue
        if name.rpartition(".")[0].endswith("norm") and param.dim() == 1:
            param.fill_(1.0)
            continue
        gen = generators.get(param.device)
        if gen is None:
            gen = generators[param.device] = torch.Generator(device=param.device)
            gen.manual_seed(seed)
        param.uniform_(-DUMMY_RANGE, DUMMY_RANGE, generator=gen)


def process_weights_after_loading(model: nn.Module,
                                  quant_config: QuantizationConfig | None = None) -> None:
    """Let every linear layer's weight method repack what was loaded
    (``LinearMethod.process_after_loading``), hand a quantized layer's kernel layout to the
    platform (``QuantizedLinearMethod.adopt_platform_layout``), then log the quantization
    method and kernel of each distinct layer kind when the model is quantized."""
    described: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            module.process_after_loading()
        method = getattr(module, "method", None)
        if isinstance(method, MoEMethod):            # stacked experts (FP8 repacks here)
            method.process_after_loading(module)
            if quant_config is not None and hasattr(method, "describe"):
                described.setdefault("experts", method.describe())
        if isinstance(method, LinearMethod):
            method.process_after_loading(module)
            if isinstance(method, QuantizedLinearMethod):
                method.adopt_platform_layout(module)
            if quant_config is not None:
                kind = name.rsplit(".", 1)[-1]
                described.setdefault(kind, method.describe(module))
    if quant_config is not None:
        logger.info("quantization: %s; %s", quant_config.summary(),
                    "; ".join(f"{k}: {v}" for k, v in described.items()))


def _weights_of(path: str, arch: ModelArchConfig,
                quant: QuantizationConfig | None = None) -> Iterator[tuple[str, Any]]:
    """Lazy ``(name, LazyTensor)`` pairs: layers read only the slices their rank owns (a GGUF
    file's kept-quantized layers as their WNA16 parts when ``quant`` is the GGUF method)."""
    if path.endswith(".gguf"):
        return iter_gguf_weights_lazy(path, arch, quant if getattr(quant, "name", None)
                                      == "gguf" else None)
    if path.endswith(".json"):
        raise ValueError(f"{path} is a config file without weights; use load_format='dummy' "
                         "or pass the model folder")
    return iter_safetensors_lazy(path)


def _load_checkpoint(model: nn.Module, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    loaded = model.load_weights(weights)
    expected = getattr(model, "expected_weight_keys", None)
    if callable(expected):
        missing = sorted(k for k in expected() - loaded if k.split("[")[0] not in loaded)
    else:
        missing = sorted({n for n, _ in model.named_parameters()} - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")


def _torch_dtype(name: str, arch: ModelArchConfig) -> torch.dtype:
    if name == "auto":
        name = str(arch.hf_config.get("dtype") or arch.hf_config.get("torch_dtype")
                   or "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must name a torch floating dtype, got {name!r}")
    return dtype


def _check_load_format(load_format: str) -> None:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}, "
                         f"got {load_format!r}")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype is ``dtype`` inside the block (modules built there get it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)

