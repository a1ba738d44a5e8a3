"""SamplingParams: what a request asks of the sampler and the stop logic.

Validation happens in ``__post_init__``: bad values raise ``ValueError`` naming the field, so a
bad request is refused before it reaches the engine and the engine keeps serving the others.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from vllm_core.structured_output.params import StructuredOutputsParams

_GREEDY_EPS = 1e-5
DEFAULT_CHAT_MAX_TOKENS = 1024
"""``max_tokens`` of ``LLM.chat`` and ``vllm-core chat`` / ``generate`` when neither the caller
nor the model's generation_config (``max_new_tokens``) sets one: long enough for a full answer,
bounded so that a model that never emits EOS stops."""
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty")


@dataclass
class SamplingParams:
    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16         # None: up to max_model_len
    min_tokens: int = 0
    logprobs: int | None = None         # number of top logprobs per sampled token
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] = field(default_factory=list)
    detokenize: bool = True
    output_kind: str = "cumulative"     # "cumulative" | "delta" | "final_only"
    structured_outputs: StructuredOutputsParams | None = None   # grammar constraint
    # Filled by the engine (not by users): eos ids of the model, bad-word token sequences.
    eos_token_ids: list[int] = field(default_factory=list, repr=False)
    bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.stop_token_ids, int):
            self.stop_token_ids = [self.stop_token_ids]
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        if self.top_k == -1 or self.top_k is None:
            self.top_k = 0
        self._verify()

    def _verify(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "must be a finite number")
        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", "must be an integer >= 1")
        if self.best_of is not None and self.best_of < self.n:
            raise bad("best_of", f"must be >= n ({self.n})")
        if self.temperature < 0.0:
            raise bad("temperature", "must be non-negative")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "must be 0 or -1 (disabled) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "must be in [0, 1]")
        if self.repetition_penalty <= 0.0:
            raise bad("repetition_penalty", "must be positive")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", "must be in [-2, 2]")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            raise bad("max_tokens", "must be an integer >= 1")
        if self.min_tokens < 0:
            raise bad("min_tokens", "must be >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must be <= max_tokens ({self.max_tokens})")
        if self.logprobs is not None and self.logprobs < 0:
            raise bad("logprobs", "must be non-negative")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise bad("prompt_logprobs", "must be non-negative")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise bad("stop", "must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative integers")
        if self.allowed_token_ids is not None and len(self.allowed_token_ids) == 0:
            raise bad("allowed_token_ids", "must not be empty")
        if self.structured_outputs is not None and not isinstance(
                self.structured_outputs, StructuredOutputsParams):
            if isinstance(self.structured_outputs, dict):
                self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
            else:
                raise bad("structured_outputs", "must be a StructuredOutputsParams")
        if self.output_kind not in ("cumulative", "delta", "final_only"):
            raise bad("output_kind", "must be cumulative, delta or final_only")

    def verify_vocab(self, vocab_size: int) -> None:
        """Token-id fields must lie inside the vocabulary (checked when the request is added)."""
        for name in ("stop_token_ids", "allowed_token_ids"):
            ids = getattr(self, name) or []
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{name} contains ids outside the vocabulary "
                                 f"(size {vocab_size}): {bad[:5]}")
        if self.logit_bias:
            bad = [t for t in self.logit_bias if not 0 <= int(t) < vocab_size]
            if bad:
                raise ValueError(f"logit_bias has token ids outside the vocabulary "
                                 f"(size {vocab_size}): {bad[:5]}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def all_stop_token_ids(self) -> set[int]:
        """Ids that finish the request: stop_token_ids plus the model's eos unless ignored."""
        ids = set(self.stop_token_ids)
        if not self.ignore_eos:
            ids.update(self.eos_token_ids)
        return ids

    def clone(self) -> SamplingParams:
        return copy.deepcopy(self)

    def update_from_generation_config(self, defaults: dict[str, Any],
                                      explicitly_set: set[str]) -> None:
        """Apply the model's generation_config.json values to fields the user did not set."""
        for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                    "max_tokens"):
            if key in defaults and key not in explicitly_set and defaults[key] is not None:
                setattr(self, key, defaults[key])
        if self.top_k == -1:
            self.top_k = 0
        self._verify()


def sampling_params_from_user(defaults: dict[str, Any] | None = None,
                              **kwargs: Any) -> SamplingParams:
    """Build SamplingParams where the model's generation config fills unset fields."""
    params = SamplingParams(**kwargs)
    if defaults:
        params.update_from_generation_config(defaults, set(kwargs))
    return params
