"""The core is hardware-agnostic: no vendor library, no ``torch.cuda`` / ``torch.xpu`` call and
no device-type test (``device.type == "cuda"``, ``x in ("cpu", "xla")``) anywhere under
``vllm_core/`` (they belong in the platform plugins; the core asks the platform or the runner's
hooks). Checked on the syntax tree, so docstrings and comments may still mention them."""

from __future__ import annotations

import ast
from pathlib import Path

import vllm_core

CORE = Path(vllm_core.__file__).resolve().parent
VENDOR_MODULES = {"torch_xla", "libtpu", "intel_extension_for_pytorch", "amdsmi", "pynvml",
                  "pyrsmi", "torch_npu", "habana_frameworks", "flash_attn", "flashinfer"}
TORCH_DEVICE_NAMESPACES = {"cuda", "xpu", "mps", "npu"}
DEVICE_TYPES = {"cuda", "cpu", "xpu", "xla", "tpu", "hpu", "npu", "mps", "rocm", "hip"}


def _names_a_device(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.lower() in DEVICE_TYPES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_device(e) for e in node.elts)
    return False


def _is_device_type(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in ("type", "device_type")


def violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            names = []
        for name in names:
            parts = name.split(".")
            if parts[0] in VENDOR_MODULES or (parts[0] == "torch" and len(parts) > 1
                                              and parts[1] in TORCH_DEVICE_NAMESPACES):
                found.append(f"line {node.lineno}: import {name}")
                break
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "torch" and node.attr in TORCH_DEVICE_NAMESPACES):
            found.append(f"line {node.lineno}: torch.{node.attr}")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_names_a_device(x) for x in sides) or (
                    any(_is_device_type(x) for x in sides)
                    and any(isinstance(x, ast.Constant) for x in sides)):
                found.append(f"line {node.lineno}: device-type comparison")
    return found


def test_scanner_catches_what_it_should():
    bad = ("import pynvml\nfrom torch_xla.core import xla_model\nimport torch\n"
           "torch.cuda.synchronize()\nfrom torch import cuda\nx = torch.xpu.device_count()\n"
           "a = x.device.type == 'cuda'\nb = dev.type != \"cpu\"\nc = t in ('xla', 'tpu')\n"
           "d = platform.device_type == kind\n")
    assert len(violations(bad)) == 8
    ok = '"""torch.cuda is mentioned here only."""\nimport torch\ntorch.version.cuda\n'
    assert violations(ok) == []


def test_core_never_imports_vendor_libraries():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 20
    problems = {str(p.relative_to(CORE.parent)): v for p in files
                if (v := violations(p.read_text(encoding="utf-8")))}
    assert problems == {}, ("vendor-specific code in the core; move it into a platform plugin "
                            f"(vllm_core_<platform>) and reach it through the Platform: {problems}")
