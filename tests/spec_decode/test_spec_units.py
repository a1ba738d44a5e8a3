"""Config parsing, the n-gram proposer, the drafter's caps and the scheduler's draft
bookkeeping (budget, sampling rule, rollback of rejected drafts), without a model."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from vllm_core.config import CacheConfig, SchedulerConfig
from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.engine.request import Request
from vllm_core.engine.scheduler import Scheduler
from vllm_core.messages import ModelRunnerOutput
from vllm_core.sampling.params import SamplingParams
from vllm_core.spec_decode.config import SpeculativeConfig, parse_speculative_config
from vllm_core.spec_decode.drafter import Drafter
from vllm_core.spec_decode.proposer import NgramProposer


def test_config_parsing_and_errors():
    cfg = parse_speculative_config('{"method": "ngram", "num_speculative_tokens": 3, '
                                   '"prompt_lookup_max": 5, "prompt_lookup_min": 2}')
    assert cfg == SpeculativeConfig("ngram", 3, 5, 2)
    assert parse_speculative_config(None) is None
    assert cfg.max_batch_size == 32
    assert SpeculativeConfig(disable_by_batch_size=0).max_batch_size is None
    for raw, words in [("{bad", "not valid JSON"), ('{"method": "ngram", "k": 2}', "unknown"),
                       ('{"num_speculative_tokens": 0}', ">= 1"), ("[1]", "JSON object"),
                       ('{"prompt_lookup_min": 5, "prompt_lookup_max": 2}', "<="),
                       ('{"method": "medusa", "model": "x"}', "not supported yet"),
                       ('{"method": "eagle"}', "model .*is required"),
                       ('{"method": "ngram", "model": "x"}', "apply to the methods"),
                       ('{"method": "magic"}', "must be one of")]:
        with pytest.raises(ValueError, match=words):
            parse_speculative_config(raw)
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = parser.parse_args(["--speculative-config", '{"method": "ngram"}'])
    assert EngineArgs.from_cli_args(args).speculative_config == '{"method": "ngram"}'


def test_ngram_proposer():
    p = NgramProposer(2, 3)
    seq = np.array([1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 8, 2, 3, 4])
    # longest suffix first: [2, 3, 4] last occurred at 6 -> proposes what followed it
    assert p.propose(seq, 3).tolist() == [7, 8, 2]
    assert p.propose(seq, 1).tolist() == [7]
    assert p.propose(seq, 0).tolist() == []
    assert p.propose(np.array([1, 2, 3, 4]), 4).tolist() == []      # no earlier occurrence
    # only a 2-gram matches; the suffix itself never counts as a match
    assert p.propose(np.array([5, 6, 1, 2, 9, 6, 1, 2]), 2).tolist() == [9, 6]
    assert p.propose(np.array([7, 7, 7, 7]), 3).tolist() == [7]


def make_scheduler(budget: int = 64) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget),
                     CacheConfig(block_size=4, num_blocks=64), max_model_len=64)


def prefill(s: Scheduler, req: Request, token: int) -> None:
    s.add_request(req)
    so = s.schedule()
    s.update_from_output(so, ModelRunnerOutput({req.request_id: [token]}))


def test_scheduler_budgets_drafts_and_rolls_back_rejected():
    s = make_scheduler()
    req = Request("a", [1, 2, 3, 1, 2], SamplingParams(max_tokens=20))
    prefill(s, req, 3)
    assert req.num_computed_tokens == 5 and req.num_tokens == 6
    req.spec_token_ids = [1, 2, 3]
    so = s.schedule()
    assert so.num_scheduled_tokens == {"a": 4}
    assert so.scheduled_spec_decode_tokens == {"a": [1, 2, 3]}
    assert "a" in so.sampling_req_ids and req.spec_token_ids == []
    assert req.num_computed_tokens == 9
    # the first draft accepted, then the target's own token: 2 tokens, 2 drafts rolled back
    out = s.update_from_output(so, ModelRunnerOutput({"a": [1, 7]}))
    assert out[0].new_token_ids == [1, 7]
    assert req.num_tokens == 8 and req.num_computed_tokens == 7
    stats = s.make_stats().spec_decoding
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens) == (1, 3, 1)
    assert stats.acceptance_rate == pytest.approx(1 / 3)
    assert stats.mean_accepted_length == 2
    # too many tokens back is the runner's bug, named
    req.spec_token_ids = [5]
    so = s.schedule()
    with pytest.raises(RuntimeError, match="3 tokens for 1 drafts"):
        s.update_from_output(so, ModelRunnerOutput({"a": [5, 6, 7]}))


def test_budget_truncates_drafts_and_stop_inside_a_run():
    s = make_scheduler(budget=3)
    req = Request("a", [1, 2], SamplingParams(max_tokens=20, stop_token_ids=[9]))
    prefill(s, req, 4)
    req.spec_token_ids = [5, 9, 6, 7]
    so = s.schedule()
    assert so.num_scheduled_tokens == {"a": 3}
    assert so.scheduled_spec_decode_tokens == {"a": [5, 9]}
    out = s.update_from_output(so, ModelRunnerOutput({"a": [5, 9, 6]}))
    assert out[0].new_token_ids == [5, 9] and out[0].finish_reason == "stop"
    assert not s.has_unfinished_requests() or "a" not in s.requests


def test_drafter_caps_and_auto_off():
    s = make_scheduler()
    cfg = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1,
                            prompt_lookup_max=2, disable_by_batch_size=1)
    drafter = Drafter(cfg)
    a = Request("a", [1, 2, 3, 4, 5, 6, 1, 2], SamplingParams(max_tokens=3))
    prefill(s, a, 3)
    # two outputs left: at most one draft (the accepted run plus one token fit max_tokens)
    assert drafter.propose(s.running, s.max_seq_len) == 1 and a.spec_token_ids == [4]
    a.spec_token_ids = []
    b = Request("b", [1, 1, 1], SamplingParams(max_tokens=10))
    s.add_request(b)
    so = s.schedule()
    s.update_from_output(so, ModelRunnerOutput({"a": [8], "b": [1]}))
    assert drafter.propose(s.running, s.max_seq_len) == 0     # 2 running > 1: off


def test_prometheus_spec_metrics():
    from vllm_core.engine.stats import IterationStats, SchedulerStats, SpecDecodingStats
    from vllm_core.entrypoints.openai.metrics import PrometheusStatLogger

    logger = PrometheusStatLogger()
    logger.bind("m", 128)
    logger.record(SchedulerStats(spec_decoding=SpecDecodingStats(2, 8, 6)), IterationStats())
    logger.record(SchedulerStats(spec_decoding=SpecDecodingStats(1, 4, 0)), IterationStats())
    text = logger.exposition().decode()
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("vllm:spec_decode")}
    assert values["vllm:spec_decode_num_drafts_total"] == 3
    assert values["vllm:spec_decode_num_draft_tokens_total"] == 12
    assert values["vllm:spec_decode_num_accepted_tokens_total"] == 6
    assert values["vllm:spec_decode_acceptance_rate"] == 0.5
    assert values["vllm:spec_decode_mean_accepted_length"] == 3.0
