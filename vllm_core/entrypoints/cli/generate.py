"""``vllm-core generate [--model M] PROMPT`` and ``vllm-core chat [--model M] [MESSAGE]``.

Both stream the answer to the terminal as it is generated (AsyncLLMEngine, delta outputs), or,
with ``--url`` (or ``OPENAI_BASE_URL``), from a running server (``remote.py``) without loading
the model. ``chat`` answers one message, or, with no message and a terminal on stdin, runs an
interactive loop that keeps the conversation (``exit``, ``quit`` or Ctrl-D to leave). A prompt
or message of ``-`` (or none, with stdin not a terminal) is read from stdin.

After each answer one line on stderr gives its ``finish_reason``; ``length`` says the answer was
cut at ``--max-tokens`` (default: the model's generation_config ``max_new_tokens``, else
``DEFAULT_MAX_TOKENS``).

Import-light: the engine (torch, transformers) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from vllm_core.sampling.params import DEFAULT_CHAT_MAX_TOKENS as DEFAULT_MAX_TOKENS


def _add_common(parser: argparse.ArgumentParser) -> None:
    from vllm_core.engine.arg_utils import EngineArgs

    parser.add_argument("--model", default=None,
                        help="model directory, .gguf file or Hub id (default: the embedded "
                             "model); with --url: the served model's name")
    parser.add_argument("--url", default=None,
                        help="use the OpenAI-compatible server at this base URL (e.g. "
                             "http://localhost:8000/v1; default: OPENAI_BASE_URL) instead of "
                             "loading the model")
    parser.add_argument("--api-key", default=None,
                        help="the server's API key (default: OPENAI_API_KEY)")
    s = parser.add_argument_group("sampling")
    s.add_argument("--max-tokens", type=int, default=None,
                   help=f"default: the model's max_new_tokens, else {DEFAULT_MAX_TOKENS}")
    s.add_argument("--temperature", type=float, default=None,
                   help="default: the model's generation_config, else 1.0")
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    s.add_argument("--ignore-eos", action="store_true")
    EngineArgs.add_cli_args(parser)


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser("generate", help="complete a prompt (streamed to the terminal)")
    gen.add_argument("prompt", nargs="?", default=None, help="the prompt ('-': read stdin)")
    _add_common(gen)
    gen.set_defaults(func=run_generate)

    chat = subparsers.add_parser("chat", help="chat with the model (one message or interactive)")
    chat.add_argument("message", nargs="?", default=None,
                      help="one message to answer ('-': read stdin); none: interactive loop")
    chat.add_argument("--system", default=None, help="a system prompt")
    _add_common(chat)
    chat.set_defaults(func=run_chat)


def _sampling_fields(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    max_tokens = args.max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    fields: dict[str, Any] = {"max_tokens": max_tokens, "ignore_eos": args.ignore_eos}
    for name in ("temperature", "top_p", "top_k", "stop"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    return fields


def _make_engine(args: argparse.Namespace) -> Any:
    from vllm_core.engine.arg_utils import EngineArgs
    from vllm_core.engine.async_llm_engine import AsyncLLMEngine

    engine_args = EngineArgs.from_cli_args(args).replace(model=args.model,
                                                          disable_log_stats=True)
    return AsyncLLMEngine.from_engine_args(engine_args)


def _remote(args: argparse.Namespace) -> Any:
    """A ``RemoteModel`` when --url / OPENAI_BASE_URL is given, else None."""
    from vllm_core import envs

    url = args.url or envs.openai_base_url()
    if not url:
        return None
    from vllm_core.entrypoints.cli.remote import RemoteModel

    return RemoteModel(url, args.api_key or envs.openai_api_key(), args.model)


def report_finish(finish_reason: str | None, max_tokens: int, err: TextIO) -> None:
    """One stderr line with the answer's finish_reason (a cut answer says so)."""
    if finish_reason == "length":
        err.write(f"[finish_reason: length - the answer was cut at {max_tokens} tokens; "
                  "raise --max-tokens for more]\n")
    else:
        err.write(f"[finish_reason: {finish_reason}]\n")
    err.flush()


async def stream_to(engine: Any, prompt: str | list[int], fields: dict[str, Any],
                    out: TextIO, request_id: str) -> tuple[str, str | None]:
    """Generate and write each new piece of text to ``out`` as it arrives; return the text and
    the finish_reason."""
    params = engine.make_sampling_params(**fields, output_kind="delta")
    pieces: list[str] = []
    finish: str | None = None
    async for res in engine.generate(prompt, params, request_id):
        for output in res.outputs:
            if output.text:
                out.write(output.text)
                out.flush()
                pieces.append(output.text)
            finish = output.finish_reason or finish
    out.write("\n")
    out.flush()
    return "".join(pieces), finish


def _read_text(value: str | None) -> str | None:
    if value == "-" or (value is None and not sys.stdin.isatty()):
        return sys.stdin.read().strip() or None
    return value


def run_generate(args: argparse.Namespace) -> int:
    import asyncio

    prompt = _read_text(args.prompt)
    if not prompt:
        raise ValueError("a prompt is required (as an argument, or '-' to read stdin)")
    remote = _remote(args)
    if remote is not None:
        fields = _sampling_fields(args, {})
        _, finish = remote.stream("completions", {"prompt": prompt, **fields}, sys.stdout)
        sys.stdout.write("\n")
        report_finish(finish, fields["max_tokens"], sys.stderr)
        return 0
    engine = _make_engine(args)
    fields = _sampling_fields(args, engine.generation_defaults)

    async def main() -> None:
        try:
            _, finish = await stream_to(engine, prompt, fields, sys.stdout, "generate-0")
            report_finish(finish, fields["max_tokens"], sys.stderr)
        finally:
            await engine.shutdown()

    asyncio.run(main())
    return 0


def run_chat(args: argparse.Namespace) -> int:
    import asyncio

    interactive = args.message is None and sys.stdin.isatty()
    first = None if interactive else _read_text(args.message)
    if not interactive and not first:
        raise ValueError("a message is required (as an argument, or '-' to read stdin)")
    remote = _remote(args)
    engine = _make_engine(args) if remote is None else None
    fields = _sampling_fields(args, engine.generation_defaults if engine is not None else {})
    conversation: list[dict[str, str]] = []
    if args.system:
        conversation.append({"role": "system", "content": args.system})

    async def answer(message: str, turn: int) -> None:
        conversation.append({"role": "user", "content": message})
        if remote is not None:
            reply, finish = await asyncio.to_thread(
                remote.stream, "chat/completions", {"messages": conversation, **fields},
                sys.stdout)
            sys.stdout.write("\n")
        else:
            text = engine.tokenizer.apply_chat_template(conversation, tokenize=False,
                                                        add_generation_prompt=True)
            ids = engine.tokenizer.encode(text, add_special_tokens=False)
            reply, finish = await stream_to(engine, ids, fields, sys.stdout, f"chat-{turn}")
        report_finish(finish, fields["max_tokens"], sys.stderr)
        conversation.append({"role": "assistant", "content": reply})

    async def main() -> None:
        try:
            if not interactive:
                await answer(first, 0)
                return
            turn = 0
            while True:
                try:
                    message = await asyncio.to_thread(input, "> ")
                except EOFError:
                    print()
                    return
                if message.strip() in ("exit", "quit"):
                    return
                if message.strip():
                    await answer(message, turn)
                    turn += 1
        finally:
            if engine is not None:
                await engine.shutdown()

    asyncio.run(main())
    return 0
