"""Schemathesis against our own OpenAPI document (in process, over the fake engine): generated
requests for every operation, bounded in number; no 5xx, every status, content type and body as
the document declares."""

from __future__ import annotations

import types
from collections import Counter

import schemathesis
from fake_engine import FakeAsyncEngine
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from vllm_core.entrypoints.openai.api_server import build_app

ENGINE = FakeAsyncEngine(max_model_len=128, step_delay=0.0)
APP = build_app(ENGINE, types.SimpleNamespace())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance]


STATUSES: Counter[int] = Counter()


def teardown_module() -> None:
    """The counts for the record (``pytest -s`` shows them)."""
    print(f"\nschemathesis: {sum(STATUSES.values())} generated requests, statuses "
          f"{dict(sorted(STATUSES.items()))}")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case):
    # Each in-process call runs the app's lifespan, whose shutdown stops the engine; a served
    # engine is running, so start every call from that state (else /health is rightly 503).
    ENGINE._shutdown = False
    response = case.call_and_validate(checks=CHECKS)
    STATUSES[response.status_code] += 1
