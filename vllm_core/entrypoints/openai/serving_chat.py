"""POST /v1/chat/completions: the chat template, then one engine request with ``n`` choices.

Streaming: a first chunk per choice with ``delta: {"role": "assistant", "content": ""}``, then
content deltas; each choice's ``finish_reason`` appears exactly once; then the optional usage
chunk and ``data: [DONE]``.

Structured outputs come from ``response_format`` / ``structured_outputs`` / ``guided_*``
(``structured_request``); tools from ``tools`` + ``tool_choice`` (``tool_calling``). With a
reasoning parser the text is first split into ``reasoning_content`` and content; then the tool
parser (if any) turns content into ``tool_calls``. Streamed and non-streamed answers use the same
parsers, streaming through their ``stream()`` splitters (deltas are append-only). Logprobs follow OpenAI: ``logprobs: true`` and ``top_logprobs: k``
give ``choices[i].logprobs.content`` = [{token, logprob, bytes, top_logprobs: [k entries]}].
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vllm_core.entrypoints.openai.errors import OpenAIServingError, exception_to_error, sse_error
from vllm_core.entrypoints.openai.protocol import (
    ChatCompletionLogProb,
    ChatCompletionLogProbs,
    ChatCompletionLogProbsContent,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatResponseMessage,
    DeltaMessage,
    UsageInfo,
    random_id,
)
from vllm_core.entrypoints.openai.serving_common import (
    ChoiceState,
    ServingContext,
    clamp_logprob,
    merge_async_iterators,
    prompt_logprobs_json,
    run_until_disconnected,
)
from vllm_core.entrypoints.openai.serving_completion import _aclose_quietly, _chain, _first, sse
from vllm_core.entrypoints.openai.structured_request import structured_outputs_from_request
from vllm_core.entrypoints.openai.tool_calling import ToolPlan, plan_tools
from vllm_core.entrypoints.openai.tool_parsers.base import ToolCallStream
from vllm_core.outputs import PositionLogprobs, RequestOutput
from vllm_core.reasoning.base import ReasoningStream

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(ctx: ServingContext, token_ids: list[int],
                  positions: list[PositionLogprobs], top_k: int) -> ChatCompletionLogProbs:
    content: list[ChatCompletionLogProbsContent] = []
    for i, token_id in enumerate(token_ids):
        position = positions[i] if i < len(positions) else {}
        token = ctx.token_text(token_id, position)
        sampled = position.get(token_id)
        top = [ChatCompletionLogProb(token=(t := ctx.token_text(tid, position)),
                                     logprob=clamp_logprob(lp), bytes=_token_bytes(t))
               for tid, lp in ctx.top_entries(position, top_k)]
        content.append(ChatCompletionLogProbsContent(
            token=token, logprob=clamp_logprob(sampled.logprob) if sampled else -9999.0,
            bytes=_token_bytes(token), top_logprobs=top))
    return ChatCompletionLogProbs(content=content)


@dataclass
class ChoiceSplitter:
    """One streamed choice's reasoning and tool-call splitters (see the module docstring)."""

    reasoning: ReasoningStream | None
    tools: ToolCallStream | None

    @classmethod
    def create(cls, ctx: ServingContext, plan: ToolPlan) -> ChoiceSplitter | None:
        reasoning = (ctx.reasoning_parser(ctx.tokenizer).stream()
                     if ctx.reasoning_parser is not None else None)
        tools = plan.parser.stream() if plan.parser is not None else None
        return cls(reasoning, tools) if reasoning or tools else None

    @property
    def tools_called(self) -> bool:
        return self.tools is not None and self.tools.tools_called

    def feed(self, text: str, final: bool) -> DeltaMessage | None:
        """The delta for ``text`` (None when nothing is ready to send)."""
        reasoning, content = ("", text)
        if self.reasoning is not None:
            reasoning, content = self.reasoning.feed(text, final)
        calls: list[Any] = []
        if self.tools is not None:
            content, calls = self.tools.feed(content, final)
        fields: dict[str, Any] = {}
        if reasoning:
            fields["reasoning_content"] = reasoning
        if content:
            fields["content"] = content
        if calls:
            fields["tool_calls"] = [c.to_openai() for c in calls]
        return DeltaMessage(**fields) if fields else None


def _engine_prompt_len(res: RequestOutput | None, rendered: int) -> int:
    """The prompt's length as the engine counts it (image placeholders expanded), else the
    rendered prompt's."""
    ids = getattr(res, "prompt_token_ids", None)
    return len(ids) if ids else rendered


class OpenAIServingChat:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _check(self, req: ChatCompletionRequest) -> None:
        if req.stream and req.prompt_logprobs is not None:
            raise OpenAIServingError("prompt_logprobs is not available when streaming", 400,
                                     "prompt_logprobs")
        if req.top_logprobs and not req.logprobs:
            raise OpenAIServingError("when using top_logprobs, logprobs must be set to true",
                                     400, "top_logprobs")
        if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
            raise OpenAIServingError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, "
                                     f"got {req.top_logprobs}", 400, "top_logprobs")

    async def create(self, req: ChatCompletionRequest, raw_request: Any) -> Any:
        from fastapi.responses import JSONResponse, Response, StreamingResponse

        ctx = self.ctx
        model = ctx.check_model(req.model)
        self._check(req)
        top_k = req.top_logprobs or 0
        if req.logprobs:
            ctx.check_logprobs(top_k, "top_logprobs")
        plan = plan_tools(req, ctx.tool_parser, ctx.enable_auto_tool_choice, ctx.tokenizer)
        structured, structured_field = structured_outputs_from_request(req)
        if plan.structured is not None:
            if structured is not None:
                raise OpenAIServingError(f"tool_choice {plan.mode!r} constrains the output; "
                                         f"it cannot be combined with {structured_field}", 400,
                                         structured_field)
            structured, structured_field = plan.structured, "tools"
        ctx.check_structured_outputs(structured, structured_field)
        prompt = await ctx.chat_prompt(
            req.messages, add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message, chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs,
            add_special_tokens=req.add_special_tokens, tools=req.tools if req.tools else None)
        prompt_ids = prompt.token_ids
        fields = req.sampling_fields()
        if structured is not None:
            fields["structured_outputs"] = structured
        if plan.parser is not None:
            plan.parser.adjust_sampling_fields(fields)
        if req.logprobs:
            fields["logprobs"] = top_k
        fields["output_kind"] = "delta"
        request_fields = set(req.model_fields_set)
        fields["max_tokens"] = ctx.resolve_max_tokens(
            len(prompt_ids), req.effective_max_tokens,
            explicit=bool({"max_tokens", "max_completion_tokens"} & request_fields))
        if prompt.images and not {"max_tokens", "max_completion_tokens"} & request_fields:
            fields["max_tokens"] = None  # the engine expands image placeholders: it fills the room
        params = ctx.make_sampling_params(fields, request_fields)
        request_id = random_id("chatcmpl")
        generator = ctx.engine.generate(prompt.engine_input(), params, request_id,
                                        priority=req.priority, **ctx.generate_kwargs(model))
        merged = merge_async_iterators(generator)
        created = int(time.time())
        if req.stream:
            ok, first = await run_until_disconnected(_first(merged), raw_request.is_disconnected)
            if not ok:
                await merged.aclose()
                return Response(status_code=499)
            num_prompt = _engine_prompt_len(first[1] if first else None, len(prompt_ids))
            body = self._stream(req, num_prompt, merged, first, request_id, created, model,
                                plan)
            return StreamingResponse(body, media_type="text/event-stream",
                                     headers={"X-Request-Id": request_id})
        ok, result = await run_until_disconnected(self._collect(req, merged),
                                                  raw_request.is_disconnected)
        if not ok:
            return Response(status_code=499)
        states, prompt_logprobs, last = result
        num_prompt = _engine_prompt_len(last, len(prompt_ids))
        choices = []
        num_gen = 0
        for j, state in enumerate(states):
            num_gen += len(state.token_ids)
            logprobs = (chat_logprobs(ctx, state.token_ids, state.logprobs, top_k)
                        if req.logprobs else None)
            message, finish_reason = self._message(state, plan)
            choices.append(ChatCompletionResponseChoice(
                index=j, message=message, logprobs=logprobs,
                finish_reason=finish_reason, stop_reason=state.stop_reason))
        usage = UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_gen,
                          total_tokens=num_prompt + num_gen)
        response = ChatCompletionResponse(
            id=request_id, created=created, model=model, choices=choices, usage=usage,
            prompt_logprobs=(prompt_logprobs_json(prompt_logprobs)
                             if req.prompt_logprobs is not None else None))
        return JSONResponse(response.model_dump(), headers={"X-Request-Id": request_id})

    def _message(self, state: ChoiceState, plan: ToolPlan
                 ) -> tuple[ChatResponseMessage, str | None]:
        """The assistant message of a finished choice: reasoning split off, tool calls
        parsed; finish_reason "tool_calls" when calls ended the turn."""
        content: str | None = state.text
        reasoning = None
        if self.ctx.reasoning_parser is not None:
            reasoning, content = self.ctx.reasoning_parser(self.ctx.tokenizer) \
                .extract_reasoning(state.text)
        finish_reason = state.finish_reason
        calls: list[dict[str, Any]] = []
        if plan.parser is not None and content is not None:
            extracted = plan.parser.extract_tool_calls(content)
            if extracted.tools_called:
                calls = [c.to_openai() for c in extracted.tool_calls]
                content = extracted.content
                if finish_reason == "stop":
                    finish_reason = plan.calls_finish_reason
        if content is None and not calls and reasoning is None:
            content = ""
        return (ChatResponseMessage(content=content, reasoning_content=reasoning,
                                    tool_calls=calls), finish_reason)

    async def _collect(self, req: ChatCompletionRequest,
                       merged: AsyncIterator[tuple[int, RequestOutput]]
                       ) -> tuple[list[ChoiceState], list[Any] | None, RequestOutput | None]:
        states = [ChoiceState() for _ in range(req.n)]
        prompt_logprobs = None
        res = None
        async for _, res in merged:
            if res.prompt_logprobs is not None:
                prompt_logprobs = res.prompt_logprobs
            for out in res.outputs:
                states[out.index].add(out, delta=True)
        return states, prompt_logprobs, res

    async def _stream(self, req: ChatCompletionRequest, num_prompt: int,
                      merged: AsyncIterator[tuple[int, RequestOutput]],
                      first: tuple[int, RequestOutput] | None, request_id: str, created: int,
                      model: str, plan: ToolPlan) -> AsyncIterator[str]:
        ctx = self.ctx
        top_k = req.top_logprobs or 0
        gen_tokens = [0] * req.n
        finished = [False] * req.n
        splitters = [ChoiceSplitter.create(ctx, plan) for _ in range(req.n)]

        def chunk(choice: ChatCompletionResponseStreamChoice, idx: int) -> str:
            c = ChatCompletionStreamResponse(id=request_id, object="chat.completion.chunk",
                                             created=created, model=model, choices=[choice])
            if req.continuous_usage:
                c.usage = UsageInfo(prompt_tokens=num_prompt, completion_tokens=gen_tokens[idx],
                                    total_tokens=num_prompt + gen_tokens[idx])
            return sse(c)

        try:
            for j in range(req.n):
                yield chunk(ChatCompletionResponseStreamChoice(
                    index=j, delta=DeltaMessage(role="assistant", content=""), logprobs=None,
                    finish_reason=None), j)
            async for _, res in _chain(first, merged):
                for out in res.outputs:
                    j = out.index
                    if finished[j]:
                        continue
                    if not out.text and not out.token_ids and out.finish_reason is None:
                        continue
                    gen_tokens[j] += len(out.token_ids)
                    logprobs = (chat_logprobs(ctx, list(out.token_ids), list(out.logprobs or []),
                                              top_k) if req.logprobs else None)
                    finish_reason = out.finish_reason
                    if finish_reason is not None:
                        finished[j] = True
                    splitter = splitters[j]
                    if splitter is None:
                        delta = DeltaMessage(content=out.text)
                    else:
                        delta = splitter.feed(out.text, final=finish_reason is not None)
                        if finish_reason == "stop" and splitter.tools_called:
                            finish_reason = plan.calls_finish_reason
                        if (delta is None and finish_reason is None and logprobs is None):
                            continue
                        delta = delta or DeltaMessage()
                    yield chunk(ChatCompletionResponseStreamChoice(
                        index=j, delta=delta, logprobs=logprobs,
                        finish_reason=finish_reason, stop_reason=out.stop_reason), j)
            if req.include_usage:
                total = sum(gen_tokens)
                yield sse(ChatCompletionStreamResponse(
                    id=request_id, object="chat.completion.chunk", created=created, model=model,
                    choices=[],
                    usage=UsageInfo(prompt_tokens=num_prompt, completion_tokens=total,
                                    total_tokens=num_prompt + total)))
        except Exception as e:
            yield sse_error(exception_to_error(e))
            return
        finally:
            await _aclose_quietly(merged)
        yield "data: [DONE]\n\n"
