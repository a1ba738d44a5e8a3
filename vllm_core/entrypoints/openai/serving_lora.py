"""LoRA adapters in the server: ``--lora-modules``, ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` (behind the API key like every route but /health), and the
adapters' cards in ``/v1/models`` (``parent``: the base model). A request selects an adapter
with ``model=<adapter name>`` (``ServingContext.check_model`` / ``generate_kwargs``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from vllm_core.entrypoints.openai.errors import OpenAIServingError
from vllm_core.lora.request import LoRARequest


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


def parse_lora_modules(values: list[str] | None) -> list[LoRARequest]:
    """``name=path`` or JSON ``{"name": ..., "path": ...}`` items, ids 1, 2, ... in order
    (ValueError naming the bad item)."""
    requests: list[LoRARequest] = []
    for i, item in enumerate(values or [], start=1):
        if item.lstrip().startswith("{"):
            try:
                obj = json.loads(item)
                name, path = obj["name"], obj["path"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"--lora-modules {item!r}: expected name=path or "
                                 f'{{"name": ..., "path": ...}} ({e})') from None
        else:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--lora-modules {item!r}: expected name=path")
        requests.append(LoRARequest(str(name), i, str(path)))
    names = [r.lora_name for r in requests]
    if len(set(names)) != len(names):
        raise ValueError(f"--lora-modules names must be distinct, got {names}")
    return requests


def check_lora_args(args: Any) -> list[LoRARequest]:
    """The adapters to load at start-up (ValueError before the model loads when the flags
    disagree)."""
    modules = parse_lora_modules(getattr(args, "lora_modules", None))
    if modules and not getattr(args, "enable_lora", False):
        raise ValueError("--lora-modules needs --enable-lora")
    return modules


async def load_lora_modules(engine: Any, modules: list[LoRARequest]) -> None:
    for request in modules:
        await engine.add_lora(request)


def lora_cards(engine: Any, parent: str, card: Any) -> list[Any]:
    """``/v1/models`` cards of the loaded adapters (``card(name, parent, root)``)."""
    loras = getattr(engine, "loras", None)
    return [] if loras is None else [card(r.lora_name, parent, r.lora_path) for r in loras]


def install_lora_routes(app: Any, engine: Any, responses: dict) -> None:
    """POST /v1/load_lora_adapter and /v1/unload_lora_adapter (400 with the reason for an
    adapter that does not load; 404 for unloading an unknown name)."""
    responses = {200: {"description": "The adapter was loaded / unloaded",
                       "content": {"text/plain": {"schema": {"type": "string"}}}},
                 **responses}

    @app.post("/v1/load_lora_adapter", responses=responses)
    async def load_lora_adapter(request: LoadLoRAAdapterRequest) -> PlainTextResponse:
        loras = getattr(engine, "loras", None)
        if loras is None or not hasattr(engine, "add_lora"):
            raise OpenAIServingError("this server was not started with --enable-lora", 400,
                                     "lora_name")
        try:
            lora = LoRARequest(request.lora_name, loras.next_id(), request.lora_path)
            await engine.add_lora(lora)
        except ValueError as e:
            raise OpenAIServingError(str(e), 400, "lora_path") from e
        return PlainTextResponse(f"Success: LoRA adapter '{request.lora_name}' added "
                                 f"successfully.")

    @app.post("/v1/unload_lora_adapter", responses=responses)
    async def unload_lora_adapter(request: UnloadLoRAAdapterRequest) -> PlainTextResponse:
        loras = getattr(engine, "loras", None)
        if loras is None or loras.get(request.lora_name) is None:
            raise OpenAIServingError(f"The lora adapter '{request.lora_name}' cannot be "
                                     f"found.", 404, "lora_name")
        try:
            await engine.remove_lora(request.lora_name)
        except ValueError as e:
            raise OpenAIServingError(str(e), 400, "lora_name") from e
        return PlainTextResponse(f"Success: LoRA adapter '{request.lora_name}' removed "
                                 f"successfully.")
