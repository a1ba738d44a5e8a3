"""Make the benchmark scripts (plain files, not a package) importable by their tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
