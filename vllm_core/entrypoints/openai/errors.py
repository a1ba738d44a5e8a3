"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Invariants (clients and the tests depend on them):
- a request body that fails validation is a 400 ``BadRequestError`` (never FastAPI's 422),
  with the offending field path in ``param``;
- a ``ValueError`` raised while preparing or running a request (SamplingParams validation,
  prompt too long, ...) is a 400 whose ``param`` names the field when the message starts with
  one (SamplingParams messages do: ``"temperature must be non-negative, got -1"``);
- the engine having stopped (``EngineDeadError``: a worker died, a step failed) is a 503
  ``ServiceUnavailableError`` naming the cause (the server then exits non-zero);
- anything else is a 500 ``InternalServerError``; bad input never produces a 500;
- an error after an SSE stream has started is sent as ``data: {"error": {...}}`` followed by
  ``data: [DONE]`` (see ``sse_error``).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from vllm_core.logger import init_logger

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = init_logger(__name__)

_TYPE_BY_STATUS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_type_for(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    try:
        return HTTPStatus(status).phrase.replace(" ", "") + "Error"
    except ValueError:
        return "Error"


class OpenAIServingError(Exception):
    """An error with an HTTP status, answered in OpenAI's shape."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 err_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.err_type = err_type or error_type_for(status)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status, self.param, self.err_type)


def error_body(message: str, status: int = 400, param: str | None = None,
               err_type: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type or error_type_for(status),
                      "param": param, "code": status}}


def error_response(message: str, status: int = 400, param: str | None = None,
                   err_type: str | None = None, headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, status, param, err_type), status_code=status,
                        headers=headers)


def param_from_message(message: str, fields: set[str] | None = None) -> str | None:
    """The request field a validation message starts with (``"top_p must be ..."``), if any."""
    head = message.split(" ", 1)[0].strip(":,'\"`")
    if not head or not head.replace("_", "").isalnum():
        return None
    if fields is not None and head not in fields:
        return None
    return head


def from_value_error(exc: ValueError, fields: set[str] | None = None) -> OpenAIServingError:
    message = str(exc) or exc.__class__.__name__
    return OpenAIServingError(message, 400, param_from_message(message, fields))


def sse_error(err: OpenAIServingError) -> str:
    """The SSE events that end a stream after an error: the error, then ``[DONE]``."""
    return f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n"


def exception_to_error(exc: BaseException, fields: set[str] | None = None) -> OpenAIServingError:
    """Map any exception raised while serving a request to the error the client sees."""
    if isinstance(exc, OpenAIServingError):
        return exc
    if isinstance(exc, ValueError):
        return from_value_error(exc, fields)
    if _is_engine_dead(exc):
        return OpenAIServingError(f"Service unavailable: {exc}", 503)
    logger.exception("internal error while serving a request", exc_info=exc)
    return OpenAIServingError(f"Internal server error: {exc.__class__.__name__}: {exc}", 500)


def _is_engine_dead(exc: BaseException) -> bool:
    """The engine stopped (a worker died, a step failed): the server answers 503 and exits."""
    from vllm_core.engine.errors import EngineDeadError

    return isinstance(exc, EngineDeadError)


MAX_ECHO_CHARS = 120


def short_repr(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (the full size noted), so that an error
    message never echoes a huge request field back in full. Cost is bounded by ``limit``."""
    size = len(value) if isinstance(value, (str, bytes, list, dict, tuple)) else None
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > limit:
        value = value[:limit]
    elif isinstance(value, dict) and len(value) > limit:
        value = dict(list(value.items())[:limit])
    text = repr(value)
    if len(text) <= limit and (size is None or size <= limit):
        return text
    unit = "characters" if isinstance(value, str) else "items"
    return f"{text[:limit]}... ({size} {unit})" if size is not None else f"{text[:limit]}..."


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    parts: list[str] = []
    param: str | None = None
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # pydantic unions add the branch type to the location ("prompt.str"); keep field names.
        loc = [x for x in loc if not x.startswith(("list[", "dict[")) and "-" not in x
               and not x[:1].isupper()  # union branch tags: "str", "TokenizeChatRequest"
               and x not in ("str", "int", "float", "bool")]
        if err.get("type") == "json_invalid":
            parts.append(f"Invalid JSON body: {err.get('msg')}")
            continue
        where = ".".join(loc) if loc else "body"
        if param is None and loc:
            param = where
        parts.append(f"{where}: {err.get('msg')} (got {short_repr(err.get('input'))})"
                     if "input" in err and err.get("type") != "missing"
                     else f"{where}: {err.get('msg')}")
    count = len(errors)
    head = f"{count} validation error{'s' if count != 1 else ''}"
    return f"{head}: " + "; ".join(parts), param


def install_exception_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape; validation failures are 400, not 422."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, exc: RequestValidationError):
        message, param = _validation_message(list(exc.errors()))
        return error_response(message, 400, param)

    @app.exception_handler(OpenAIServingError)
    async def _serving(_request, exc: OpenAIServingError):
        return error_response(exc.message, exc.status, exc.param, exc.err_type)

    @app.exception_handler(ValueError)
    async def _value(_request, exc: ValueError):
        err = from_value_error(exc)
        return error_response(err.message, err.status, err.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        return error_response(str(exc.detail), exc.status_code,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_request, exc: Exception):
        err = exception_to_error(exc)
        return error_response(err.message, err.status, err.param, err.err_type)
