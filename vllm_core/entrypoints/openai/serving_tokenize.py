"""POST /tokenize, POST /detokenize and GET /tokenizer_info (vLLM's shapes).

``/tokenize`` takes ``{"prompt": ...}`` (completion style, ``add_special_tokens`` default true)
or ``{"messages": [...]}`` (chat style: the chat template is applied, ``add_special_tokens``
default false) and tokenizes exactly as the completion and chat endpoints do, so its
``count`` equals their ``usage.prompt_tokens``.
"""

from __future__ import annotations

from typing import Any

from vllm_core.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from vllm_core.entrypoints.openai.serving_common import ServingContext


class OpenAIServingTokenization:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def tokenize(self, req: TokenizeCompletionRequest | TokenizeChatRequest
                       ) -> TokenizeResponse:
        """Tokenize off the event loop (a long prompt must not stall other requests)."""
        ctx = self.ctx
        ctx.check_model(req.model)
        if isinstance(req, TokenizeChatRequest):
            tokens = await ctx.chat_prompt_ids(
                req.messages, add_generation_prompt=req.add_generation_prompt,
                continue_final_message=req.continue_final_message,
                chat_template=req.chat_template, chat_template_kwargs=req.chat_template_kwargs,
                add_special_tokens=req.add_special_tokens)
        else:
            tokens = await ctx.tokenize_async(req.prompt, req.add_special_tokens)
        want_strs = req.return_token_strs
        strs = (list(ctx.tokenizer.convert_ids_to_tokens(tokens)) if want_strs else None)
        return TokenizeResponse(count=len(tokens), max_model_len=ctx.max_model_len,
                                tokens=tokens, token_strs=strs)

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        ctx = self.ctx
        ctx.check_model(req.model)
        ctx.check_token_ids(req.tokens, "tokens")
        return DetokenizeResponse(prompt=ctx.tokenizer.decode(req.tokens))

    def tokenizer_info(self) -> dict[str, Any]:
        """The tokenizer's class, special tokens, vocabulary size and chat template."""
        tok = self.ctx.tokenizer
        info: dict[str, Any] = {
            "tokenizer_class": type(tok).__name__,
            "vocab_size": self.ctx.vocab_size,
            "model_max_length": self.ctx.max_model_len,
            "chat_template": self.ctx.chat_template or getattr(tok, "chat_template", None),
        }
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = getattr(tok, name, None)
            info[name] = value if value is None or isinstance(value, str) else str(value)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            info[name] = getattr(tok, name, None)
        return info
