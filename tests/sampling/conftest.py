"""Shared fixtures for sampler tests: build states / metadata on CPU with a fixed RNG."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from vllm_core.sampling.metadata import (
    RequestSamplingState,
    SamplingMetadata,
    build_sampling_metadata,
    make_generator,
)
from vllm_core.sampling.params import SamplingParams


def state(prompt: list[int] | None = None, output: list[int] | None = None,
          **kwargs: object) -> RequestSamplingState:
    """A RequestSamplingState from SamplingParams kwargs (seeded rows get a CPU generator)."""
    params = SamplingParams(**kwargs)
    return RequestSamplingState(params=params, prompt_token_ids=list(prompt or []),
                                output_token_ids=list(output or []),
                                generator=make_generator(params.seed, "cpu"))


@pytest.fixture
def make_state() -> Callable[..., RequestSamplingState]:
    return state


@pytest.fixture
def build() -> Callable[[list[RequestSamplingState], int], SamplingMetadata]:
    def _build(states: list[RequestSamplingState], vocab: int) -> SamplingMetadata:
        return build_sampling_metadata(states, vocab, torch.device("cpu"))
    return _build


@pytest.fixture(autouse=True)
def _fixed_global_rng() -> None:
    """Statistical tests use the global RNG: fix it so they are deterministic."""
    torch.manual_seed(1234)
