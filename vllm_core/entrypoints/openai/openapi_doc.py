"""The OpenAPI document says what the server really does.

FastAPI documents a 422 ``HTTPValidationError`` for every route with a body, but this server
answers validation failures with a 400 in OpenAI's error shape (``errors.py``). ``install``
replaces the generated document's 422s with that 400, and every operation declares the
statuses the middleware may answer with: 401 (API key), 413 (body too large), 503 (draining).
``/health`` answers JSON, ``/metrics`` Prometheus text, ``/v1/models/{model}`` may be a 404.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from vllm_core.entrypoints.openai.protocol import ErrorResponse


class HealthStatus(BaseModel):
    status: Literal["ok", "unavailable"]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request (validation failed, bad parameter values, prompt too long)"),
    404: _error("The model does not exist"),
}
NOT_FOUND_RESPONSES: dict[int | str, dict[str, Any]] = {404: _error("The model does not exist")}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthStatus, "description": "Draining for shutdown, or the engine died"}}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition",
          "content": {"text/plain": {"schema": {"type": "string"}}}}}

# Statuses any operation may get from the middleware, whatever the route.
_MIDDLEWARE_STATUSES = {"401": "A valid API key is required (when the server has one)",
                        "413": "The request body is larger than --max-request-body-bytes",
                        "503": "The server is shutting down"}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
# One server-sent event: ``data`` a JSON chunk (or ``[DONE]``), ``event`` its type (responses).
SSE_EVENT = {"type": "object", "description": "one server-sent event of the stream",
             "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
             "required": ["data"]}
# Operations that answer server-sent events when the request says "stream": true.
STREAMING_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")


def _patch(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorResponse", ErrorResponse.model_json_schema(
        ref_template="#/components/schemas/{model}"))
    for key, sub in ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}").get("$defs", {}).items():
        components.setdefault(key, sub)
    components["ErrorResponse"].pop("$defs", None)
    error_content = {"application/json": {"schema": _ERROR_REF}}
    for path, operations in schema.get("paths", {}).items():
        for op in operations.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                del responses["422"]
                responses.setdefault("400", {"description": "Invalid request",
                                             "content": error_content})
            if path in STREAMING_PATHS and "200" in responses:
                responses["200"].setdefault("content", {})["text/event-stream"] = {
                    "schema": SSE_EVENT}
            if path in ("/health", "/metrics"):
                continue                     # open paths, never refused by the middleware
            for status, description in _MIDDLEWARE_STATUSES.items():
                responses.setdefault(status, {"description": description,
                                              "content": error_content})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: Any) -> None:
    """Make ``app.openapi()`` return the corrected document (built once, then cached)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _patch(original())
        return app.openapi_schema

    app.openapi = openapi
