"""POST /v1/responses: OpenAI's Responses API, the non-stateful subset.

Supported: ``input`` as a string or a list of messages (``role`` user / system / developer /
assistant; ``content`` a string or ``input_text`` / ``output_text`` parts), ``instructions``
(a system message first), ``max_output_tokens``, ``temperature``, ``top_p``, ``stream``. The
chat template renders the conversation exactly as ``/v1/chat/completions`` would.

Refused with a 400 naming the field (they would be silent no-ops): ``previous_response_id``
(no stored responses), ``tools`` (tool calling: issue 12), a ``text.format`` other than text,
``background``. ``store`` is accepted but nothing is stored (the response says ``store:
false``).

Non-streamed: one ``response`` object, ``status`` ``completed`` or ``incomplete`` (with
``incomplete_details.reason = "max_output_tokens"``). Streamed: server-sent events
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then ``response.completed``
(or ``response.incomplete``); each event carries ``type`` and a rising ``sequence_number``.
An error after the stream started is an ``error`` event.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from vllm_core.entrypoints.openai.errors import OpenAIServingError, exception_to_error
from vllm_core.entrypoints.openai.protocol import ChatMessage, OpenAIBaseModel, random_id
from vllm_core.entrypoints.openai.serving_common import (
    ServingContext,
    merge_async_iterators,
    run_until_disconnected,
)


class ResponsesRequest(OpenAIBaseModel):
    model: str | None = None
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    background: bool = False
    seed: int | None = None


def _messages(req: ResponsesRequest) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    if req.instructions:
        out.append(ChatMessage(role="system", content=req.instructions))
    if isinstance(req.input, str):
        out.append(ChatMessage(role="user", content=req.input))
        return out
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        if kind != "message" or "role" not in item:
            raise OpenAIServingError(f"input[{i}]: item type {kind!r} is not supported "
                                     "(messages only)", 400, f"input.{i}")
        role = "system" if item["role"] == "developer" else str(item["role"])
        content = item.get("content", "")
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") not in ("input_text", "output_text", "text"):
                    raise OpenAIServingError(
                        f"input[{i}].content: part type {part.get('type')!r} is not supported "
                        "(text only)", 400, f"input.{i}.content")
                texts.append(str(part.get("text", "")))
            content = "\n".join(texts)
        out.append(ChatMessage(role=role, content=str(content)))
    return out


def _check(req: ResponsesRequest) -> None:
    if req.previous_response_id is not None:
        raise OpenAIServingError("previous_response_id is not supported: this server stores no "
                                 "responses; send the whole conversation as input", 400,
                                 "previous_response_id")
    if req.tools:
        raise OpenAIServingError("tools are not supported by this server yet", 400, "tools")
    fmt = (req.text or {}).get("format") or {}
    if fmt.get("type", "text") != "text":
        raise OpenAIServingError(f"text.format type {fmt.get('type')!r} is not supported yet "
                                 "(only 'text')", 400, "text")
    if req.background:
        raise OpenAIServingError("background responses are not supported", 400, "background")


class OpenAIServingResponses:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(self, req: ResponsesRequest, raw_request: Any) -> Any:
        from fastapi.responses import JSONResponse, Response, StreamingResponse

        ctx = self.ctx
        model = ctx.check_model(req.model)
        _check(req)
        prompt_ids = await ctx.chat_prompt_ids(
            _messages(req), add_generation_prompt=True, continue_final_message=False,
            chat_template=None, chat_template_kwargs=None, add_special_tokens=False)
        fields: dict[str, Any] = {"output_kind": "delta"}
        for name in ("temperature", "top_p", "seed"):
            if getattr(req, name) is not None:
                fields[name] = getattr(req, name)
        fields["max_tokens"] = ctx.resolve_max_tokens(
            len(prompt_ids), req.max_output_tokens,
            explicit=req.max_output_tokens is not None)
        params = ctx.make_sampling_params(fields, set(req.model_fields_set))
        response_id = random_id("resp")
        merged = merge_async_iterators(ctx.engine.generate(prompt_ids, params, response_id,
                                                           **ctx.generate_kwargs(model)))
        shell = self._shell(req, response_id, model)
        if req.stream:
            return StreamingResponse(self._stream(merged, shell, len(prompt_ids)),
                                     media_type="text/event-stream")
        ok, result = await run_until_disconnected(self._collect(merged),
                                                  raw_request.is_disconnected)
        if not ok:
            return Response(status_code=499)
        text, finish, num_out = result
        return JSONResponse(self._final(shell, text, finish, len(prompt_ids), num_out,
                                        random_id("msg")))

    @staticmethod
    async def _collect(merged: AsyncIterator[Any]) -> tuple[str, str | None, int]:
        pieces: list[str] = []
        finish = None
        num_out = 0
        async for _, res in merged:
            for out in res.outputs:
                pieces.append(out.text)
                num_out += len(out.token_ids)
                finish = out.finish_reason or finish
        return "".join(pieces), finish, num_out

    @staticmethod
    def _shell(req: ResponsesRequest, response_id: str, model: str) -> dict[str, Any]:
        return {"id": response_id, "object": "response", "created_at": int(time.time()),
                "model": model, "status": "in_progress", "output": [], "error": None,
                "incomplete_details": None, "instructions": req.instructions,
                "max_output_tokens": req.max_output_tokens, "metadata": req.metadata or {},
                "parallel_tool_calls": False, "previous_response_id": None, "store": False,
                "temperature": req.temperature, "top_p": req.top_p, "tool_choice": "none",
                "tools": [], "text": {"format": {"type": "text"}}, "truncation": "disabled",
                "user": req.user, "usage": None}

    @staticmethod
    def _message(message_id: str, text: str, status: str) -> dict[str, Any]:
        return {"type": "message", "id": message_id, "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}

    def _final(self, shell: dict[str, Any], text: str, finish: str | None, num_in: int,
               num_out: int, message_id: str) -> dict[str, Any]:
        cut = finish == "length"
        return {**shell, "status": "incomplete" if cut else "completed",
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "output": [self._message(message_id, text, "incomplete" if cut else
                                         "completed")],
                "usage": {"input_tokens": num_in, "output_tokens": num_out,
                          "total_tokens": num_in + num_out,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}

    async def _stream(self, merged: AsyncIterator[Any], shell: dict[str, Any],
                      num_in: int) -> AsyncIterator[str]:
        seq = 0
        message_id = random_id("msg")

        def event(kind: str, **data: Any) -> str:
            nonlocal seq
            seq += 1
            return (f"event: {kind}\ndata: "
                    f"{json.dumps({'type': kind, 'sequence_number': seq - 1, **data})}\n\n")

        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        empty_part = {"type": "output_text", "text": "", "annotations": []}
        try:
            yield event("response.created", response=shell)
            yield event("response.in_progress", response=shell)
            yield event("response.output_item.added", output_index=0,
                        item={**self._message(message_id, "", "in_progress"), "content": []})
            yield event("response.content_part.added", part=empty_part, **where)
            pieces: list[str] = []
            finish = None
            num_out = 0
            async for _, res in merged:
                for out in res.outputs:
                    num_out += len(out.token_ids)
                    finish = out.finish_reason or finish
                    if out.text:
                        pieces.append(out.text)
                        yield event("response.output_text.delta", delta=out.text, logprobs=[],
                                    **where)
            text = "".join(pieces)
            final = self._final(shell, text, finish, num_in, num_out, message_id)
            item = final["output"][0]
            yield event("response.output_text.done", text=text, logprobs=[], **where)
            yield event("response.content_part.done", part=item["content"][0], **where)
            yield event("response.output_item.done", output_index=0, item=item)
            done = "response.incomplete" if final["status"] == "incomplete" \
                else "response.completed"
            yield event(done, response=final)
        except Exception as e:  # after the headers: report in-band
            err = exception_to_error(e)
            yield event("error", code=str(err.status), message=err.message, param=err.param)
        finally:
            await merged.aclose()
