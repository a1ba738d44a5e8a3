"""Issue 13 engine-side fixes: fair share of the batch across n > 1 requests, the prefix-cache
hit count surviving to the final output, generation_config handling, finite sampling floats."""

from __future__ import annotations

import json
import math

import pytest
from test_scheduler import make_scheduler, req

from vllm_core.engine.output_processor import OutputProcessor
from vllm_core.messages import EngineCoreOutput
from vllm_core.model_executor.loader import generation_defaults_for
from vllm_core.sampling.params import SamplingParams


def test_one_big_n_request_cannot_starve_the_next():
    """8 children of one request arrive before a plain request; with 4 seats the plain request
    gets a seat in the very first step (fair share 4 // 2 groups = 2 seats per group)."""
    sched = make_scheduler(max_num_seqs=4, caching=False)
    for i in range(8):
        sched.add_request(req(f"{i}_big", 4, arrival=0.0, parent_id="big"))
    sched.add_request(req("small", 4, arrival=1.0))
    out = sched.schedule()
    admitted = [r.req_id for r in out.scheduled_new_reqs]
    assert "small" in admitted
    assert len(admitted) == 4                       # no seat left empty
    assert sum(a.endswith("_big") for a in admitted) == 3


def test_fair_share_leaves_no_seat_empty_when_alone():
    sched = make_scheduler(max_num_seqs=4, caching=False)
    for i in range(8):
        sched.add_request(req(f"{i}_big", 4, parent_id="big"))
    assert len(sched.schedule().scheduled_new_reqs) == 4


def test_num_cached_tokens_survives_later_outputs():
    """The scheduler reports prefix hits in the first output only; the final RequestOutput must
    still carry them."""
    class Tok:
        eos_token_id = None

        def decode(self, ids, **_):
            return "".join(chr(97 + i % 26) for i in ids)

        def convert_ids_to_tokens(self, ids, **_):
            return [chr(97 + i % 26) for i in ids]

    proc = OutputProcessor(Tok())
    proc.add_request("r", None, list(range(40)), SamplingParams(max_tokens=3, detokenize=False),
                     arrival_time=0.0)
    outs = []
    for i, finish in enumerate([None, None, "length"]):
        eco = EngineCoreOutput("r", [i + 1], finish_reason=finish,
                               num_cached_tokens=32 if i == 0 else 0)
        outs += proc.process_outputs([eco], now=float(i)).request_outputs
    assert outs[-1].finished
    assert outs[-1].num_cached_tokens == 32


def test_generation_config_folder_with_only_the_json(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.3, "max_new_tokens": 77}))
    defaults = generation_defaults_for(str(model), str(gen))
    assert defaults == {"temperature": 0.3, "max_tokens": 77, "eos_token_id": [2]}
    params = SamplingParams()
    params.update_from_generation_config(defaults, set())
    assert params.max_tokens == 77                  # max_new_tokens is the default max_tokens
    with pytest.raises(FileNotFoundError, match="generation_config.json"):
        generation_defaults_for(str(model), str(tmp_path / "nowhere"))


def test_generation_config_vllm_keeps_extra_eos_ids(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [2, 7], "temperature": 0.5}))
    assert generation_defaults_for(str(tmp_path), "vllm") == {"eos_token_id": [2, 7]}
    auto = generation_defaults_for(str(tmp_path), "auto")
    assert auto == {"eos_token_id": [2, 7], "temperature": 0.5}


@pytest.mark.parametrize("name", ["temperature", "top_p", "min_p", "repetition_penalty",
                                  "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_sampling_floats_must_be_finite(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        SamplingParams(**{name: value})
