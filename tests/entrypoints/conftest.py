"""Fixtures for the server tests.

``server`` (session scope) is parametrized: ``fake`` runs the real HTTP stack (uvicorn,
FastAPI, our handlers, the CLI's argument handling) over the fake engine in
``fake_engine.py`` (fast); ``real`` is ``python -m vllm_core.entrypoints.cli.main serve`` with
the real engine and the embedded default model. Both are started with an API key.
Modules that use ``server`` must sort before ``test_openai_server.py``, whose last test stops
the shared server with SIGTERM (hence the ``test_api_*`` names).
"""

from __future__ import annotations

import httpx
import openai
import pytest
from server_utils import ServerProcess, start_server


@pytest.fixture(scope="session", params=["fake", "real"])
def server(request, tmp_path_factory) -> ServerProcess:
    srv = start_server(request.param, tmp_path_factory.mktemp(f"srv-{request.param}"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory) -> ServerProcess:
    """A fake-engine server without an API key (benchmark and CLI tests)."""
    srv = start_server("fake", tmp_path_factory.mktemp("srv-fake-nokey"), api_key=None)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    """The real openai client on the module's ``server`` (fake or real engine)."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0,
                         timeout=120)


@pytest.fixture
def model(server: ServerProcess) -> str:
    return httpx.get(f"{server.url}/v1/models", headers=server.headers()).json()["data"][0]["id"]
