"""Docs checks run by ``nox -s docs``: every relative Markdown link under docs/ and in the
README resolves (file, and heading anchor when one is given), and every ``vllm-core``
subcommand answers ``--help`` with exit status 0. Exit status 1 lists every failure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def check_links() -> list[str]:
    files = sorted((ROOT / "docs").rglob("*.md")) + [p for p in [ROOT / "README.md"]
                                                     if p.exists()]
    files += sorted((ROOT / "plugins").glob("*/README.md"))
    problems = []
    for md in files:
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / path_part).resolve() if path_part else md
            where = f"{md.relative_to(ROOT)}: link {target!r}"
            if not dest.exists():
                problems.append(f"{where}: {path_part} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    print(f"checked links in {len(files)} Markdown files")
    return problems


def check_cli_help() -> list[str]:
    from vllm_core.entrypoints.cli.main import build_parser

    parser = build_parser()
    commands = sorted(next(a for a in parser._actions if a.dest == "command").choices)
    problems = []
    for argv in [["--help"]] + [[c, "--help"] for c in commands]:
        proc = subprocess.run([sys.executable, "-m", "vllm_core.entrypoints.cli.main", *argv],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        if proc.returncode != 0 or "usage:" not in proc.stdout:
            problems.append(f"vllm-core {' '.join(argv)} failed ({proc.returncode}): "
                            f"{proc.stderr.strip()[-500:]}")
    print(f"checked --help of vllm-core and {len(commands)} subcommands: {', '.join(commands)}")
    return problems


def main() -> int:
    problems = check_links() + check_cli_help()
    for p in problems:
        print(f"FAIL {p}")
    print("docs: OK" if not problems else f"docs: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
