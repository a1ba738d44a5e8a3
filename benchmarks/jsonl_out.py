"""The one way benchmarks print a result: a JSON line on stdout, appended to a file if one is
given (scripts in this folder import it as ``jsonl_out``: they run with the folder on
``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(record: dict[str, Any], out: str | Path | None) -> None:
    """Print ``record`` as one JSON line (flushed) and append it to ``out`` when given."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
