"""Tool-call parsers (``--tool-call-parser``): hermes, llama3_json, mistral, pythonic, and
whatever plugins register through the ``register_tool_parsers`` hook."""

from vllm_core.entrypoints.openai.tool_parsers.base import (
    ExtractedToolCalls,
    ToolCall,
    ToolCallDelta,
    ToolCallStream,
    ToolParser,
)
from vllm_core.entrypoints.openai.tool_parsers.registry import (
    register_tool_parser,
    resolve_tool_parser,
    tool_parser_names,
)

__all__ = ["ExtractedToolCalls", "ToolCall", "ToolCallDelta", "ToolCallStream", "ToolParser",
           "register_tool_parser", "resolve_tool_parser", "tool_parser_names"]
