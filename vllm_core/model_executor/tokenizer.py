"""Tokenizers from a HF model folder or from GGUF metadata, with their chat template set."""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import Future
from typing import Any

from vllm_core import envs
from vllm_core.model_executor.gguf_loader import gguf_chat_template

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def get_tokenizer(model_path: str, tokenizer: str | None = None) -> Any:
    """A ``transformers.PreTrainedTokenizerBase`` for ``tokenizer`` (else ``model_path``).

    The source is a HF folder with tokenizer files, a ``.gguf`` file (transformers builds the
    tokenizer from the GGUF vocabulary), or a folder holding exactly one ``.gguf``. The chat
    template comes from tokenizer_config.json / chat_template.jinja (transformers reads them)
    or from the GGUF metadata ``tokenizer.chat_template``; it is None only if neither has one.
    """
    from transformers import AutoTokenizer

    source = tokenizer or model_path
    if source.endswith(".json") and os.path.isfile(source):
        source = os.path.dirname(os.path.abspath(source))      # a config.json (dummy weights)
    gguf_path = _gguf_source(source)
    if gguf_path is not None:
        return _gguf_tokenizer(gguf_path)
    if not os.path.isdir(source):
        raise FileNotFoundError(f"tokenizer source not found: {source}")
    if not any(os.path.isfile(os.path.join(source, f)) for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {source}")
    return AutoTokenizer.from_pretrained(source)


def get_tokenizer_in_background(model_path: str, tokenizer: str | None = None) -> Future[Any]:
    """``get_tokenizer`` on a start-up thread (``startup.in_background``, phase "tokenizer").

    Invariant: transformers, and through it huggingface_hub and httpx, are imported on the
    calling thread before the thread starts, so the thread never imports them while the caller
    is loading weights. CPython 3.11 can fail an import of a namespace package that two threads
    import at once with ``KeyError``: the CPU kernel build imports setuptools (whose vendored
    ``backports.tarfile`` is one) while httpx tries ``backports.zstd``.
    """
    from transformers import AutoTokenizer  # noqa: F401  (the import is the point)

    from vllm_core.engine.startup import in_background

    return in_background("tokenizer", get_tokenizer, model_path, tokenizer)


def _gguf_source(source: str) -> str | None:
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"GGUF file not found: {source}")
        return source
    if os.path.isdir(source) and not any(os.path.isfile(os.path.join(source, f))
                                         for f in _TOKENIZER_FILES):
        ggufs = sorted(f for f in os.listdir(source) if f.endswith(".gguf"))
        if len(ggufs) == 1:
            return os.path.join(source, ggufs[0])
    return None


def _gguf_tokenizer(gguf_path: str) -> Any:
    """Build the tokenizer from GGUF metadata once, then reuse the converted copy.

    Converting a GGUF vocabulary takes seconds; the result is saved under
    ``envs.cache_root()/tokenizers/<digest of path, size, mtime>`` and later loads read it
    back. A cache that cannot be written (read-only home) only costs the conversion again.
    """
    from transformers import AutoTokenizer

    stat = os.stat(gguf_path)
    key = f"{os.path.abspath(gguf_path)}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_dir = os.path.join(envs.cache_root(), "tokenizers",
                             hashlib.sha256(key.encode()).hexdigest()[:24])
    if os.path.isfile(os.path.join(cache_dir, "tokenizer.json")):
        try:
            return AutoTokenizer.from_pretrained(cache_dir)
        except (OSError, ValueError):
            pass                                   # a damaged cache: rebuild below
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                        gguf_file=os.path.basename(gguf_path))
    if not getattr(tok, "chat_template", None):
        tok.chat_template = gguf_chat_template(gguf_path)
    tmp = f"{cache_dir}.tmp{os.getpid()}"
    try:
        tok.save_pretrained(tmp)
        os.replace(tmp, cache_dir) if not os.path.exists(cache_dir) else shutil.rmtree(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok
