"""ISA parsing from faked probe output (/proc/cpuinfo text and platform.machine())."""

from __future__ import annotations

import pytest

from vllm_core_cpu import isa

X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c"


def x86(flags: str) -> str:
    return (f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test Xeon\n"
            f"flags\t\t: {X86_FLAGS} {flags}\n\nprocessor\t: 1\nflags\t\t: {X86_FLAGS}\n")


ARM_GRAVITON3 = ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull "
                 "sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve asimdfhm svebf16 i8mm "
                 "bf16 dgh rng\nCPU implementer\t: 0x41\n")
ARM_GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
POWER9 = "processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\nclock\t\t: 3800.000000MHz\n"
POWER10 = "processor\t: 0\ncpu\t\t: POWER10 (architected), altivec supported\n"


@pytest.mark.parametrize("text,machine,arch,features,bf16", [
    (x86("avx2"), "x86_64", "x86_64", ("AVX2",), False),
    (x86("avx2 avx512f avx512_vnni"), "x86_64", "x86_64", ("AVX2", "AVX512", "AVX512_VNNI"),
     False),
    (x86("avx2 avx512f avx512_bf16"), "AMD64", "x86_64", ("AVX2", "AVX512", "AVX512_BF16"), True),
    (x86("avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"), "x86_64", "x86_64",
     ("AVX2", "AVX512", "AVX512_BF16", "AMX"), True),
    (x86("avx2 amx_bf16"), "x86_64", "x86_64", ("AVX2", "AMX"), True),
    (ARM_GRAVITON3, "aarch64", "aarch64", ("NEON", "SVE", "BF16"), True),
    (ARM_GRAVITON2, "arm64", "aarch64", ("NEON",), False),
    (POWER9, "ppc64le", "ppc64le", ("POWER9", "VSX"), False),
    (POWER10, "ppc64le", "ppc64le", ("POWER10", "VSX", "MMA"), False),
    ("", "riscv64", "riscv64", (), False),
])
def test_detect_isa(text, machine, arch, features, bf16):
    cpu = isa.detect_isa(text, machine)
    assert cpu.arch == arch and cpu.features == features
    assert cpu.has_native_bf16 is bf16
    assert cpu.summary == " ".join((arch, *features))


def test_only_first_processor_flags_count():
    # the second processor block lists no AVX2; the first one's flags are what we report
    assert "AVX2" in isa.detect_isa(x86("avx2"), "x86_64").features


def test_model_names():
    assert isa.detect_isa(x86("avx2"), "x86_64").model_name == "Test Xeon"
    assert isa.detect_isa(ARM_GRAVITON2, "aarch64").model_name == "Arm"
    assert isa.detect_isa(POWER9, "ppc64le").model_name.startswith("POWER9")


def test_probes_are_the_only_system_access(monkeypatch):
    monkeypatch.setattr(isa, "read_cpuinfo", lambda: ARM_GRAVITON3)
    monkeypatch.setattr(isa, "machine", lambda: "aarch64")
    assert isa.detect_isa().summary == "aarch64 NEON SVE BF16"


def test_real_probes_answer():
    assert isinstance(isa.read_cpuinfo(), str)
    assert isa.detect_isa().arch
