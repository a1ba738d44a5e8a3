"""Threading defaults for small CPU hosts: every vllm-core process gets
``OMP_WAIT_POLICY=PASSIVE`` before torch loads libgomp (unless the user set it), and the front
end keeps one torch thread while the engine core computes in another process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from vllm_core.engine.front_end_threads import FrontEndThreads
from vllm_core.envs import OPENMP_DEFAULTS, apply_openmp_defaults

PROBE = ("import os, sys; import vllm_core; "
         "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")


def _probe(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_import_sets_passive_wait_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _probe(env) == "PASSIVE False"


def test_user_setting_is_kept():
    assert _probe({**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE False"


def test_apply_reports_only_what_it_set(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert apply_openmp_defaults() == OPENMP_DEFAULTS
    assert apply_openmp_defaults() == {}


def test_front_end_threads_limit_and_restore():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        handle = FrontEndThreads.limit()
        assert torch.get_num_threads() == 1 and handle.previous == 2
        handle.restore()
        handle.restore()                      # idempotent
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
