"""The CPU's name and the ISA flags that decide our CPU kernels, for benchmark JSON lines (every
CPU figure names its CPU and ISA)."""

from __future__ import annotations

import os
from typing import Any


def cpu_facts() -> dict[str, Any]:
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
           if f in flags]
    return {"cpu": name, "isa": isa, "cores": os.cpu_count()}
