"""POST /v1/completions: text or token-id prompts (one or a batch), streamed or not.

Choice ``index`` is ``prompt_index * n + output.index`` (vLLM's numbering). Streaming sends
``data: {chunk}`` events, each choice's ``finish_reason`` exactly once, an optional final usage
chunk (``stream_options.include_usage``), and ``data: [DONE]``. Prompt errors are refused with
an HTTP 400 before the stream starts: the first engine output is awaited before the response
headers are sent.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from vllm_core.entrypoints.openai.errors import OpenAIServingError, exception_to_error, sse_error
from vllm_core.entrypoints.openai.protocol import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
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
from vllm_core.entrypoints.openai.structured_request import structured_outputs_from_request
from vllm_core.outputs import CompletionOutput, PositionLogprobs, RequestOutput


def sse(chunk: Any) -> str:
    return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"


def completion_logprobs(ctx: ServingContext, token_ids: list[int],
                        positions: list[PositionLogprobs | None], num: int,
                        offset: int) -> CompletionLogProbs:
    """Legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset.

    ``top_logprobs[i]`` holds the ``num`` most likely tokens plus the sampled one (so it may
    have ``num + 1`` entries, as in vLLM). Positions without logprobs (the first prompt token
    when echoing) give ``None``.
    """
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for i, token_id in enumerate(token_ids):
        position = positions[i] if i < len(positions) else None
        token = ctx.token_text(token_id, position)
        tokens.append(token)
        text_offset.append(offset)
        offset += len(token)
        if not position:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        sampled = position.get(token_id)
        token_logprobs.append(clamp_logprob(sampled.logprob) if sampled else None)
        top = {ctx.token_text(t, position): clamp_logprob(lp)
               for t, lp in ctx.top_entries(position, num)}
        if sampled is not None:
            top.setdefault(token, clamp_logprob(sampled.logprob))
        top_logprobs.append(top)
    # All fields passed explicitly: streamed chunks are dumped with exclude_unset.
    return CompletionLogProbs(text_offset=text_offset, token_logprobs=token_logprobs,
                              tokens=tokens, top_logprobs=top_logprobs)


class _Prompt:
    __slots__ = ("text", "token_ids")

    def __init__(self, text: str | None, token_ids: list[int]) -> None:
        self.text = text
        self.token_ids = token_ids


class OpenAIServingCompletion:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def _prompts(self, req: CompletionRequest) -> list[_Prompt]:
        ctx = self.ctx
        raw = req.prompt
        if isinstance(raw, str):
            items: list[str | list[int]] = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            items = [list(raw)]  # type: ignore[arg-type]
        else:
            items = list(raw)  # type: ignore[arg-type]
        if not items:
            raise OpenAIServingError("prompt must not be empty", 400, "prompt")
        prompts: list[_Prompt] = []
        for item in items:
            if isinstance(item, str):
                prompts.append(_Prompt(item, await ctx.tokenize_async(item,
                                                                      req.add_special_tokens)))
            else:
                ctx.check_token_ids(item, "prompt")
                prompts.append(_Prompt(None, list(item)))
        return prompts

    async def create(self, req: CompletionRequest, raw_request: Any) -> Any:
        """Handle one request; returns a FastAPI response (JSON or SSE stream)."""
        from fastapi.responses import JSONResponse, Response, StreamingResponse

        ctx = self.ctx
        model = ctx.check_model(req.model)
        if req.suffix is not None:
            raise OpenAIServingError("suffix is not currently supported", 400, "suffix")
        if req.stream and req.best_of is not None and req.best_of > req.n:
            raise OpenAIServingError("best_of > n is not supported with streaming", 400,
                                     "best_of")
        ctx.check_logprobs(req.logprobs, "logprobs")
        if req.stream and req.prompt_logprobs is not None:
            raise OpenAIServingError("prompt_logprobs is not available when streaming", 400,
                                     "prompt_logprobs")
        prompts = await self._prompts(req)
        fields = req.sampling_fields()
        structured, structured_field = structured_outputs_from_request(req)
        if structured is not None:
            ctx.check_structured_outputs(structured, structured_field)
            fields["structured_outputs"] = structured
        if req.logprobs is not None:
            fields["logprobs"] = req.logprobs
            if req.echo:
                fields.setdefault("prompt_logprobs", req.logprobs)
        fields["output_kind"] = "delta"
        request_fields = set(req.model_fields_set)
        # echo with max_tokens=0 scores the prompt only (vLLM): the engine samples one token,
        # which is dropped from the answer.
        score_only = req.echo and req.max_tokens == 0
        request_id = random_id("cmpl")
        generators = []
        for i, prompt in enumerate(prompts):
            max_tokens = 1 if score_only else ctx.resolve_max_tokens(
                len(prompt.token_ids), req.max_tokens, explicit="max_tokens" in request_fields)
            params = ctx.make_sampling_params({**fields, "max_tokens": max_tokens},
                                              request_fields)
            generators.append(ctx.engine.generate(prompt.token_ids, params, f"{request_id}-{i}",
                                                  priority=req.priority,
                                                  **ctx.generate_kwargs(model)))
        created = int(time.time())
        merged = merge_async_iterators(*generators)
        if req.stream:
            ok, first = await run_until_disconnected(_first(merged), raw_request.is_disconnected)
            if not ok:
                await merged.aclose()
                return Response(status_code=499)
            body = self._stream(req, prompts, merged, first, request_id, created, model,
                                score_only)
            return StreamingResponse(body, media_type="text/event-stream",
                                     headers={"X-Request-Id": request_id})
        ok, result = await run_until_disconnected(
            self._collect(req, prompts, merged, score_only), raw_request.is_disconnected)
        if not ok:
            return Response(status_code=499)
        response = self._response(req, prompts, result, request_id, created, model)
        return JSONResponse(response.model_dump(), headers={"X-Request-Id": request_id})

    async def _collect(self, req: CompletionRequest, prompts: list[_Prompt],
                       merged: AsyncIterator[tuple[int, RequestOutput]], score_only: bool):
        states = [[ChoiceState() for _ in range(req.n)] for _ in prompts]
        prompt_logprobs: list[Any] = [None] * len(prompts)
        async for i, res in merged:
            for out in res.outputs:
                states[i][out.index].add(_scored_only(out) if score_only else out, delta=True)
            if res.prompt_logprobs is not None:
                prompt_logprobs[i] = res.prompt_logprobs
            if res.prompt_token_ids:
                prompts[i].token_ids = list(res.prompt_token_ids)
        return states, prompt_logprobs

    def _response(self, req: CompletionRequest, prompts: list[_Prompt], result: Any,
                  request_id: str, created: int, model: str) -> CompletionResponse:
        ctx = self.ctx
        states, prompt_logprobs = result
        choices: list[CompletionResponseChoice] = []
        num_prompt = num_gen = 0
        for i, prompt in enumerate(prompts):
            num_prompt += len(prompt.token_ids)
            prompt_text = self._prompt_text(prompt) if req.echo else ""
            for j, state in enumerate(states[i]):
                num_gen += len(state.token_ids)
                logprobs = None
                if req.logprobs is not None:
                    token_ids = state.token_ids
                    positions: list[Any] = list(state.logprobs)
                    if req.echo:
                        p_lp = prompt_logprobs[i] or [None] * len(prompt.token_ids)
                        token_ids = prompt.token_ids + token_ids
                        positions = list(p_lp) + positions
                    logprobs = completion_logprobs(ctx, token_ids, positions, req.logprobs, 0)
                choices.append(CompletionResponseChoice(
                    index=i * req.n + j, text=prompt_text + state.text, logprobs=logprobs,
                    finish_reason=state.finish_reason, stop_reason=state.stop_reason,
                    prompt_logprobs=(prompt_logprobs_json(prompt_logprobs[i])
                                     if req.prompt_logprobs is not None else None)))
        usage = UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_gen,
                          total_tokens=num_prompt + num_gen)
        return CompletionResponse(id=request_id, created=created, model=model, choices=choices,
                                  usage=usage)

    def _prompt_text(self, prompt: _Prompt) -> str:
        if prompt.text is None:
            prompt.text = self.ctx.tokenizer.decode(prompt.token_ids)
        return prompt.text

    async def _stream(self, req: CompletionRequest, prompts: list[_Prompt],
                      merged: AsyncIterator[tuple[int, RequestOutput]],
                      first: tuple[int, RequestOutput] | None, request_id: str, created: int,
                      model: str, score_only: bool = False) -> AsyncIterator[str]:
        ctx = self.ctx
        n = req.n
        num_choices = len(prompts) * n
        gen_tokens = [0] * num_choices
        offsets = [0] * num_choices
        echoed = [not req.echo] * num_choices
        finished = [False] * num_choices
        prompt_lp: list[Any] = [None] * len(prompts)
        num_prompt = sum(len(p.token_ids) for p in prompts)
        try:
            async for i, res in _chain(first, merged):
                if res.prompt_logprobs is not None:
                    prompt_lp[i] = res.prompt_logprobs
                for out in res.outputs:
                    if score_only:
                        out = _scored_only(out)
                    idx = i * n + out.index
                    if finished[idx]:
                        continue
                    text = out.text
                    token_ids = list(out.token_ids)
                    positions: list[Any] = list(out.logprobs or [])
                    if not echoed[idx]:
                        echoed[idx] = True
                        prompt = prompts[i]
                        text = self._prompt_text(prompt) + text
                        if req.logprobs is not None:
                            p_lp = prompt_lp[i] or [None] * len(prompt.token_ids)
                            positions = list(p_lp) + positions
                            token_ids = prompt.token_ids + token_ids
                    if not text and not out.token_ids and out.finish_reason is None:
                        continue
                    gen_tokens[idx] += len(out.token_ids)
                    logprobs = None
                    if req.logprobs is not None:
                        logprobs = completion_logprobs(ctx, token_ids, positions, req.logprobs,
                                                       offsets[idx])
                        offsets[idx] += sum(len(t) for t in logprobs.tokens)
                    if out.finish_reason is not None:
                        finished[idx] = True
                    chunk = CompletionStreamResponse(
                        id=request_id, object="text_completion", created=created, model=model,
                        choices=[CompletionResponseStreamChoice(
                            index=idx, text=text, logprobs=logprobs,
                            finish_reason=out.finish_reason, stop_reason=out.stop_reason)])
                    if req.continuous_usage:
                        prompt_len = len(prompts[i].token_ids)
                        chunk.usage = UsageInfo(prompt_tokens=prompt_len,
                                                completion_tokens=gen_tokens[idx],
                                                total_tokens=prompt_len + gen_tokens[idx])
                    yield sse(chunk)
            if req.include_usage:
                total_gen = sum(gen_tokens)
                final = CompletionStreamResponse(
                    id=request_id, object="text_completion", created=created, model=model,
                    choices=[],
                    usage=UsageInfo(prompt_tokens=num_prompt, completion_tokens=total_gen,
                                    total_tokens=num_prompt + total_gen))
                yield sse(final)
        except Exception as e:  # after the headers: report in-band, then end the stream
            yield sse_error(exception_to_error(e))
            return
        finally:
            await _aclose_quietly(merged)
        yield "data: [DONE]\n\n"


def _scored_only(out: CompletionOutput) -> CompletionOutput:
    """The output with its sampled part removed (echo + max_tokens=0 scores the prompt only)."""
    return dataclasses.replace(out, text="", token_ids=[], logprobs=[] if out.logprobs else
                               out.logprobs, cumulative_logprob=None,
                               finish_reason="length" if out.finish_reason else None,
                               stop_reason=None)


async def _first(it: AsyncIterator[Any]) -> Any:
    """The first item, or None for an empty iterator. Errors propagate (-> HTTP 400/500)."""
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    if first is None:
        return
    yield first
    async for item in rest:
        yield item


async def _aclose_quietly(it: Any) -> None:
    try:
        await it.aclose()
    except Exception:
        pass
