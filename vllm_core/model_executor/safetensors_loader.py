"""Finding and streaming the safetensors weights of a HuggingFace model folder.

Only safetensors are read. Pickle checkpoints (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) can
run arbitrary code when loaded, so a folder holding only those is refused with an error that
says how to convert it. Errors name the offending file: ``FileNotFoundError`` for a missing
file (including a shard listed in ``model.safetensors.index.json``), ``ValueError`` for a
corrupted one.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import torch
from safetensors import SafetensorError, safe_open

from vllm_core.model_executor.weight_source import LazyTensor, safetensors_lazy

INDEX_FILE = "model.safetensors.index.json"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def safetensors_files(folder: str) -> list[str]:
    """The weight files of ``folder``: the shards named by its index if it has one, else every
    ``*.safetensors`` (``consolidated*`` copies are skipped when HF-named files exist)."""
    index_path = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"corrupted safetensors index {index_path}: {e!r}") from e
        files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"weight shard {path} listed in {index_path} is missing")
        return files
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    hf_named = [f for f in files if not os.path.basename(f).startswith("consolidated")]
    if hf_named:
        return hf_named
    if files:
        return files
    pickles = sorted(os.path.basename(p) for pat in PICKLE_PATTERNS
                     for p in glob.glob(os.path.join(folder, pat)))
    if pickles:
        raise ValueError(
            f"{folder} holds only pickle checkpoint files ({', '.join(pickles)}); vllm-core "
            "does not load pickle files (they can execute arbitrary code). Convert them to "
            "safetensors first, e.g. `AutoModelForCausalLM.from_pretrained(folder)"
            ".save_pretrained(folder, safe_serialization=True)` with transformers.")
    raise FileNotFoundError(f"no *.safetensors weight files in {folder}")


def iter_safetensors_lazy(folder: str) -> Iterator[tuple[str, LazyTensor]]:
    """Yield ``(name, LazyTensor)`` for every tensor of every weight file of ``folder``; each
    is readable (whole or sliced) until the next item is requested."""
    for path in safetensors_files(folder):
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, safetensors_lazy(f, name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"corrupted safetensors file {path}: {e}") from e


def iter_safetensors(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, cpu tensor)`` for every tensor of every weight file of ``folder``."""
    for path in safetensors_files(folder):
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"corrupted safetensors file {path}: {e}") from e
