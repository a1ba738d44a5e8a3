"""Reasoning parsers on fixed outputs, whole and streamed at every split point: the streamed
reasoning/content deltas concatenate to the non-streamed split, and a partial tag is never
sent as content or reasoning."""

from __future__ import annotations

import pytest

from vllm_core.reasoning import resolve_reasoning_parser
from vllm_core.reasoning.base import partial_tag_suffix

CASES = [
    # (parser, output, reasoning, content)
    ("deepseek_r1", "<think>2+2 is 4, since </thinking> is not a tag</think>The answer is 4.",
     "2+2 is 4, since </thinking> is not a tag", "The answer is 4."),
    ("deepseek_r1", "the template opened it.</think>\n\nOK", "the template opened it.",
     "\n\nOK"),
    ("deepseek_r1", "still thinking when cut off <", "still thinking when cut off <", None),
    ("qwen3", "<think>\nreason</think>\n\nanswer", "\nreason", "\n\nanswer"),
    ("qwen3", "no thinking at all: <think> later is content", None,
     "no thinking at all: <think> later is content"),
    ("qwen3", "<thi", None, "<thi"),
]


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_non_streamed(name, text, reasoning, content):
    assert resolve_reasoning_parser(name)().extract_reasoning(text) == (reasoning, content)


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_streamed_at_every_split(name, text, reasoning, content):
    parser = resolve_reasoning_parser(name)()
    for size in (1, 2, 3, 7):
        stream = parser.stream()
        r_all = c_all = ""
        for i in range(0, len(text), size):
            r, c = stream.feed(text[i:i + size])
            assert "</think" not in c and "<think>" not in r
            r_all += r
            c_all += c
        r, c = stream.finish()
        assert (r_all + r or None, c_all + c or None) == (reasoning, content), size
    for cut in range(len(text) + 1):
        stream = parser.stream()
        r1, c1 = stream.feed(text[:cut])
        r2, c2 = stream.feed(text[cut:])
        r3, c3 = stream.finish()
        assert ((r1 + r2 + r3) or None, (c1 + c2 + c3) or None) == (reasoning, content), cut


def test_partial_tag_suffix():
    assert partial_tag_suffix("abc</th", "</think>") == 4
    assert partial_tag_suffix("abc", "</think>") == 0
    assert partial_tag_suffix("</think>", "</think>") == 0     # whole tag: not partial


def test_unknown_parser_names_the_known_ones():
    with pytest.raises(ValueError, match="deepseek_r1.*qwen3"):
        resolve_reasoning_parser("nope")
