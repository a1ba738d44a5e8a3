"""The GGUF tokenizer is converted once and reused from the cache, identically."""

from __future__ import annotations

import os

from vllm_core.model_executor.loader import get_tokenizer, resolve_model


def test_gguf_tokenizer_cached_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    path = resolve_model(None)
    first = get_tokenizer(path)
    cached = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs]
    assert any(f.endswith("tokenizer.json") for f in cached)
    second = get_tokenizer(path)
    text = "What is the capital of France? 日本語 🙂"
    assert second(text).input_ids == first(text).input_ids
    assert second.chat_template == first.chat_template and second.chat_template
    assert second.eos_token_id == first.eos_token_id
    msgs = [{"role": "user", "content": "hi"}]
    assert second.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        first.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


_IMPORT_THREADS = r"""
import json, sys, threading
from vllm_core.model_executor.loader import resolve_model

seen = {}

class Recorder:
    def find_spec(self, name, path=None, target=None):
        seen.setdefault(name, threading.current_thread().name)
        return None

sys.meta_path.insert(0, Recorder())
from vllm_core.model_executor.tokenizer import get_tokenizer_in_background
tok = get_tokenizer_in_background(resolve_model(None)).result()
assert tok("hello").input_ids
late = sorted(n for n, t in seen.items() if t != "MainThread"
              and n.split(".")[0] in ("transformers", "huggingface_hub", "httpx", "httpx2",
                                      "backports"))
print("LATE", json.dumps(late))
"""


def test_background_tokenizer_imports_happen_on_the_callers_thread(tmp_path):
    """The start-up thread must not import transformers / huggingface_hub / httpx: the caller
    imports them first (a namespace package imported by two threads at once can fail with
    KeyError, as it did in CI against setuptools' vendored ``backports``). Only the top-level
    packages are checked: transformers' own lazy sub-modules of the tokenizer may load late."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, VLLM_CACHE_ROOT=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _IMPORT_THREADS], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    late = out.stdout.split("LATE", 1)[1].strip()
    late_tops = {n for n in json.loads(late) if n.count(".") == 0 or n.startswith(
        ("huggingface_hub.file_download", "httpx2._decoders", "backports"))}
    assert not late_tops, late_tops
