"""Threading defaults for small CPU hosts: every vllm-core process gets a bounded OpenMP spin
(``GOMP_SPINCOUNT=5000``) before torch loads libgomp (unless the user set the wait policy or the
spin count), and the front end keeps one torch thread while the engine core computes in another
process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from vllm_core.engine.front_end_threads import FrontEndThreads
from vllm_core.envs import OPENMP_DEFAULTS, apply_openmp_defaults

PROBE = ("import os, sys; import vllm_core; print(os.environ.get('OMP_WAIT_POLICY'), "
         "os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
USER = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _probe(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def _clean() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in USER}


def test_import_bounds_the_spin_before_torch_loads():
    assert _probe(_clean()) == "None 5000 False"


def test_user_settings_are_kept():
    assert _probe({**_clean(), "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE None False"
    assert _probe({**_clean(), "OMP_WAIT_POLICY": "PASSIVE"}) == "PASSIVE None False"
    assert _probe({**_clean(), "GOMP_SPINCOUNT": "100"}) == "None 100 False"


def test_apply_reports_only_what_it_set(monkeypatch):
    for name in USER:
        monkeypatch.delenv(name, raising=False)
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
