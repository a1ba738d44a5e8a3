"""Input processing: prompt -> token ids, SamplingParams completed and checked against the model.

Everything a bad request can get wrong is caught here, before the request touches the
scheduler, so a bad request raises ``ValueError`` naming the field and loses nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from vllm_core.config import EngineConfig
from vllm_core.multimodal.inputs import MultiModalFeatures, multi_modal_data_of
from vllm_core.sampling.params import SamplingParams

PromptType = Union[str, list[int], dict[str, Any]]


@dataclass(slots=True)
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    mm_features: MultiModalFeatures | None = None   # images, placeholders expanded in the ids


def eos_token_ids(tokenizer: Any, generation_defaults: dict[str, Any], arch_eos: Any) -> list[int]:
    """The model's end-of-sequence ids: generation_config's, else the tokenizer's, else the
    architecture config's."""
    for source in (generation_defaults.get("eos_token_id"), getattr(tokenizer, "eos_token_id", None),
                   arch_eos):
        if source is None:
            continue
        ids = source if isinstance(source, (list, tuple)) else [source]
        if ids:
            return [int(i) for i in ids]
    return []


class InputProcessor:
    """``structured_outputs`` (a ``StructuredOutputManager``, optional) validates a request's
    grammar constraint and picks its backend here, so a bad schema is refused up front."""

    def __init__(self, config: EngineConfig, tokenizer: Any,
                 generation_defaults: dict[str, Any], structured_outputs: Any = None) -> None:
        self.config = config
        self.structured_outputs = structured_outputs
        self.tokenizer = tokenizer
        self.generation_defaults = generation_defaults
        arch = config.model.arch
        self.vocab_size = arch.vocab_size
        self.max_model_len = config.model.max_model_len
        self.eos_token_ids = eos_token_ids(tokenizer, generation_defaults, arch.eos_token_id)
        self._mm_processor: Any = None          # built on the first request with images

    @staticmethod
    def model_eos_token_ids(config: EngineConfig, tokenizer: Any,
                            generation_defaults: dict[str, Any]) -> list[int]:
        return eos_token_ids(tokenizer, generation_defaults, config.model.arch.eos_token_id)

    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation_config.json values applied."""
        params = SamplingParams()
        params.update_from_generation_config(self.generation_defaults, set())
        return params

    def tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            if prompt == "":
                raise ValueError("prompt must not be empty")
            return prompt, list(self.tokenizer(prompt).input_ids)
        if isinstance(prompt, (list, tuple)):
            return None, self._check_ids(prompt)
        raise ValueError(f"prompt must be a string, a list of token ids or a dict, "
                         f"got {type(prompt).__name__}")

    def _check_ids(self, ids: Any) -> list[int]:
        if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
            raise ValueError("prompt_token_ids must be a list of integers")
        if len(ids) == 0:
            raise ValueError("prompt must not be empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids contains ids outside the vocabulary "
                             f"(size {self.vocab_size}): {bad[:5]}")
        return list(ids)

    def process(self, prompt: PromptType, params: SamplingParams | None) -> ProcessedPrompt:
        text, ids = self.tokenize_prompt(prompt)
        mm_features = None
        mm_data = multi_modal_data_of(prompt)
        if mm_data is not None:
            ids, mm_features = self.multimodal_processor().process(ids, mm_data)
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt is {len(ids)} tokens, which leaves no room to generate within "
                f"max_model_len={self.max_model_len}; shorten the prompt or raise max_model_len")
        params = (params or self.default_sampling_params()).clone()
        params.verify_vocab(self.vocab_size)
        max_logprobs = self.config.model.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > max_logprobs:
                raise ValueError(f"{name}={value} exceeds max_logprobs={max_logprobs} "
                                 f"(raise it with --max-logprobs)")
        params.eos_token_ids = list(self.eos_token_ids)
        if params.structured_outputs is not None:
            if self.structured_outputs is None:
                raise ValueError("structured_outputs are not supported by this engine")
            self.structured_outputs.prepare(params.structured_outputs)
        if params.bad_words:
            params.bad_words_token_ids = self._bad_words_ids(params.bad_words)
        room = self.max_model_len - len(ids)
        if params.max_tokens is None or params.max_tokens > room:
            params.max_tokens = room
            params.min_tokens = min(params.min_tokens, room)
        return ProcessedPrompt(prompt=text, prompt_token_ids=ids, params=params,
                               mm_features=mm_features)

    def multimodal_processor(self) -> Any:
        """The model's ``MultiModalProcessor``; ValueError naming the architecture when the
        model does not accept images."""
        if self._mm_processor is None:
            from vllm_core.multimodal.processing import processor_for

            model = self.config.model
            self._mm_processor = processor_for(model.arch, model.model)
        return self._mm_processor

    def _bad_words_ids(self, words: list[str]) -> list[list[int]]:
        """Each bad word banned as it would appear at the start of the text and after a space."""
        seqs: list[list[int]] = []
        for word in words:
            for variant in (word, " " + word.lstrip()):
                ids = list(self.tokenizer(variant, add_special_tokens=False).input_ids)
                if ids and ids not in seqs:
                    seqs.append(ids)
        return seqs
