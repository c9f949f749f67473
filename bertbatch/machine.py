"""This machine as settings see it: CPU model, the ISA flags that select kernels, usable CPUs, and the signature
a tune record holds for (CPU, flags, CPUs, provider, onnxruntime version).

The only reader of /proc/cpuinfo (read once per process). Imports nothing heavy at module level.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from pathlib import Path

# ISA features that select different ORT/MLAS kernels (x86: AVX2, AVX-512, VNNI, BF16, AMX; ARM: dot product,
# i8mm, bf16, SVE). Other /proc/cpuinfo flags do not change speed or results of these graphs.
KERNEL_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm",
                "bf16", "sve", "sve2")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def cpu_flags() -> set[str]:
    """The first CPU's feature flags (x86 `flags`, ARM `Features`); empty where /proc/cpuinfo is missing."""
    line = next((ln for ln in _cpuinfo().splitlines() if ln.lower().startswith(("flags", "features"))), "")
    return set(line.split(":", 1)[-1].split())


def kernel_flags() -> list[str]:
    """The flags of KERNEL_FLAGS this CPU has, in KERNEL_FLAGS order."""
    flags = cpu_flags()
    return [f for f in KERNEL_FLAGS if f in flags]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform reports."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def available_cpus() -> int:
    """CPUs this process may use: scheduler affinity, capped by a cgroup v2 CPU quota, not the host's count."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS/Windows
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return count


def machine_signature(provider: str) -> dict:
    """What a tune record is valid for: CPU model, kernel-relevant ISA flags, CPUs, provider, onnxruntime."""
    import onnxruntime

    return {"cpu": cpu_model(), "arch": platform.machine(), "isa": kernel_flags(),
            "cpus": available_cpus(), "provider": provider, "onnxruntime": onnxruntime.__version__}


def signature_key(signature: dict) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
