"""``LLM``: offline batch inference (generate, chat, beam_search) over the LLMEngine."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.engine.input_processor import PromptType
from vllm_core.engine.llm_engine import LLMEngine
from vllm_core.outputs import RequestOutput
from vllm_core.sampling.params import DEFAULT_CHAT_MAX_TOKENS, SamplingParams

ChatMessages = list[dict[str, Any]]


OFFLINE_MAX_NUM_BATCHED_TOKENS = 8192
"""Offline default token budget per step. Batch jobs care about throughput, not inter-token
latency, so ``LLM`` takes bigger prefill chunks than the server (whose default stays the
platform's, 2048 on CPU); measured on the 2-core CPU, cpu-small: 218 -> 246 tok/s."""


class LLM:
    """Load a model once, then run batches of prompts through continuous batching.

    ``model=None`` uses the embedded default model (SmolLM2-135M-Instruct). Other keyword
    arguments are EngineArgs fields (dtype, max_model_len, max_num_seqs, ...);
    ``max_num_batched_tokens`` defaults to ``OFFLINE_MAX_NUM_BATCHED_TOKENS``.
    ``engine_core_process=True`` runs the engine core in its own (spawned) process, as the
    server can (a script doing so needs an ``if __name__ == "__main__":`` guard); call
    ``shutdown()`` (or let the interpreter exit) to stop it.
    """

    def __init__(self, model: str | None = None, *, tokenizer: str | None = None,
                 dtype: str = "auto", max_model_len: int | None = None, seed: int = 0,
                 engine_core_process: bool = False, **engine_kwargs: Any) -> None:
        engine_kwargs.setdefault("max_num_batched_tokens", OFFLINE_MAX_NUM_BATCHED_TOKENS)
        args = EngineArgs(model=model, tokenizer=tokenizer, dtype=dtype,
                          max_model_len=max_model_len, seed=seed, **engine_kwargs)
        self.llm_engine = LLMEngine.from_engine_args(args,
                                                     engine_core_process=engine_core_process)
        self._counter = itertools.count()
        self._media_loader: Any = None            # made on the first image URL (LLM.chat)

    def shutdown(self) -> None:
        """Stop the engine (its workers, and its engine core process if it has one)."""
        self.llm_engine.shutdown()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.llm_engine.default_sampling_params()

    # ------------------------------------------------------------------ generate
    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True, priority: list[int] | None = None,
                 lora_request: Any = None) -> list[RequestOutput]:
        """Generate for one prompt or a list (text, token ids, or a dict: ``{"prompt": ...}`` or
        ``{"prompt_token_ids": ...}``, with ``"multi_modal_data": {"image": PIL.Image | list}``
        for a vision-language model; see ``entrypoints.prompt_inputs``).

        All prompts are validated before any is queued: one bad prompt raises ValueError (or
        TypeError for a value of the wrong type) and nothing runs. Outputs come back in the order of ``prompts``. ``lora_request``: one
        ``LoRARequest`` for every prompt, or a list (None: the base model) per prompt; the
        engine must be built with ``enable_lora=True``.
        """
        if isinstance(prompts, (str, dict)) or (
                isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            return []
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(params_list)} sampling_params for "
                                 f"{len(prompts)} prompts")
        if priority is not None and len(priority) != len(prompts):
            raise ValueError(f"got {len(priority)} priorities for {len(prompts)} prompts")
        if isinstance(lora_request, (list, tuple)):
            loras = list(lora_request)
            if len(loras) != len(prompts):
                raise ValueError(f"got {len(loras)} lora_requests for {len(prompts)} prompts")
        else:
            loras = [lora_request] * len(prompts)
        engine = self.llm_engine
        self._check_prompts(prompts)
        processed = [engine.process_inputs(p, sp) for p, sp in zip(prompts, params_list)]
        for lora in dict.fromkeys(r for r in loras if r is not None):
            engine.add_lora(lora)                   # a bad adapter fails before any runs
        return self._run(processed, priority, use_tqdm, loras)

    def _check_prompts(self, prompts: list[Any]) -> None:
        from vllm_core.entrypoints.chat_utils import model_accepts_images, model_architecture
        from vllm_core.entrypoints.prompt_inputs import check_prompt

        config = self.llm_engine.config
        with_images = any(isinstance(p, dict) and "multi_modal_data" in p for p in prompts)
        accepts = with_images and model_accepts_images(config.model)
        for i, prompt in enumerate(prompts):
            check_prompt(prompt, f"prompts[{i}]", config.multimodal, accepts,
                         str(config.model.served_model_name or config.model.model),
                         model_architecture(config.model))

    def _run(self, processed: list[Any], priority: list[int] | None,
             use_tqdm: bool, loras: list[Any] | None = None) -> list[RequestOutput]:
        engine = self.llm_engine
        ids = [str(next(self._counter)) for _ in processed]
        for i, (req_id, proc) in enumerate(zip(ids, processed)):
            engine.add_request(req_id, proc, priority=priority[i] if priority else 0,
                               lora_request=loras[i] if loras else None)
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True,
                   disable=not use_tqdm)
        out_tokens = 0
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        results[out.request_id] = out
                        out_tokens += sum(len(c.token_ids) for c in out.outputs)
                        bar.update(1)
                        elapsed = bar.format_dict["elapsed"] or 1e-9
                        bar.set_postfix_str(f"output {out_tokens / elapsed:.1f} tok/s",
                                            refresh=False)
        except BaseException:
            engine.abort_request([i for i in ids if i not in results])
            raise
        finally:
            bar.close()
        return [results[i] for i in ids]

    # ------------------------------------------------------------------ chat
    def chat(self, messages: ChatMessages | list[ChatMessages],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True,
             chat_template_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation or a list, then generate.

        Messages take OpenAI content parts: ``text``, ``image_url`` (``data:``, ``http(s)``,
        or ``file://`` inside ``allowed_local_media_path``) and, here only, ``image_pil``
        (a PIL image); images need a vision-language model (``entrypoints.chat_utils``).

        Without ``sampling_params`` the model's defaults apply, and ``max_tokens`` is its
        generation_config ``max_new_tokens`` or else ``DEFAULT_CHAT_MAX_TOKENS`` (not the
        16 of a bare ``SamplingParams()``, which would cut nearly every answer); a cut answer
        has ``finish_reason == "length"``."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
            if "max_tokens" not in self.llm_engine.generation_defaults:
                sampling_params.max_tokens = DEFAULT_CHAT_MAX_TOKENS
        prompts = [self._chat_prompt(conv, chat_template, add_generation_prompt,
                                     chat_template_kwargs) for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _chat_prompt(self, conversation: ChatMessages, chat_template: str | None,
                     add_generation_prompt: bool,
                     chat_template_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """The engine input of one conversation: its token ids and, when it has image
        parts, the loaded images (limit and model support checked before any is loaded)."""
        from vllm_core.entrypoints.chat_utils import (
            check_images,
            load_images,
            model_accepts_images,
            model_architecture,
        )
        from vllm_core.multimodal.media import MediaLoader

        _, refs = self._normalize_conversation(conversation)
        if refs:       # before rendering: a text-only model's template may not take parts
            config = self.llm_engine.config
            check_images(refs, config.multimodal, model_accepts_images(config.model),
                         str(config.model.served_model_name or config.model.model),
                         model_architecture(config.model))
        ids = self.apply_chat_template(conversation, chat_template, add_generation_prompt,
                                       chat_template_kwargs)
        if not refs:
            return {"prompt_token_ids": ids}
        if self._media_loader is None:
            self._media_loader = MediaLoader(self.llm_engine.config.multimodal)
        images = load_images(refs, self._media_loader)
        return {"prompt_token_ids": ids, "multi_modal_data": {"image": images}}

    @staticmethod
    def _normalize_conversation(conversation: ChatMessages) -> tuple[ChatMessages, list[Any]]:
        """Messages whose content is a list of parts rewritten for the template
        (``chat_utils.parse_content``); the image parts found, in order."""
        from vllm_core.entrypoints.chat_utils import parse_content

        normalized: ChatMessages = []
        refs: list[Any] = []
        for i, m in enumerate(conversation):
            if not isinstance(m, dict) or "role" not in m:
                raise ValueError("each chat message must be a dict with 'role' and 'content'")
            if isinstance(m.get("content"), list):
                parsed = parse_content(m["content"], i, allow_objects=True)
                refs.extend(parsed.images)
                m = {**m, "content": parsed.content}
            normalized.append(m)
        return normalized, refs

    def apply_chat_template(self, conversation: ChatMessages, chat_template: str | None = None,
                            add_generation_prompt: bool = True,
                            chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """The conversation's prompt token ids (image parts become the template's image
        placeholders; the images themselves are not loaded here)."""
        normalized, _ = self._normalize_conversation(conversation)
        return self._template_ids(normalized, chat_template, add_generation_prompt,
                                  chat_template_kwargs)

    def _template_ids(self, conversation: ChatMessages, chat_template: str | None,
                      add_generation_prompt: bool,
                      chat_template_kwargs: dict[str, Any] | None) -> list[int]:
        tokenizer = self.get_tokenizer()
        template = chat_template or tokenizer.chat_template
        if template is None:
            raise ValueError("the tokenizer has no chat template; pass chat_template=")
        ids = tokenizer.apply_chat_template(
            conversation, chat_template=template, add_generation_prompt=add_generation_prompt,
            tokenize=True, **(chat_template_kwargs or {}))
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    # ------------------------------------------------------------------ pooling
    def encode(self, prompts: PromptType | Sequence[PromptType]) -> list[Any]:
        """The model's final hidden states (after the last norm) for each prompt: one
        ``torch.Tensor [num_tokens, hidden_size]`` each."""
        return self._embedder().hidden_states(self._token_ids(prompts))

    def embed(self, prompts: PromptType | Sequence[PromptType], pooling: str = "last",
              normalize: bool = True) -> list[list[float]]:
        """One embedding per prompt: the final hidden states pooled (``"last"`` token or
        ``"mean"``) and, by default, scaled to unit length (see ``vllm_core.pooling``)."""
        return self._embedder().embed(self._token_ids(prompts), pooling, normalize)

    def _token_ids(self, prompts: PromptType | Sequence[PromptType]) -> list[list[int]]:
        if isinstance(prompts, (str, dict)) or (
                isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        processor = self.llm_engine.input_processor
        return [processor.tokenize_prompt(p)[1] for p in prompts]

    def _embedder(self) -> Any:
        from vllm_core.pooling import Embedder

        engine = self.llm_engine
        return Embedder(engine.executor.worker.runner, engine.config.model.max_model_len)

    # ------------------------------------------------------------------ beam search
    def beam_search(self, prompts: Sequence[PromptType], params: Any,
                    use_tqdm: bool = False) -> list[Any]:
        """Beam search: every live beam is a one-token request with top-2*width logprobs;
        the prompt and beam prefixes are shared through the prefix cache."""
        from vllm_core.entrypoints.beam_search import run_beam_search

        return run_beam_search(self, list(prompts), params, use_tqdm)
