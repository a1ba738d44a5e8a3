"""``SpeculativeConfig``: what ``--speculative-config`` / ``LLM(speculative_config=...)`` says.

Parsed in one place (``parse_speculative_config``) from JSON text or a dict, with vLLM's key
names; unknown keys and bad values are a ``ValueError`` naming the key. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

SPEC_METHODS = ("ngram", "draft_model", "eagle", "eagle3")
# Methods whose proposer runs in the worker, next to the target (a model: ``model`` is needed).
MODEL_METHODS = ("draft_model", "eagle", "eagle3")
# Methods the ecosystem names that this engine refuses with a clear message (not built yet).
_NOT_YET = ("medusa", "mlp_speculator", "mtp")

# Speculation is skipped for a step when more requests than this are running: at large batch
# the forward is compute-bound and verifying drafts costs more than it saves. Stated default,
# pending the H200 measurement of benchmarks/gpu_jobs/issue16.sh (gpu-8b, batch 256).
DEFAULT_DISABLE_BY_BATCH_SIZE = 32


@dataclass(slots=True, frozen=True)
class SpeculativeConfig:
    """Speculative decoding settings.

    ``method``: the proposer ("ngram": prompt lookup over the request's own prompt and
    output). ``num_speculative_tokens`` (k >= 1): draft tokens proposed per request per step.
    ``prompt_lookup_min`` <= ``prompt_lookup_max``: the n-gram sizes tried, longest first.
    ``disable_by_batch_size``: no drafts are proposed in a step where more than this many
    requests are running (None: the default, ``DEFAULT_DISABLE_BY_BATCH_SIZE``; 0: never
    disable).

    Model-based methods (``MODEL_METHODS``, proposed in the worker): ``model`` is the draft
    checkpoint (a folder or .gguf; "draft_model": a causal LM with the target's vocabulary;
    "eagle": an EAGLE-1 head, see ``spec_decode/eagle.py``; "eagle3": an EAGLE-3 head, see
    ``spec_decode/eagle3.py``). ``dtype``: the draft's dtype (None: the target's).
    ``num_hidden_layers``: "draft_model" only, keep the draft's first that many decoder layers
    (a truncated-layer draft). A "draft_model" whose ``model`` is the target's own path, in the
    target's dtype, shares the target's modules instead of loading a second copy.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    disable_by_batch_size: int | None = None
    model: str | None = None
    dtype: str | None = None
    num_hidden_layers: int | None = None

    def __post_init__(self) -> None:
        if self.method in _NOT_YET:
            raise ValueError(f"speculative_config.method {self.method!r} is not supported yet; "
                             f"supported: {', '.join(SPEC_METHODS)}")
        if self.method not in SPEC_METHODS:
            raise ValueError(f"speculative_config.method must be one of "
                             f"{', '.join(SPEC_METHODS)}, got {self.method!r}")
        for name in ("num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"speculative_config.{name} must be an integer >= 1, "
                                 f"got {value!r}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"speculative_config.prompt_lookup_min ({self.prompt_lookup_min}) "
                             f"must be <= prompt_lookup_max ({self.prompt_lookup_max})")
        if self.method in MODEL_METHODS:
            if not isinstance(self.model, str) or not self.model:
                raise ValueError(f"speculative_config.model (the draft checkpoint) is required "
                                 f"for method {self.method!r}")
        elif self.model is not None or self.num_hidden_layers is not None:
            raise ValueError(f"speculative_config.model / num_hidden_layers apply to the "
                             f"methods {', '.join(MODEL_METHODS)}, not {self.method!r}")
        if self.dtype is not None:
            from vllm_core.config import normalize_dtype

            object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        layers = self.num_hidden_layers
        if layers is not None and (self.method != "draft_model" or not isinstance(layers, int)
                                   or isinstance(layers, bool) or layers < 1):
            raise ValueError(f"speculative_config.num_hidden_layers must be an integer >= 1 "
                             f"and needs method 'draft_model', got {layers!r}")
        limit = self.disable_by_batch_size
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise ValueError(f"speculative_config.disable_by_batch_size must be an integer "
                             f">= 0, got {limit!r}")

    @property
    def max_batch_size(self) -> int | None:
        """Most running requests a step may have and still speculate (None: no limit)."""
        limit = (DEFAULT_DISABLE_BY_BATCH_SIZE if self.disable_by_batch_size is None
                 else self.disable_by_batch_size)
        return limit or None


def parse_speculative_config(raw: SpeculativeConfig | dict[str, Any] | str | None
                             ) -> SpeculativeConfig | None:
    """The config ``raw`` describes (JSON text, a dict, a config, or None: no speculation).

    A bare ``"model"`` (no ``"method"``) means "draft_model", as in vLLM."""
    if raw is None or isinstance(raw, SpeculativeConfig):
        return raw
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"speculative_config is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ValueError(f"speculative_config must be a JSON object, got {raw!r}")
    raw = dict(raw)
    if "method" not in raw and "model" in raw:
        raw["method"] = "draft_model"
    if raw.get("method") in _NOT_YET:
        SpeculativeConfig(method=raw["method"])          # raises, naming the method
    known = {f.name for f in fields(SpeculativeConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"speculative_config has unknown keys {unknown}; known: "
                         f"{sorted(known)}")
    return SpeculativeConfig(**raw)
