"""The OpenAI-compatible HTTP server: ``build_app(engine, args)`` and ``run_server(args)``.

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, POST /tokenize,
POST /detokenize, GET /tokenizer_info, GET /health, GET /version, GET /metrics.

Middleware, outermost first: CORS (``--allowed-origins``), the API key (every path but
/health, and /metrics unless ``--enable-metrics-auth``), in-flight counting / drain (503 while
shutting down). The engine is stopped by the app's lifespan shutdown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from vllm_core.entrypoints.openai.auth import ApiKeyMiddleware
from vllm_core.entrypoints.openai.errors import (
    OpenAIServingError,
    exception_to_error,
    install_exception_handlers,
)
from vllm_core.entrypoints.openai.lifecycle import InflightMiddleware, ServerState
from vllm_core.entrypoints.openai.metrics import LoggingStatLogger, PrometheusStatLogger
from vllm_core.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from vllm_core.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm_core.entrypoints.openai.serving_common import ServingContext, read_template
from vllm_core.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm_core.entrypoints.openai.serving_tokenize import OpenAIServingTokenization
from vllm_core.logger import init_logger
from vllm_core.version import __version__

logger = init_logger(__name__)


def _opt(args: Any, name: str, default: Any = None) -> Any:
    value = getattr(args, name, default)
    return default if value is None else value


def served_model_names(engine: Any, args: Any) -> list[str]:
    """--served-model-name, else the model as the user named it, else the model file's name."""
    given = _opt(args, "served_model_name") or engine.config.model.served_model_name
    if given:
        return [given] if isinstance(given, str) else list(given)
    from vllm_core.entrypoints.openai.cli_args import resolve_model

    named = resolve_model(args)
    if named:
        return [named]
    path = str(engine.config.model.model).rstrip("/")
    base = os.path.basename(path)
    return [base[:-5] if base.endswith(".gguf") else base]


def resolve_api_key(args: Any) -> str | None:
    from vllm_core import envs

    return _opt(args, "api_key") or envs.api_key()


def _vocab_size(engine: Any) -> int:
    arch = getattr(engine.config.model, "arch", None)
    if arch is not None and getattr(arch, "vocab_size", None):
        return int(arch.vocab_size)
    return len(engine.tokenizer)


def parser_options(args: Any) -> dict[str, Any]:
    """ServingContext's tool / reasoning parser settings from the serve flags (ValueError
    naming the flag when a parser is unknown or auto tool choice lacks a parser)."""
    from vllm_core.entrypoints.openai.tool_parsers.registry import resolve_tool_parser
    from vllm_core.reasoning.registry import resolve_reasoning_parser

    tool_name = _opt(args, "tool_call_parser")
    auto = bool(_opt(args, "enable_auto_tool_choice", False))
    if auto and not tool_name:
        raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
    reasoning_name = _opt(args, "reasoning_parser")
    return {"tool_parser": resolve_tool_parser(tool_name) if tool_name else None,
            "enable_auto_tool_choice": auto,
            "reasoning_parser": (resolve_reasoning_parser(reasoning_name)
                                 if reasoning_name else None)}


def build_app(engine: Any, args: Any, prometheus: PrometheusStatLogger | None = None) -> Any:
    """A FastAPI app serving ``engine`` (an AsyncLLMEngine or anything with its API).

    ``args`` is the parsed ``serve`` namespace (missing attributes take their defaults).
    ``prometheus`` is the logger the engine feeds; a fresh, unfed one is made when None.
    """
    model_config = engine.config.model
    names = served_model_names(engine, args)
    max_model_len = int(model_config.max_model_len)
    ctx = ServingContext(
        engine=engine, served_model_names=names, max_model_len=max_model_len,
        vocab_size=_vocab_size(engine), max_logprobs=int(model_config.max_logprobs),
        chat_template=read_template(_opt(args, "chat_template")),
        model_root=str(model_config.model), **parser_options(args))
    prometheus = prometheus or PrometheusStatLogger()
    prometheus.bind(names[0], max_model_len)
    state = ServerState()
    completion = OpenAIServingCompletion(ctx)
    chat = OpenAIServingChat(ctx)
    tokenization = OpenAIServingTokenization(ctx)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await engine.shutdown()

    docs = not _opt(args, "disable_fastapi_docs", False)
    app = FastAPI(title="vllm-core OpenAI-compatible server", version=__version__,
                  lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.ctx = ctx
    app.state.server_state = state
    app.state.prometheus = prometheus
    install_exception_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        if state.draining or engine.errored or not engine.is_ready():
            return Response(status_code=503)
        try:
            await engine.check_health()
        except Exception:
            return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": __version__})

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        try:
            prometheus.set_gauges(engine.get_scheduler_stats())
        except Exception:  # a dead engine still lets /metrics answer
            logger.debug("could not read the engine's scheduler stats", exc_info=True)
        return Response(prometheus.exposition(), media_type=CONTENT_TYPE_LATEST)

    def model_card(name: str) -> ModelCard:
        return ModelCard(id=name, root=ctx.model_root, max_model_len=max_model_len)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse(ModelList(data=[model_card(n) for n in names]).model_dump())

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> JSONResponse:
        ctx.check_model(model)
        return JSONResponse(model_card(model).model_dump())

    @app.post("/v1/completions")
    async def create_completion(request: CompletionRequest, raw_request: Request):
        _warn_ignored(request)
        return await _guard(completion.create(request, raw_request))

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request):
        _warn_ignored(request)
        return await _guard(chat.create(request, raw_request))

    @app.post("/tokenize")
    async def tokenize(request: TokenizeCompletionRequest | TokenizeChatRequest):
        return JSONResponse(tokenization.tokenize(request).model_dump())

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest):
        return JSONResponse(tokenization.detokenize(request).model_dump())

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return JSONResponse(tokenization.tokenizer_info())

    # add_middleware puts each new one outside the previous: inflight is innermost.
    app.add_middleware(InflightMiddleware, state=state)
    api_key = resolve_api_key(args)
    if api_key:
        open_paths = {"/health"}
        if not _opt(args, "enable_metrics_auth", False):
            open_paths.add("/metrics")
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, open_paths=open_paths)
    app.add_middleware(CORSMiddleware, allow_origins=_opt(args, "allowed_origins", ["*"]),
                       allow_credentials=_opt(args, "allow_credentials", False),
                       allow_methods=_opt(args, "allowed_methods", ["*"]),
                       allow_headers=_opt(args, "allowed_headers", ["*"]))
    return app


async def _guard(coro: Any) -> Any:
    """Await a handler; any exception becomes an OpenAI-shaped error (400 for ValueError,
    500 otherwise) answered by the exception handlers instead of escaping to the server."""
    try:
        return await coro
    except OpenAIServingError:
        raise
    except Exception as e:
        raise exception_to_error(e) from e


def _warn_ignored(request: Any) -> None:
    ignored = request.ignored_fields()
    if ignored:
        logger.warning("The following fields were present in the request but ignored: %s",
                       ignored)


def engine_args_from(args: argparse.Namespace) -> Any:
    from vllm_core.engine.arg_utils import EngineArgs
    from vllm_core.entrypoints.openai.cli_args import resolve_model

    engine_args = EngineArgs.from_cli_args(args)
    return engine_args.replace(model=resolve_model(args))


def run_server(args: argparse.Namespace, engine_factory: Any = None) -> int:
    """Load the engine, serve until SIGTERM / SIGINT, stop the engine. Blocks.

    ``engine_factory(engine_args, stat_loggers=...)`` defaults to
    ``AsyncLLMEngine.from_engine_args`` (tests pass a fake engine's).
    """
    import uvicorn

    from vllm_core.entrypoints.openai.lifecycle import make_server

    if engine_factory is None:
        from vllm_core.engine.async_llm_engine import AsyncLLMEngine

        engine_factory = AsyncLLMEngine.from_engine_args
    prometheus = PrometheusStatLogger()
    loggers: list[Any] = [prometheus]
    if not _opt(args, "disable_log_stats", False):
        loggers.append(LoggingStatLogger(interval=_opt(args, "log_stats_interval", 5.0)))
    engine = engine_factory(engine_args_from(args), stat_loggers=loggers)
    try:
        app = build_app(engine, args, prometheus)
    except BaseException:
        _shutdown_sync(engine)
        raise
    host = args.host if args.host is not None else "0.0.0.0"
    config = uvicorn.Config(app, host=host, port=args.port, log_level=args.uvicorn_log_level,
                            access_log=not args.disable_uvicorn_access_log,
                            timeout_graceful_shutdown=2, timeout_keep_alive=5)
    server = make_server(config, app.state.server_state, args.shutdown_timeout)
    logger.info("serving %s on http://%s:%d", app.state.ctx.model_name, host, args.port)
    server.run()
    return 0


def _shutdown_sync(engine: Any) -> None:
    import asyncio

    with contextlib.suppress(Exception):
        asyncio.run(engine.shutdown())
