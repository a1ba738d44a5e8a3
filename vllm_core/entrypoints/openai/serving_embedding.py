"""POST /v1/embeddings: pooled final hidden states of a decoder model (``vllm_core.pooling``).

Request: ``input`` a string, a list of strings, token ids or lists of token ids;
``encoding_format`` ``float`` (default) or ``base64`` (little-endian float32, what the openai
SDK asks for); vLLM's extras ``pooling`` (``last``, default, or ``mean``) and ``normalize``
(default true). ``dimensions`` is refused (no Matryoshka truncation). Each input must fit
``max_model_len``. Response: OpenAI's ``{"object": "list", "data": [{"object": "embedding",
"index", "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}``.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from vllm_core.entrypoints.openai.errors import OpenAIServingError
from vllm_core.entrypoints.openai.protocol import NonEmptyStr, OpenAIBaseModel, TokenIds
from vllm_core.entrypoints.openai.serving_common import ServingContext


class EmbeddingRequest(OpenAIBaseModel):
    model: str | None = None
    input: (NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)] | TokenIds
            | Annotated[list[TokenIds], Field(min_length=1)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    pooling: Literal["last", "mean"] = "last"
    normalize: bool = True
    add_special_tokens: bool = True


class OpenAIServingEmbedding:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def create(self, req: EmbeddingRequest) -> dict[str, Any]:
        ctx = self.ctx
        model = ctx.check_model(req.model)
        if req.dimensions is not None:
            raise OpenAIServingError("dimensions is not supported: embeddings have the model's "
                                     "hidden size", 400, "dimensions")
        raw = req.input
        if isinstance(raw, str):
            items: list[Any] = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            items = [list(raw)]
        else:
            items = list(raw)
        prompts: list[list[int]] = []
        for i, item in enumerate(items):
            ids = (await ctx.tokenize_async(item, req.add_special_tokens)
                   if isinstance(item, str) else list(item))
            ctx.check_token_ids(ids, "input")
            if len(ids) > ctx.max_model_len:
                raise OpenAIServingError(
                    f"input[{i}] is {len(ids)} tokens; this model's maximum context length is "
                    f"{ctx.max_model_len} tokens", 400, "input")
            prompts.append(ids)
        vectors = await ctx.engine.embed(prompts, req.pooling, req.normalize)
        data = []
        for i, vector in enumerate(vectors):
            embedding: Any = vector
            if req.encoding_format == "base64":
                embedding = base64.b64encode(
                    np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        num = sum(len(p) for p in prompts)
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": num, "total_tokens": num}}
