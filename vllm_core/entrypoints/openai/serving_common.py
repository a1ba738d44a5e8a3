"""What the completion, chat and tokenize handlers share.

``ServingContext`` holds the engine and the facts about the served model; its methods check
the model name, tokenize prompts exactly as ``/tokenize`` does (so ``usage.prompt_tokens``
equals the ``/tokenize`` count), check the context length, and build SamplingParams through
``engine.make_sampling_params`` (which applies generation_config defaults to unset fields).

The engine's ``generate`` is an async generator: cancelling the task that iterates it, or
closing it, aborts the request and frees its KV blocks. ``run_until_disconnected`` and
``merge_async_iterators`` rely on that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vllm_core.config import MultiModalConfig
from vllm_core.entrypoints.chat_utils import (
    ImageRef,
    check_images,
    location_param,
    parse_content,
)
from vllm_core.entrypoints.openai.errors import OpenAIServingError
from vllm_core.entrypoints.openai.protocol import ChatMessage
from vllm_core.entrypoints.openai.serving_chat_images import ChatPrompt, render_chat_prompt
from vllm_core.logger import init_logger
from vllm_core.multimodal.media import MediaLoader
from vllm_core.outputs import CompletionOutput, PositionLogprobs
from vllm_core.sampling.params import SamplingParams

logger = init_logger(__name__)
T = TypeVar("T")

LOGPROB_FLOOR = -9999.0  # what OpenAI sends instead of -inf


@dataclass
class ServingContext:
    """The engine plus the served model's facts, shared by all handlers."""

    engine: Any                                   # AsyncLLMEngine (or a test double)
    served_model_names: list[str]
    max_model_len: int
    vocab_size: int
    max_logprobs: int = 20
    chat_template: str | None = None
    model_root: str | None = None
    tool_parser: type | None = None               # --tool-call-parser's class
    enable_auto_tool_choice: bool = False
    reasoning_parser: type | None = None          # --reasoning-parser's class
    multimodal: MultiModalConfig = field(default_factory=MultiModalConfig)
    accepts_images: bool = False                  # the model takes image parts
    architecture: str | None = None               # the model's, named when images are refused
    media_loader: MediaLoader | None = None       # loads image URLs (None: no image parts)
    _decode_cache: dict[int, str] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    def check_model(self, model: str | None) -> str:
        """The name to answer with; 404 ``NotFoundError`` for a model this server lacks (a
        loaded LoRA adapter's name is a model)."""
        if model is None or model in self.served_model_names:
            return model or self.model_name
        if self.lora_request(model) is not None:
            return model
        raise OpenAIServingError(f"The model `{model}` does not exist.", 404, "model")

    def lora_request(self, model: str | None) -> Any:
        """The ``LoRARequest`` the model name selects (None: the base model)."""
        loras = getattr(self.engine, "loras", None)
        return None if loras is None or model is None else loras.get(model)

    def generate_kwargs(self, model: str | None) -> dict[str, Any]:
        """Extra ``engine.generate`` arguments for the requested model (its adapter)."""
        lora = self.lora_request(model)
        return {} if lora is None else {"lora_request": lora}

    # ------------------------------------------------------------ tokens

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def tokenize_async(self, text: str, add_special_tokens: bool) -> list[int]:
        """``tokenize`` on a worker thread: a long prompt must not stall the event loop
        (``/health`` and every other request keep being served meanwhile)."""
        return await asyncio.to_thread(self.tokenize, text, add_special_tokens)

    async def chat_prompt_ids(self, messages: list[ChatMessage], *, add_generation_prompt: bool,
                              continue_final_message: bool, chat_template: str | None,
                              chat_template_kwargs: dict[str, Any] | None,
                              add_special_tokens: bool,
                              tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Render the chat template (with ``tools``, when given) and tokenize the text, both
        off the event loop."""
        def work() -> list[int]:
            text = self.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, chat_template=chat_template,
                chat_template_kwargs=chat_template_kwargs, tools=tools)
            return self.tokenize(text, add_special_tokens)

        return await asyncio.to_thread(work)

    async def chat_prompt(self, messages: list[ChatMessage], **template_args: Any) -> ChatPrompt:
        """``chat_prompt_ids`` for /v1/chat/completions: image parts allowed, checked against
        --limit-mm-per-prompt and the model, and loaded (400 naming the part otherwise); all
        off the event loop."""
        return await asyncio.to_thread(render_chat_prompt, self, messages, template_args)

    def decode_token(self, token_id: int) -> str:
        text = self._decode_cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            if len(self._decode_cache) < 200_000:
                self._decode_cache[token_id] = text
        return text

    def check_token_ids(self, ids: list[int], param: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise OpenAIServingError(
                f"{param} contains token ids outside the vocabulary (size {self.vocab_size}): "
                f"{bad[:5]}", 400, param)

    def apply_chat_template(self, messages: list[ChatMessage], *, add_generation_prompt: bool,
                            continue_final_message: bool, chat_template: str | None,
                            chat_template_kwargs: dict[str, Any] | None,
                            tools: list[dict[str, Any]] | None = None,
                            images: list[ImageRef] | None = None) -> str:
        """Render the conversation with the model's (or the given) Jinja chat template; the
        tools, when given, go to the template as ``tools`` (transformers' convention).
        ``images``: collects the image parts, in order (None: image parts are refused); their
        count and the model's support are checked before the template runs."""
        conversation = [normalize_message(m, i, images) for i, m in enumerate(messages)]
        if not conversation:
            raise OpenAIServingError("messages must not be empty", 400, "messages")
        if images:       # before rendering: a text-only model's template may not take parts
            try:
                check_images(images, self.multimodal, self.accepts_images, self.model_name,
                             self.architecture)
            except ValueError as e:
                raise OpenAIServingError(str(e), 400, "messages") from e
        template = chat_template or self.chat_template
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            raise OpenAIServingError(
                "The model has no chat template; pass one with --chat-template or in the "
                "request's chat_template field.", 400, "messages")
        if add_generation_prompt and continue_final_message:
            raise OpenAIServingError("add_generation_prompt and continue_final_message cannot "
                                     "both be true", 400, "continue_final_message")
        kwargs = dict(chat_template_kwargs or {})
        if tools:
            kwargs["tools"] = tools
        try:
            return self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, chat_template=template, **kwargs)
        except OpenAIServingError:
            raise
        except Exception as e:  # jinja2 TemplateError, bad kwargs: the client's input
            raise OpenAIServingError(f"Could not apply the chat template: {e}", 400,
                                     "messages") from e

    # ------------------------------------------------------------ limits

    @property
    def default_max_tokens(self) -> int | None:
        """The model's generation_config ``max_new_tokens`` (None when it sets none)."""
        value = (getattr(self.engine, "generation_defaults", None) or {}).get("max_tokens")
        return int(value) if value else None

    def resolve_max_tokens(self, prompt_len: int, max_tokens: int | None,
                           explicit: bool = True) -> int | None:
        """Check the prompt fits the context; None ``max_tokens`` means 'the rest of it'.

        When the client did not set it (``explicit`` False) the model's generation_config
        ``max_new_tokens`` caps it (as in vLLM). A ``max_tokens`` < 1 is returned unchanged for
        SamplingParams to refuse (naming it).
        """
        default = self.default_max_tokens
        if not explicit and default is not None:
            room = self.max_model_len - prompt_len
            max_tokens = min(default, max_tokens if max_tokens is not None else room,
                             max(room, 1))
        if prompt_len == 0:
            raise OpenAIServingError("The prompt is empty: it must contain at least one token.",
                                     400, "prompt")
        limit = self.max_model_len
        if max_tokens is None:
            if prompt_len >= limit:
                raise OpenAIServingError(
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {prompt_len} tokens in the messages, Please reduce the length "
                    f"of the messages.", 400, "messages")
            return limit - prompt_len
        if max_tokens >= 1 and prompt_len + max_tokens > limit:
            raise OpenAIServingError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} "
                f"in the completion). Please reduce the length of the messages or completion.",
                400, "max_tokens")
        return max_tokens

    def check_logprobs(self, num: int | None, param: str) -> None:
        if num is None:
            return
        if num < 0:
            raise OpenAIServingError(f"{param} must be non-negative, got {num}", 400, param)
        if num > self.max_logprobs:
            raise OpenAIServingError(
                f"Requested {param} of {num}, which is greater than max allowed: "
                f"{self.max_logprobs}", 400, param)

    def check_structured_outputs(self, params: Any, param: str) -> None:
        """Validate a request's constraint now (schema, backend support): 400 naming
        ``param``. Engines without structured outputs (test doubles) skip the check."""
        check = getattr(self.engine, "check_structured_outputs", None)
        if params is None or check is None:
            return
        try:
            check(params)
        except ValueError as e:
            raise OpenAIServingError(f"{param}: {e}", 400, param) from e

    def make_sampling_params(self, fields: dict[str, Any], request_fields: set[str]
                             ) -> SamplingParams:
        """SamplingParams through the engine; its ValueError becomes a 400 naming the field."""
        for token_field in ("stop_token_ids", "allowed_token_ids"):
            if fields.get(token_field):
                self.check_token_ids(fields[token_field], token_field)
        if fields.get("logit_bias"):
            self.check_token_ids(list(fields["logit_bias"]), "logit_bias")
        try:
            return self.engine.make_sampling_params(**fields)
        except (ValueError, TypeError) as e:
            message = str(e)
            head = message.split(" ", 1)[0]
            param = head if head in request_fields or head in fields else None
            if param == "max_tokens" and "max_completion_tokens" in request_fields:
                param = "max_completion_tokens"
            raise OpenAIServingError(message, 400, param) from e

    # ------------------------------------------------------------ logprobs

    def top_entries(self, position: PositionLogprobs, k: int) -> list[tuple[int, float]]:
        """The ``k`` most likely (token id, logprob) of one position, best first."""
        items = sorted(position.items(),
                       key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30,
                                       -kv[1].logprob))
        return [(tid, lp.logprob) for tid, lp in items[:k]]

    def token_text(self, token_id: int, position: PositionLogprobs | None) -> str:
        if position is not None:
            entry = position.get(token_id)
            if entry is not None and entry.decoded_token is not None:
                return entry.decoded_token
        return self.decode_token(token_id)


def normalize_message(message: ChatMessage, index: int,
                      images: list[ImageRef] | None = None) -> dict[str, Any]:
    """A chat message as the template expects it (``chat_utils.parse_content``: text parts
    joined by newlines; with images, a list of text and ``{"type": "image"}`` parts, the
    images appended to ``images``). 400 naming the part when one is malformed, or is an image
    where ``images`` is None (endpoints that take text only)."""
    try:
        parsed = parse_content(message.content, index)
    except ValueError as e:
        raise OpenAIServingError(str(e), 400, location_param(getattr(e, "location", "messages"))
                                 ) from e
    if parsed.images:
        if images is None:
            where = parsed.images[0].location
            raise OpenAIServingError(f"{where}: image parts are accepted by "
                                     f"/v1/chat/completions only", 400, location_param(where))
        images.extend(parsed.images)
    out: dict[str, Any] = {"role": message.role, "content": parsed.content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [_template_tool_call(c) for c in message.tool_calls]
    for key, value in (message.model_extra or {}).items():
        out.setdefault(key, value)
    return out


def _template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as chat templates expect it: ``function.arguments`` as a mapping (they
    render it with ``tojson``), the JSON string the client sent parsed."""
    call = dict(call)
    fn = dict(call.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args) if args.strip() else {}
        except ValueError:
            pass
    call["function"] = fn
    return call


def clamp_logprob(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def prompt_logprobs_json(positions: list[PositionLogprobs | None] | None
                         ) -> list[dict[int, dict[str, Any]] | None] | None:
    """vLLM's ``prompt_logprobs`` shape: per prompt position ``None`` (the first) or
    ``{token_id: {"logprob", "rank", "decoded_token"}}``, logprobs clamped to JSON numbers."""
    if positions is None:
        return None
    out: list[dict[int, dict[str, Any]] | None] = []
    for position in positions:
        if not position:
            out.append(None)
            continue
        out.append({int(tid): {"logprob": clamp_logprob(lp.logprob), "rank": lp.rank,
                               "decoded_token": lp.decoded_token}
                    for tid, lp in position.items()})
    return out


def multimodal_options(config: Any) -> dict[str, Any]:
    """ServingContext's image settings from the engine config (test doubles may lack them)."""
    from vllm_core.entrypoints.chat_utils import model_accepts_images, model_architecture

    multimodal = getattr(config, "multimodal", None) or MultiModalConfig()
    return {"multimodal": multimodal,
            "accepts_images": model_accepts_images(config.model),
            "architecture": model_architecture(config.model),
            "media_loader": MediaLoader(multimodal)}


def read_template(value: str | None) -> str | None:
    """--chat-template: a file path or the template text itself."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" not in value and ("/" in value or value.endswith((".jinja", ".j2"))):
        raise ValueError(f"--chat-template: file not found: {value}")
    return value


@dataclass
class ChoiceState:
    """Accumulated delta outputs of one choice (non-streaming and usage accounting)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    cumulative_logprob: float | None = None

    def add(self, out: CompletionOutput, delta: bool) -> None:
        if delta:
            self.text += out.text
            self.token_ids.extend(out.token_ids)
            if out.logprobs:
                self.logprobs.extend(out.logprobs)
        else:
            self.text = out.text
            self.token_ids = list(out.token_ids)
            self.logprobs = list(out.logprobs or [])
        self.cumulative_logprob = out.cumulative_logprob
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason
            self.stop_reason = out.stop_reason


# ---------------------------------------------------------------- async plumbing


async def wait_for_disconnect(is_disconnected: Callable[[], Awaitable[bool]],
                              poll: float = 0.25) -> None:
    """Return once the client has gone away (polls ``request.is_disconnected``)."""
    while not await is_disconnected():
        await asyncio.sleep(poll)


async def run_until_disconnected(coro: Awaitable[T],
                                 is_disconnected: Callable[[], Awaitable[bool]]
                                 ) -> tuple[bool, T | None]:
    """Run ``coro`` as a task; cancel it if the client disconnects first.

    Returns ``(True, result)`` when it finished, ``(False, None)`` when the client went away
    (the task was cancelled, which aborts any engine request it was iterating).
    """
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(wait_for_disconnect(is_disconnected))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False, None


async def merge_async_iterators(*iterators: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    """Yield ``(i, item)`` from several async iterators as items arrive.

    On exit (exhausted, error, or the consumer stops / is cancelled) every iterator still
    pending is cancelled and closed, so the engine aborts its request.
    """
    if len(iterators) == 1:
        try:
            async for item in iterators[0]:
                yield 0, item
        finally:
            await _aclose(iterators[0])
        return
    pending: dict[asyncio.Future, int] = {
        asyncio.ensure_future(_anext(it)): i for i, it in enumerate(iterators)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                try:
                    item = fut.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(_anext(iterators[i]))] = i
                yield i, item
    finally:
        for fut in pending:
            fut.cancel()
        for fut in pending:
            with contextlib.suppress(BaseException):
                await fut
        for it in iterators:
            await _aclose(it)


async def _anext(it: AsyncIterator[T]) -> T:
    return await it.__anext__()


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(BaseException):
            await aclose()
