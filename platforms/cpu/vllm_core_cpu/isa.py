"""What the CPU can do: architecture and instruction-set extensions.

The probes (``read_cpuinfo``, ``machine``) are tiny functions touching the system and nothing
else; ``detect_isa`` parses their output, so tests fake the probes' text and check the parsing.

Reported features (names used in ``CpuIsa.features``):
  x86-64:  AVX2, AVX512 (avx512f), AVX512_VNNI, AVX512_BF16, AMX (amx_bf16)
  Arm:     NEON (asimd / neon), SVE, SVE2, BF16
  POWER:   POWER<n> (the generation), VSX (POWER7 and later), MMA (POWER10 and later)
"""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo ("" where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def machine() -> str:
    """``platform.machine()``: "x86_64", "aarch64", "arm64", "ppc64le", ..."""
    return _platform.machine()


@dataclass(frozen=True, slots=True)
class CpuIsa:
    arch: str                       # "x86_64", "aarch64", "ppc64le", or the raw machine name
    features: tuple[str, ...]       # see the module docstring
    model_name: str = ""

    @property
    def has_native_bf16(self) -> bool:
        """bf16 arithmetic in hardware: AVX512_BF16 or AMX on x86, BF16 on Arm."""
        if self.arch == "x86_64":
            return "AVX512_BF16" in self.features or "AMX" in self.features
        if self.arch == "aarch64":
            return "BF16" in self.features
        return False

    @property
    def summary(self) -> str:
        """``"x86_64 AVX2 AVX512 AVX512_BF16 AMX"`` (the ISA line of ``vllm-core platforms``)."""
        return " ".join((self.arch, *self.features)) if self.features else self.arch


_X86_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX512"), ("avx512_vnni", "AVX512_VNNI"),
              ("avx512_bf16", "AVX512_BF16"), ("amx_bf16", "AMX"))
_ARM_FLAGS = (("asimd", "NEON"), ("neon", "NEON"), ("sve", "SVE"), ("sve2", "SVE2"),
              ("bf16", "BF16"))


def _field(cpuinfo: str, *keys: str) -> str:
    """Value of the first ``key : value`` line whose key is one of ``keys``."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys:
            return value.strip()
    return ""


def normalise_arch(raw: str) -> str:
    m = raw.lower()
    if m in ("x86_64", "amd64", "x64", "i386", "i686"):
        return "x86_64"
    if m in ("aarch64", "arm64"):
        return "aarch64"
    if m.startswith("ppc64"):
        return "ppc64le" if m == "ppc64le" else m
    return m or "unknown"


def detect_isa(cpuinfo: str | None = None, machine_name: str | None = None) -> CpuIsa:
    """Parse the probes' output (read from the system when not given)."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    arch = normalise_arch(machine() if machine_name is None else machine_name)
    features: list[str] = []
    model = _field(text, "model name", "cpu model", "hardware")
    if arch == "x86_64":
        flags = set(_field(text, "flags").split())
        features = [name for flag, name in _X86_FLAGS if flag in flags]
    elif arch == "aarch64" or arch.startswith("arm"):   # armv7l: 32-bit, "neon"
        flags = set(_field(text, "features").split())
        for flag, name in _ARM_FLAGS:
            if flag in flags and name not in features:
                features.append(name)
        model = model or "Arm"
    elif arch.startswith("ppc64"):
        cpu = _field(text, "cpu")               # "POWER9 (raw), altivec supported"
        match = re.search(r"POWER(\d+)", cpu, re.IGNORECASE)
        if match:
            generation = int(match.group(1))
            features.append(f"POWER{generation}")
            if generation >= 7:
                features.append("VSX")
            if generation >= 10:
                features.append("MMA")
        model = model or cpu
    return CpuIsa(arch=arch, features=tuple(features), model_name=model)
