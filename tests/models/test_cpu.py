"""The AMX guard's decisions and the default thread split, on given CPU feature strings."""

from __future__ import annotations

from edgespec.models.cpu import (
    amx_decision,
    build_has_amx,
    client_threads,
    cmake_args,
    cpu_flags,
    cpu_model,
    daemon_threads,
)

SAPPHIRE_RAPIDS = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: fpu sse sse2 avx f16c fma bmi2 avx2 avx512f avx512dq avx512vbmi avx512_vnni \
avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8
"""
ZEN4 = """model name	: AMD EPYC 9R14
flags		: fpu sse avx avx2 fma f16c bmi2 avx512f avx512vbmi avx512_vnni avx512_bf16
"""
GRAVITON = """processor	: 0
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm
CPU implementer	: 0x41
"""
AMX_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
SAFE_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | REPACK = 1 |"


def test_flags_and_model_lines_are_read_on_x86_and_arm():
    assert "amx_int8" in cpu_flags(SAPPHIRE_RAPIDS)
    assert "asimd" in cpu_flags(GRAVITON)
    assert cpu_model(ZEN4) == "AMD EPYC 9R14"
    assert cpu_flags("no flags here") == frozenset()


def test_an_amx_cpu_builds_without_amx_and_keeps_every_other_feature():
    args = cmake_args(cpu_flags(SAPPHIRE_RAPIDS)).split()
    assert "-DGGML_NATIVE=OFF" in args
    for on in ("AVX", "AVX2", "AVX_VNNI", "FMA", "F16C", "BMI2", "AVX512", "AVX512_VBMI",
               "AVX512_VNNI", "AVX512_BF16"):
        assert f"-DGGML_{on}=ON" in args
    for off in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{off}=OFF" in args
        assert f"-DGGML_{off}=ON" not in args


def test_cpus_without_amx_keep_the_native_build():
    assert cmake_args(cpu_flags(ZEN4)) == ""
    assert cmake_args(cpu_flags(GRAVITON)) == ""


def test_runtime_guard_acts_only_for_an_amx_build_on_an_amx_cpu():
    assert build_has_amx(AMX_BUILD) and not build_has_amx(SAFE_BUILD)
    amx = cpu_flags(SAPPHIRE_RAPIDS)
    assert amx_decision(AMX_BUILD, amx).avoid_extra_buffers
    assert "rebuild" in amx_decision(AMX_BUILD, amx).status
    assert "CMAKE_ARGS" in amx_decision(AMX_BUILD, amx).fix
    assert not amx_decision(SAFE_BUILD, amx).avoid_extra_buffers
    assert amx_decision(SAFE_BUILD, amx).fix == ""
    # An AMX build on a CPU without AMX never reaches the AMX kernels: nothing to avoid.
    assert not amx_decision(AMX_BUILD, cpu_flags(ZEN4)).avoid_extra_buffers


def test_daemon_takes_its_share_only_when_bound_to_loopback():
    assert daemon_threads(0, bound_to_loopback=True, cores=2) == 1
    assert daemon_threads(0, bound_to_loopback=True, cores=8) == 4
    assert daemon_threads(0, bound_to_loopback=True, cores=1) == 1
    assert daemon_threads(0, bound_to_loopback=False, cores=8) == 8
    assert daemon_threads(3, bound_to_loopback=True, cores=8) == 3  # --threads wins


def test_client_takes_what_a_local_daemon_leaves_and_everything_otherwise():
    assert client_threads(None, local=True, cores=2) == 1
    assert client_threads(None, local=True, daemon_uses=1, cores=2) == 1
    assert client_threads(None, local=True, daemon_uses=6, cores=8) == 2
    assert client_threads(None, local=True, daemon_uses=8, cores=8) == 1  # never zero
    assert client_threads(None, local=False, cores=4) == 4
    assert client_threads(None, local=False, cores=64) == 8  # small drafts stop scaling
    assert client_threads(5, local=True, cores=2) == 5  # --threads wins
