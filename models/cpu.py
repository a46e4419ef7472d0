"""This machine's CPU: features, the llama.cpp build that is safe on it, and thread shares.

Standard library only, so the install step can run it as a script before anything else is
installed (``python3 models/cpu.py cmake-args``).

**AMX.** llama.cpp's AMX kernels (``ggml_backend_amx_mul_mat``) segfault on some AMX CPUs
(upstream ggml-org/llama.cpp#20824, closed without a fix). A native build (``GGML_NATIVE``)
compiles them in whenever the compiler sees AMX, and then the AMX buffer type claims the
quantized weights first. Two guards, both driven by :func:`amx_decision`:

- *install time*: on a CPU with AMX, build llama-cpp-python with ``GGML_NATIVE=OFF`` plus
  every other feature this CPU has (:func:`cmake_args`), so the AMX code is never compiled
  and the CPU repack kernels stay (the fastest path that works);
- *run time*, for installs we did not build: when the loaded llama.cpp reports
  ``AMX_INT8 = 1`` on an AMX CPU, the drafter loads the model without extra buffer types,
  which keeps AMX unreachable at the price of the repack kernels, and says how to rebuild.

**Threads.** Draft and target sharing one machine must not both take every core: their
OpenMP and torch threads spin against each other (0.38x the target alone measured). A local
pair splits the cores; a remote daemon leaves them all to the draft (:func:`client_threads`,
:func:`daemon_threads`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo flag -> the llama.cpp CMake option that compiles kernels for it (x86-64).
X86_CMAKE_FLAGS = (
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("avx_vnni", "GGML_AVX_VNNI"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("bmi2", "GGML_BMI2"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)
AMX_FLAGS = ("amx_int8", "amx_tile", "amx_bf16")
AMX_CMAKE_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
MAX_DEFAULT_THREADS = 8  # past this llama.cpp's small-model decode stops scaling


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model line, as a benchmark table names it."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return platform.processor() or platform.machine()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or platform.machine()


def has_amx(flags: frozenset[str]) -> bool:
    return any(flag in flags for flag in AMX_FLAGS)


def cmake_args(flags: frozenset[str]) -> str:
    """CMAKE_ARGS for a llama.cpp build with this CPU's features but no AMX kernels.

    Empty when the CPU has no AMX: the default native build is then both safe and fastest.
    """
    if not has_amx(flags):
        return ""
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{option}=ON" for flag, option in X86_CMAKE_FLAGS if flag in flags]
    args += [f"-D{option}=OFF" for option in AMX_CMAKE_OFF]
    return " ".join(args)


def build_has_amx(system_info: str) -> bool:
    """True when llama.cpp's ``llama_print_system_info()`` says AMX kernels are compiled in."""
    return re.search(r"\bAMX_INT8\s*=\s*1\b", system_info) is not None


@dataclass(frozen=True, slots=True)
class AmxDecision:
    """What the drafter must do about AMX on this CPU with this llama.cpp build."""

    cpu_has_amx: bool
    build_has_amx: bool

    @property
    def avoid_extra_buffers(self) -> bool:
        """Load without extra buffer types: the only runtime way to keep AMX unreachable."""
        return self.cpu_has_amx and self.build_has_amx

    @property
    def status(self) -> str:
        if not self.cpu_has_amx:
            return "no AMX on this CPU"
        if not self.build_has_amx:
            return "AMX present, avoided (llama.cpp built without AMX kernels)"
        return ("AMX present and compiled into llama.cpp: avoided at run time (extra buffer "
                "types off, slower); rebuild without AMX for full speed")

    @property
    def fix(self) -> str:
        """The command that gives a build that is both safe and fast, or '' when fine."""
        if not self.avoid_extra_buffers:
            return ""
        return (f'CMAKE_ARGS="{cmake_args(cpu_flags())}" pip install --force-reinstall '
                "--no-cache-dir --no-deps llama-cpp-python")


def amx_decision(system_info: str, flags: frozenset[str] | None = None) -> AmxDecision:
    return AmxDecision(has_amx(cpu_flags() if flags is None else flags),
                       build_has_amx(system_info))


# ---------------------------------------------------------------- threads


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def daemon_share(cores: int) -> int:
    """The daemon's cores when it shares the machine with a client: the larger half (a
    verify pass is wider than a draft step and gains more from another core)."""
    return max(1, cores - cores // 2)


def daemon_threads(explicit: int, bound_to_loopback: bool, cores: int | None = None) -> int:
    """verifyd's torch threads: ``--threads`` wins; bound to loopback, its clients run on
    this machine, so it takes its share; otherwise every core (a remote daemon)."""
    if explicit > 0:
        return explicit
    cores = cores or usable_cores()
    return daemon_share(cores) if bound_to_loopback else cores


def client_threads(explicit: int | None, local: bool, daemon_uses: int = 0,
                   cores: int | None = None) -> int:
    """The draft's llama.cpp threads: ``--threads`` wins; with the daemon on this machine,
    the cores it leaves (what it reported in WELCOME, else its default share); with a
    remote daemon, every core up to ``MAX_DEFAULT_THREADS``."""
    if explicit:
        return explicit
    cores = cores or usable_cores()
    if local:
        taken = daemon_uses if daemon_uses > 0 else daemon_share(cores)
        return max(1, min(MAX_DEFAULT_THREADS, cores - taken))
    return max(1, min(MAX_DEFAULT_THREADS, cores))


def host_id() -> bytes:
    """16 bytes naming this machine (this boot): equal on both ends means one machine.

    A hash, so the daemon never reveals the raw machine id.
    """
    parts = []
    for name in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            parts.append(Path(name).read_bytes().strip())
        except OSError:
            continue
    if not parts:
        parts.append(platform.node().encode())
    return hashlib.sha256(b"edgespec-host\0" + b"\0".join(parts)).digest()[:16]


def _main(argv: list[str]) -> int:
    """``cmake-args``: what the install step builds llama-cpp-python with ('' = native);
    ``flags``: the CPU feature line a crash report shows."""
    command = argv[1] if len(argv) > 1 else ""
    if command == "cmake-args":
        print(cmake_args(cpu_flags()))
        return 0
    if command == "flags":
        print(f"{cpu_model()}: {' '.join(sorted(cpu_flags()))}")
        return 0
    print("usage: cpu.py cmake-args | flags", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
