"""The OpenAI-compatible HTTP server: ``build_app(engine, args)`` and ``run_server(args)``.

Endpoints: POST /v1/completions, POST /v1/chat/completions, POST /v1/responses,
POST /v1/embeddings, GET /v1/models, POST /tokenize,
POST /detokenize, GET /tokenizer_info, GET /health, GET /version, GET /metrics.

Middleware, outermost first: CORS (``--allowed-origins``), the body size limit (413,
``limits.py``), the API key (every path but /health, and /metrics unless
``--enable-metrics-auth``), in-flight counting / drain (503 while shutting down; the drain
deadline answers what is left, ``lifecycle.py``). Generation requests then pass ``admit``:
content checks (``limits.check_request``) and the silent-no-op refusals
(``unsupported.reject_silent_no_ops``). The engine is stopped by the app's lifespan shutdown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from vllm_core.entrypoints.openai import openapi_doc
from vllm_core.entrypoints.openai.auth import ApiKeyMiddleware
from vllm_core.entrypoints.openai.errors import (
    OpenAIServingError,
    exception_to_error,
    install_exception_handlers,
)
from vllm_core.entrypoints.openai.lifecycle import InflightMiddleware, ServerState
from vllm_core.entrypoints.openai.limits import (
    BodySizeLimitMiddleware,
    ServerLimits,
    check_request,
)
from vllm_core.entrypoints.openai.metrics import LoggingStatLogger, PrometheusStatLogger
from vllm_core.entrypoints.openai.openapi_doc import (
    ERROR_RESPONSES,
    HEALTH_RESPONSES,
    METRICS_RESPONSES,
    NOT_FOUND_RESPONSES,
    HealthStatus,
)
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
from vllm_core.entrypoints.openai.serving_common import (
    ServingContext,
    multimodal_options,
    read_template,
)
from vllm_core.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm_core.entrypoints.openai.serving_embedding import (
    EmbeddingRequest,
    OpenAIServingEmbedding,
)
from vllm_core.entrypoints.openai.serving_lora import (
    check_lora_args,
    install_lora_routes,
    load_lora_modules,
    lora_cards,
)
from vllm_core.entrypoints.openai.serving_responses import (
    OpenAIServingResponses,
    ResponsesRequest,
)
from vllm_core.entrypoints.openai.serving_tokenize import OpenAIServingTokenization
from vllm_core.entrypoints.openai.unsupported import reject_silent_no_ops
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
        model_root=str(model_config.model), **parser_options(args),
        **multimodal_options(engine.config))
    limits = ServerLimits.from_args(args)
    policy = str(getattr(getattr(engine.config, "scheduler", None), "policy", "fcfs"))

    def admit(request: Any) -> None:
        """Checks every generation request passes before any work (400 / 413 otherwise)."""
        check_request(request, limits)
        reject_silent_no_ops(request, policy)
        _warn_ignored(request)

    prometheus = prometheus or PrometheusStatLogger()
    prometheus.bind(names[0], max_model_len)
    state = ServerState()
    completion = OpenAIServingCompletion(ctx)
    chat = OpenAIServingChat(ctx)
    tokenization = OpenAIServingTokenization(ctx)
    responses = OpenAIServingResponses(ctx)
    embedding = OpenAIServingEmbedding(ctx)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await engine.shutdown()

    docs = not _opt(args, "disable_fastapi_docs", False)
    # --root-path: a proxy strips this prefix before forwarding; the documents name it.
    root_path = (_opt(args, "root_path", "") or "").rstrip("/")
    app = FastAPI(title="vllm-core OpenAI-compatible server", version=__version__,
                  lifespan=lifespan, docs_url="/docs" if docs else None,
                  servers=[{"url": root_path}] if root_path else None,
                  root_path_in_servers=False,
                  redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.ctx = ctx
    app.state.server_state = state
    app.state.prometheus = prometheus
    install_exception_handlers(app)
    openapi_doc.install(app)

    @app.get("/health", response_model=HealthStatus, responses=HEALTH_RESPONSES)
    async def health() -> JSONResponse:
        """200 ``{"status": "ok"}`` when the engine can serve; 503 while draining or dead."""
        unhealthy = JSONResponse({"status": "unavailable"}, status_code=503)
        if state.draining or engine.errored or not engine.is_ready():
            return unhealthy
        try:
            await engine.check_health()
        except Exception:
            return unhealthy
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": __version__})

    @app.get("/metrics", response_class=Response, responses=METRICS_RESPONSES)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        try:
            prometheus.set_gauges(engine.get_scheduler_stats())
        except Exception:  # a dead engine still lets /metrics answer
            logger.debug("could not read the engine's scheduler stats", exc_info=True)
        return Response(prometheus.exposition(), media_type=CONTENT_TYPE_LATEST)

    def model_card(name: str, parent: str | None = None, root: str | None = None) -> ModelCard:
        return ModelCard(id=name, root=root or ctx.model_root, parent=parent,
                         max_model_len=max_model_len)

    def all_cards() -> list[ModelCard]:
        return [model_card(n) for n in names] + lora_cards(engine, names[0], model_card)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse(ModelList(data=all_cards()).model_dump())

    @app.get("/v1/models/{model:path}", responses=NOT_FOUND_RESPONSES)
    async def get_model(model: str) -> JSONResponse:
        ctx.check_model(model)
        card = next(c for c in all_cards() if c.id == model)
        return JSONResponse(card.model_dump())

    install_lora_routes(app, engine, ERROR_RESPONSES)

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def create_completion(request: CompletionRequest, raw_request: Request):
        admit(request)
        return await _guard(completion.create(request, raw_request))

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request):
        admit(request)
        return await _guard(chat.create(request, raw_request))

    @app.post("/v1/responses", responses=ERROR_RESPONSES)
    async def create_response(request: ResponsesRequest, raw_request: Request):
        check_request(request, limits)
        _warn_ignored(request)
        return await _guard(responses.create(request, raw_request))

    @app.post("/v1/embeddings", responses=ERROR_RESPONSES)
    async def create_embedding(request: EmbeddingRequest):
        check_request(request, limits)
        _warn_ignored(request)
        return JSONResponse(await _guard(embedding.create(request)))

    @app.post("/tokenize", responses=ERROR_RESPONSES)
    async def tokenize(request: TokenizeCompletionRequest | TokenizeChatRequest):
        check_request(request, limits)
        return JSONResponse((await _guard(tokenization.tokenize(request))).model_dump())

    @app.post("/detokenize", responses=ERROR_RESPONSES)
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
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=limits.max_request_body_bytes)
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


def bind_socket(host: str, port: int) -> Any:
    """Bind (not yet listen on) ``host:port`` before the model loads, so a port in use is
    reported at once, not after the whole load. ``RuntimeError`` says which address and why."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another "
                           f"server running there? pick another --port)") from e
    sock.set_inheritable(True)
    return sock


def run_server(args: argparse.Namespace, engine_factory: Any = None) -> int:
    """Check the flags, bind the port, load the engine, serve until SIGTERM / SIGINT, stop the
    engine. Blocks. Returns the exit status: 0 after a clean shutdown, 1 when the engine died.

    ``engine_factory(engine_args, stat_loggers=...)`` defaults to
    ``AsyncLLMEngine.from_engine_args`` (tests pass a fake engine's). ``--api-server-count``
    above 1 hands over to ``vllm_core.entrypoints.openai.multi_server``.
    """
    from vllm_core.entrypoints.openai.vllm_compat_args import check_vllm_compat_args

    check_vllm_compat_args(args)
    check_lora_args(args)                            # bad --lora-modules fail early
    ServerLimits.from_args(args)                     # bad limits fail before the load
    parser_options(args)                             # so do unknown parser names
    count = int(_opt(args, "api_server_count", 1))
    if count < 1:
        raise ValueError(f"--api-server-count must be >= 1, got {count}")
    host = args.host if args.host is not None else "0.0.0.0"
    if int(_opt(args, "data_parallel_size", 1)) > 1 and \
            _opt(args, "engine_core_process") is False:
        raise ValueError("--data-parallel-size > 1 runs every engine core in its own process; "
                         "drop --no-engine-core-process")
    if count > 1:
        if engine_factory is not None or _opt(args, "engine_core_process") is False:
            raise ValueError("--api-server-count > 1 needs the engine core in its own process "
                             "(drop --no-engine-core-process)")
        from vllm_core.entrypoints.openai.multi_server import run_multi_server

        return run_multi_server(args, host, count)
    sock = bind_socket(host, args.port)
    try:
        if engine_factory is None:
            from vllm_core.engine.async_llm_engine import AsyncLLMEngine

            def engine_factory(engine_args: Any, stat_loggers: Any = None) -> Any:
                return AsyncLLMEngine.from_engine_args(
                    engine_args, stat_loggers,
                    engine_core_process=_opt(args, "engine_core_process"))
        prometheus = PrometheusStatLogger()
        loggers = stat_loggers_for(args, prometheus)
        engine = engine_factory(engine_args_from(args), stat_loggers=loggers)
        return serve_engine(engine, args, sock, host, prometheus)
    finally:
        sock.close()


def stat_loggers_for(args: Any, prometheus: PrometheusStatLogger) -> list[Any]:
    """The engine's stat loggers: Prometheus, plus the periodic log line unless disabled."""
    loggers: list[Any] = [prometheus]
    if not _opt(args, "disable_log_stats", False):
        loggers.append(LoggingStatLogger(interval=_opt(args, "log_stats_interval", 5.0)))
    return loggers


def serve_engine(engine: Any, args: Any, sock: Any, host: str,
                 prometheus: PrometheusStatLogger) -> int:
    """Serve ``engine`` on the bound socket ``sock`` until shut down; the exit status (1 when
    the engine died: the server then stops by itself, see ``lifecycle.make_server``)."""
    import uvicorn

    from vllm_core.entrypoints.openai.lifecycle import make_server

    try:
        lora_modules = check_lora_args(args)
        if lora_modules:
            import asyncio

            asyncio.run(load_lora_modules(engine, lora_modules))
        app = build_app(engine, args, prometheus)
    except BaseException:
        _shutdown_sync(engine)
        raise
    config = uvicorn.Config(app, host=host, port=args.port,
                            log_level=args.uvicorn_log_level,
                            access_log=not args.disable_uvicorn_access_log,
                            timeout_graceful_shutdown=2, timeout_keep_alive=5)
    server = make_server(config, app.state.server_state, args.shutdown_timeout, engine)
    logger.info("serving %s on http://%s:%d", app.state.ctx.model_name, host, args.port)
    server.run(sockets=[sock])
    return server.exit_code


def _shutdown_sync(engine: Any) -> None:
    import asyncio

    with contextlib.suppress(Exception):
        asyncio.run(engine.shutdown())
