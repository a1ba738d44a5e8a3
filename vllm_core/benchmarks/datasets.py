"""Synthetic request sets for the serving benchmark (no download).

- ``random``: prompts of random token ids, input length drawn uniformly from
  ``[L * (1 - r), L * (1 + r)]`` (``r`` = ``random_range_ratio``), output length likewise.
  With a tokenizer the ids are decoded into text; without one they are sent as token-id
  prompts (``/v1/completions`` accepts them) or, for chat, as random words.
- ``sharegpt-like``: conversation-shaped text prompts whose input and output lengths follow
  log-normal distributions fitted to the shape of the ShareGPT set (median input about 150
  tokens, median output about 120, long right tails), clipped to ``[4, max_len]``.

Every request carries its intended input and output length; the benchmark asks for exactly
``output_len`` tokens (``max_tokens`` + ``ignore_eos`` where the server accepts them).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

_WORDS = ("the of and to in is that for it as with was on be by at this from have or an are "
          "not but what all were when we there can more if will one about which their time "
          "so up out would into has some could them other than then now only its over also "
          "after use two how our work first well way even new want because any these give day "
          "most us system model data request server token memory cache batch latency queue "
          "question answer explain write story code python function list table summary").split()


@dataclass(slots=True)
class SampleRequest:
    prompt: str | list[int]
    prompt_len: int
    output_len: int


def _uniform_len(rng: random.Random, mean: int, ratio: float) -> int:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"random_range_ratio must be in [0, 1), got {ratio}")
    low = max(1, int(mean * (1 - ratio)))
    high = max(low, int(mean * (1 + ratio)))
    return rng.randint(low, high)


def _words(rng: random.Random, num_tokens: int) -> str:
    # Common English words are mostly one token each in BPE vocabularies (with the space).
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, num_tokens)))


def random_requests(num: int, input_len: int, output_len: int, range_ratio: float, seed: int,
                    tokenizer: Any = None, vocab_size: int = 32000, as_text: bool = False
                    ) -> list[SampleRequest]:
    rng = random.Random(seed)
    out: list[SampleRequest] = []
    for _ in range(num):
        n_in = _uniform_len(rng, input_len, range_ratio)
        n_out = _uniform_len(rng, output_len, range_ratio)
        if tokenizer is not None:
            ids = [rng.randrange(vocab_size) for _ in range(n_in)]
            text = tokenizer.decode(ids)
            out.append(SampleRequest(text, len(tokenizer.encode(text, add_special_tokens=False)),
                                     n_out))
        elif as_text:
            out.append(SampleRequest(_words(rng, n_in), n_in, n_out))
        else:
            # Stay clear of the low ids (special tokens in most vocabularies).
            low = min(1000, vocab_size // 4)
            ids = [rng.randrange(low, vocab_size) for _ in range(n_in)]
            out.append(SampleRequest(ids, n_in, n_out))
    return out


def sharegpt_like_requests(num: int, seed: int, max_input_len: int = 1024,
                           max_output_len: int = 1024, tokenizer: Any = None
                           ) -> list[SampleRequest]:
    rng = random.Random(seed)
    out: list[SampleRequest] = []
    openers = ("Can you explain", "Write a short note about", "Summarize", "How do I",
               "What is the difference between", "Give me three ideas for")
    for _ in range(num):
        n_in = int(min(max(4, rng.lognormvariate(math.log(150), 1.0)), max_input_len))
        n_out = int(min(max(4, rng.lognormvariate(math.log(120), 0.9)), max_output_len))
        text = f"{rng.choice(openers)} {_words(rng, max(1, n_in - 6))}?"
        n_tokens = (len(tokenizer.encode(text, add_special_tokens=False))
                    if tokenizer is not None else n_in)
        out.append(SampleRequest(text, n_tokens, n_out))
    return out


def make_requests(dataset: str, num: int, input_len: int, output_len: int, range_ratio: float,
                  seed: int, tokenizer: Any = None, vocab_size: int = 32000,
                  chat: bool = False) -> list[SampleRequest]:
    if num < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num}")
    if dataset == "random":
        return random_requests(num, input_len, output_len, range_ratio, seed, tokenizer,
                               vocab_size, as_text=chat)
    if dataset in ("sharegpt-like", "sharegpt"):
        return sharegpt_like_requests(num, seed, tokenizer=tokenizer)
    raise ValueError(f"dataset must be 'random' or 'sharegpt-like', got {dataset!r}")
