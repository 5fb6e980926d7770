"""The host a benchmark ran on, in one line: CPU model, core count and the vector and matrix extensions
that decide the fp32, int8 and bf16 kernels. Each backend adds its device and library version
(``StagedBackend.machine``)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_features(flags: set[str]) -> str:
    """The x86 vector and matrix extensions that decide the fp32, int8 and bf16 kernels of ONNX Runtime
    and OpenVINO ('' elsewhere)."""
    if "avx512_vnni" in flags:
        vector = "AVX-512 VNNI"
    elif "avx_vnni" in flags:
        vector = "AVX-VNNI"
    else:
        vector = "AVX2, no VNNI" if "avx2" in flags else ""
    if "amx_bf16" in flags or "amx_int8" in flags:
        matrix = "AMX " + "/".join(kind for kind in ("bf16", "int8") if f"amx_{kind}" in flags)
    else:
        matrix = "AVX-512 BF16" if "avx512_bf16" in flags else ""
    return ", ".join(part for part in (vector, matrix) if part)


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
