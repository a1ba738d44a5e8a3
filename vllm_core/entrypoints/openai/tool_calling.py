"""Tool calling for chat requests: ``tools`` + ``tool_choice`` -> a plan for one request.

- ``none`` (or no tools): plain text (the tools are still rendered into the prompt).
- ``auto`` (the default when tools are given): the server's ``--tool-call-parser`` extracts
  calls from the text; requires ``--enable-auto-tool-choice`` (else 400).
- ``required``: the output is constrained by a JSON schema to a non-empty array of
  ``{"name": <one of the tools>, "parameters": <its schema>}`` (one element when
  ``parallel_tool_calls`` is false), so every call is valid JSON for its function.
- named (``{"type": "function", "function": {"name": ...}}``): the output is constrained to the
  function's ``parameters`` schema and becomes that call's arguments.

Every mode yields a ``ToolParser`` (or None for ``none``) so that streamed and non-streamed
answers are produced by the same code (``ToolCallStream``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_core.entrypoints.openai.errors import OpenAIServingError
from vllm_core.entrypoints.openai.tool_parsers.base import ScanResult, ToolParser
from vllm_core.entrypoints.openai.tool_parsers.json_scan import (
    PartialCall,
    scan_call_array,
    skip_ws,
)
from vllm_core.structured_output.params import StructuredOutputsParams


class RequiredToolParser(ToolParser):
    """Output of ``tool_choice="required"``: ``[{"name": ..., "parameters": {...}}, ...]``."""

    name = "required"

    def scan(self, text: str, final: bool) -> ScanResult:
        j = skip_ws(text, 0)
        if j >= len(text) or text[j] != "[":
            return ScanResult("" if not final else text)
        calls, _ = scan_call_array(text, j, args_keys=("parameters", "arguments"))
        return ScanResult("", calls)


class NamedToolParser(ToolParser):
    """Output of a named ``tool_choice``: the whole text is the arguments of ``function``."""

    name = "named"

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function

    def scan(self, text: str, final: bool) -> ScanResult:
        return ScanResult("", [PartialCall(self.function, text.strip() if final else
                                           text.lstrip(), final)])


@dataclass(slots=True)
class ToolPlan:
    mode: str                                    # none | auto | required | named
    parser: ToolParser | None = None
    structured: StructuredOutputsParams | None = None

    @property
    def calls_finish_reason(self) -> str:
        """finish_reason when calls were made and the model stopped by itself."""
        return "stop" if self.mode == "named" else "tool_calls"


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type", "function") != "function"
                or not isinstance(fn, dict) or not isinstance(fn.get("name"), str)):
            raise OpenAIServingError(f"tools[{i}] must be {{'type': 'function', 'function': "
                                     f"{{'name': ..., 'parameters': ...}}}}", 400, "tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise OpenAIServingError(f"tools[{i}].function.parameters must be a JSON schema "
                                     f"object", 400, "tools")
        out[fn["name"]] = params or {"type": "object", "properties": {}}
    return out


def required_schema(functions: dict[str, dict[str, Any]], parallel: bool) -> dict[str, Any]:
    items = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [name]}, "parameters": params},
              "required": ["name", "parameters"]}
             for name, params in functions.items()]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": items[0] if len(items) == 1 else {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def plan_tools(req: Any, auto_parser: type[ToolParser] | None, enable_auto: bool,
               tokenizer: Any) -> ToolPlan:
    """The plan for ``req`` (400 naming ``tools`` / ``tool_choice`` on bad input)."""
    tools = req.tools or []
    choice = req.tool_choice
    if not tools:
        if choice in (None, "none", "auto"):
            return ToolPlan("none")
        raise OpenAIServingError("tool_choice needs tools", 400, "tool_choice")
    functions = _functions(tools)
    if choice is None:                  # OpenAI's default with tools: the model may call one
        if not enable_auto or auto_parser is None:
            raise OpenAIServingError(
                'tools were given without tool_choice, which means "auto"; auto tool choice '
                'needs the server started with --enable-auto-tool-choice and '
                '--tool-call-parser. Send tool_choice "none" for plain text, "required" or a '
                'named function for a constrained call.', 400, "tools")
        choice = "auto"
    if choice == "none":
        return ToolPlan("none")
    if choice == "auto":
        if not enable_auto or auto_parser is None:
            raise OpenAIServingError('"auto" tool choice requires --enable-auto-tool-choice and '
                                     '--tool-call-parser to be set', 400, "tool_choice")
        return ToolPlan("auto", auto_parser(tokenizer))
    if choice == "required":
        schema = required_schema(functions, req.parallel_tool_calls is not False)
        return ToolPlan("required", RequiredToolParser(),
                        StructuredOutputsParams(json=schema))
    if isinstance(choice, dict) and choice.get("type", "function") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in functions:
            raise OpenAIServingError(f"tool_choice names function {name!r}, which is not in "
                                     f"tools", 400, "tool_choice")
        return ToolPlan("named", NamedToolParser(name),
                        StructuredOutputsParams(json=functions[name]))
    raise OpenAIServingError(f"tool_choice must be none, auto, required or a named function, "
                             f"got {choice!r}", 400, "tool_choice")
