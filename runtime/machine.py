"""The host a benchmark ran on, in one line: CPU model, core count and the vector extensions that
decide ONNX Runtime's fp32 and int8 kernels. Each backend adds its device and library version
(``StagedBackend.machine``)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_features(flags: set[str]) -> str:
    """The x86 vector extensions that decide ONNX Runtime's fp32 and int8 kernels ('' elsewhere)."""
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    return "AVX2, no VNNI" if "avx2" in flags else ""


def host() -> str:
    """CPU model, core count and vector extensions of this machine."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    features = cpu_features(flags)
    return f"{cpu}, {os.cpu_count()} CPUs" + (f" ({features})" if features else "")
