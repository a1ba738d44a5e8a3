"""Fixtures of the distributed tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("dist_models"))
