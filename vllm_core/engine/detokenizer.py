"""Incremental detokenization and stop strings, one detokenizer per request.

Invariants:

- ``output_text`` only ever holds whole characters: a token that ends inside a multi-byte UTF-8
  character (byte-level BPE) adds nothing until the tokens completing it arrive, so no
  replacement character ``'\\ufffd'`` appears mid-stream; the concatenation of everything
  emitted equals the full decode of the output tokens (``clean_up_tokenization_spaces=False``).
- Stop strings are searched in the newly added text plus a look-back of ``len(stop) - 1``
  characters, so a stop string split over tokens is found; the earliest match wins. On a match
  the text is cut before the stop string (or after it with ``include_stop_str_in_output``) and
  the stop string is returned (the request's ``stop_reason``). Stop strings are only checked
  once more than ``min_tokens`` tokens were generated.
- Streaming: ``get_next_output_text`` holds back the last ``len(longest stop) - 1`` characters
  of an unfinished request (when stop strings are not included in the output), so a partial
  stop string that later completes never reaches a stream.

Two implementations with the same behaviour: ``StreamDetokenizer`` uses the ``tokenizers``
library's ``DecodeStream`` (fast tokenizers); ``OffsetDetokenizer`` decodes a sliding window of
token ids with prefix/read offsets and works with any transformers tokenizer; it also
implements ``spaces_between_special_tokens`` (``make_detokenizer`` picks it when that option
matters, i.e. special tokens are kept).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from vllm_core.sampling.params import SamplingParams

try:  # tokenizers >= 0.21
    from tokenizers.decoders import DecodeStream
except ImportError:  # pragma: no cover - old tokenizers
    DecodeStream = None

# Prompt tokens used as left context so the first output token decodes as it would mid-text.
_PROMPT_CONTEXT = 6
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer(ABC):
    """Base: text bookkeeping, stop strings and streaming hold-back. Subclasses implement
    ``_decode_next(token_id) -> str`` returning the text completed by that token ("" if none).
    """

    def __init__(self, params: SamplingParams) -> None:
        self.output_text = ""
        self.stop = list(params.stop)
        self.include_stop = params.include_stop_str_in_output
        self.min_tokens = params.min_tokens
        self.num_tokens = 0
        self._max_stop_len = max((len(s) for s in self.stop), default=0)
        self.stop_buffer_length = (self._max_stop_len - 1
                                   if self.stop and not self.include_stop else 0)
        self._sent = 0

    @abstractmethod
    def _decode_next(self, token_id: int) -> str:
        ...

    def update(self, new_token_ids: list[int], stop_terminated: bool) -> str | None:
        """Append the text of ``new_token_ids``; return the stop string hit, if any.

        ``stop_terminated``: the last token is a stop token / eos that finished the request;
        its text is left out unless ``include_stop_str_in_output``.
        """
        ids = new_token_ids
        if stop_terminated and not self.include_stop and ids:
            ids = ids[:-1]
        old_len = len(self.output_text)
        pieces = [self._decode_next(t) for t in ids]
        self.num_tokens += len(new_token_ids)
        if pieces:
            self.output_text += "".join(pieces)
        if not self.stop or self.num_tokens <= self.min_tokens:
            return None
        return self._check_stop(old_len)

    def _check_stop(self, old_len: int) -> str | None:
        text = self.output_text
        if len(text) == old_len:
            return None
        best_idx, best = -1, None
        for s in self.stop:
            idx = text.find(s, max(0, old_len - len(s) + 1))
            if idx != -1 and (best is None or idx < best_idx):
                best_idx, best = idx, s
        if best is None:
            return None
        end = best_idx + len(best) if self.include_stop else best_idx
        self.output_text = text[:end]
        return best

    def get_next_output_text(self, finished: bool, delta: bool) -> str:
        """The text to report now: all of it (``delta=False``) or what is new since the last
        delta call. Unless ``finished``, the last ``stop_buffer_length`` characters are held."""
        length = len(self.output_text)
        if not finished:
            length = max(0, length - self.stop_buffer_length)
        if not delta:
            return self.output_text[:length]
        start = min(self._sent, length)
        self._sent = max(self._sent, length)
        return self.output_text[start:length]


class StreamDetokenizer(IncrementalDetokenizer):
    """Uses ``tokenizers.decoders.DecodeStream`` seeded with the prompt's last tokens."""

    def __init__(self, tokenizer: Any, params: SamplingParams,
                 prompt_token_ids: list[int]) -> None:
        super().__init__(params)
        if DecodeStream is None:  # pragma: no cover
            raise RuntimeError("tokenizers.decoders.DecodeStream is unavailable")
        self._backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") \
            else tokenizer
        self._stream = DecodeStream(ids=list(prompt_token_ids[-_PROMPT_CONTEXT:]),
                                    skip_special_tokens=params.skip_special_tokens)

    def _decode_next(self, token_id: int) -> str:
        return self._stream.step(self._backend, token_id) or ""


class OffsetDetokenizer(IncrementalDetokenizer):
    """Sliding-window decoding with prefix/read offsets over ``self._ids``.

    ``_ids[:read]`` has been turned into text; ``_ids[prefix:read]`` is kept as left context.
    For a new token, text = decode(ids[prefix:]) minus decode(ids[prefix:read]); if it is
    non-empty and does not end in U+FFFD (an unfinished character), it is emitted and the
    window advances (prefix <- read, read <- end). Special tokens (added tokens marked
    special) are skipped with ``skip_special_tokens``; kept ones are separated by spaces with
    ``spaces_between_special_tokens``.
    """

    def __init__(self, tokenizer: Any, params: SamplingParams,
                 prompt_token_ids: list[int]) -> None:
        super().__init__(params)
        self._tok = tokenizer
        self._skip = params.skip_special_tokens
        self._spaces = params.spaces_between_special_tokens
        self._special = special_token_ids(tokenizer)
        self._ids = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._read = len(self._ids)
        self._prefix = max(0, self._read - (_PROMPT_CONTEXT - 1))

    def _decode(self, ids: list[int]) -> str:
        if not self._special.intersection(ids):
            return self._tok.decode(ids, skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
        parts: list[str] = []
        run: list[int] = []
        for t in ids:
            if t in self._special:
                if run:
                    parts.append(self._tok.decode(run, clean_up_tokenization_spaces=False))
                    run = []
                if not self._skip:
                    parts.append(self._tok.convert_ids_to_tokens(t))
            else:
                run.append(t)
        if run:
            parts.append(self._tok.decode(run, clean_up_tokenization_spaces=False))
        return (" " if self._spaces and not self._skip else "").join(parts)

    def _decode_next(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        delta = new_text[len(prefix_text):]
        # Slide the window and drop ids no longer needed as context.
        self._prefix, self._read = self._read, len(self._ids)
        del self._ids[:self._prefix]
        self._read -= self._prefix
        self._prefix = 0
        return delta


class NoopDetokenizer(IncrementalDetokenizer):
    """For ``detokenize=False``: text stays empty, stop strings are never found."""

    def _decode_next(self, token_id: int) -> str:
        return ""


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens (added tokens flagged special + all_special_ids)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(tid))
    return frozenset(ids)


def make_detokenizer(tokenizer: Any, params: SamplingParams, prompt_token_ids: list[int],
                     prefer_stream: bool = True) -> IncrementalDetokenizer:
    """The detokenizer for one request.

    ``StreamDetokenizer`` when DecodeStream exists, the tokenizer is fast, ``prefer_stream``
    and special-token spacing cannot matter (special tokens skipped, or no spaces asked);
    else ``OffsetDetokenizer``. ``NoopDetokenizer`` when ``params.detokenize`` is False or there
    is no tokenizer.
    """
    if tokenizer is None or not params.detokenize:
        return NoopDetokenizer(params)
    spacing_matters = not params.skip_special_tokens and params.spaces_between_special_tokens
    if (prefer_stream and DecodeStream is not None and getattr(tokenizer, "is_fast", False)
            and not spacing_matters):
        return StreamDetokenizer(tokenizer, params, prompt_token_ids)
    return OffsetDetokenizer(tokenizer, params, prompt_token_ids)
