"""Region-conv Triton kernels (plugins/; region semantics: docs/architecture.md).

The kernels run in Triton's interpreter on the CPU (a fresh process with
``TRITON_INTERPRET=1``; on a CUDA machine natively) against the dense masked reference,
and compile to PTX for sm_80–sm_90. Launch arithmetic and the block-size table are
checked in-process without launching anything. Skips when triton is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the region-conv kernel checks need it")

from layercascade.plugins import kernels
from layercascade.plugins.kernels import BLOCK_TABLE, BlockConfig, block_config, conv_grid
from layercascade.plugins.reference import region_conv_reference

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    """This environment, with the interpreter on unless a CUDA GPU can run the kernels."""
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    return env


def test_quick_check_all_cases_ok() -> None:
    done = subprocess.run([sys.executable, "-m", "layercascade.plugins.check", "--quick", "--json"],
                          check=False, capture_output=True, text=True, env=_env(), timeout=300)
    print(done.stderr)
    results = json.loads(done.stdout)
    failed = [r for r in results if not r["ok"]]
    assert not failed and done.returncode == 0, failed
    names = [r["case"] for r in results]
    for prefix in ("active_list:", "region_conv:", "region_conv_masked:", "ptx:region_conv:fp16:sm_90",
                   "ptx:region_conv_masked:fp16:sm_90", "ptx:active_list:fp16:sm_90"):
        assert any(name.startswith(prefix) for name in names), prefix
    assert all(set(r) == {"case", "ok", "max_abs_err"} for r in results)
    assert all(r["max_abs_err"] is None for r in results if r["case"].startswith("ptx:"))


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    """tools/gpu_check.py --dry-run: the GPU script's whole path on the CPU, tiny sizes."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, env=_env(), cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.log").read_text().strip()
    # The smoke run, first: the CPU-side steps run, the TensorRT and GPU ones say why they are skipped.
    assert results["smoke"] == {"driver": "skipped", "imports": "ok", "static_check": "ok", "ptx": "ok",
                                **{step: "skipped" for step in ("parse", "one_node", "two_nodes", "lc_build", "parity",
                                                                "cuda_graph")}}
    smoke = {step["step"]: step for step in json.loads((tmp_path / "trt_smoke.json").read_text())["steps"]}
    assert smoke["driver"]["reason"] == "dry run: no GPU steps"
    assert all(smoke[step]["reason"].startswith("tensorrt not importable") for step in ("parse", "lc_build"))
    assert all(not report["errors"] for report in smoke["static_check"]["result"].values())
    kernels = smoke["ptx"]["result"]["kernels"]
    assert kernels and all(k["assembled"] for k in kernels) and len({k["kernel"] for k in kernels}) == len(kernels)
    assert all(0 < k["shared_bytes"] <= 48 * 1024 for k in kernels)
    assert results["dry_run"] and results["correctness_ok"] and results["correctness"]
    e2e = results["end_to_end"]
    assert not e2e["truncated"] and e2e["settings"]["models"] == ["tiny"]
    assert [(row["batch"], row["cuda_graph"]) for row in e2e["rows"]] == [(1, False), (2, False)]
    for row in e2e["rows"]:
        assert row["ok"] and row["model"] == "tiny" and row["rho"] == 0.985 and row["labels_match_first_mode"]
        for key in ("cascade_ms", "dense_ms"):
            assert row[key]["runs"] >= 2 and row[key]["median_ms"] > 0
        assert row["cascade_fps"] > 0 and row["dense_fps"] > 0 and row["speedup"] > 0 and row["ideal_speedup"] > 1
        assert sum(row["stage_fractions"]) == pytest.approx(1.0)
    check = e2e["rows"][0]["reference_check"]
    assert check["ok"] and check["label_agreement"] >= 0.9999 and max(check["score_rel_err"]) <= 1e-4
    rows = results["benchmark"]["rows"]
    assert len(rows) == 1 * 2 * 2 * 5  # channels × kernel sizes × mask kinds × fractions
    for row in rows:
        assert row["ok"]
        for key in ("dense_ms", "list_ms", "masked_ms", "active_list_ms"):
            assert row[key]["runs"] >= 2 and row[key]["median_ms"] > 0
        assert row["ideal_speedup"] == pytest.approx(1 / row["fraction"])


class _RecordingLaunch:
    """Stands in for a Triton kernel: records each launch grid and its arguments."""

    def __init__(self) -> None:
        self.launches: list[tuple[tuple, tuple, dict]] = []

    def __getitem__(self, grid: tuple) -> Callable[..., None]:
        def launch(*args, **kwargs) -> None:
            self.launches.append((grid, args, kwargs))
        return launch


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_grid_depends_on_shapes_only(monkeypatch: pytest.MonkeyPatch, fraction: float) -> None:
    rows_kernel, masked_kernel = _RecordingLaunch(), _RecordingLaunch()
    monkeypatch.setattr(kernels, "_region_conv_rows_kernel", rows_kernel)
    monkeypatch.setattr(kernels, "_region_conv_masked_kernel", masked_kernel)
    n, h, w, c_in, c_out = 2, 7, 9, 24, 40
    x = torch.zeros(n, h, w, c_in)
    weight = torch.zeros(c_out, c_in, 3, 3)
    mask = (torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(0)) < fraction).float()
    # A list of any content: its count is passed as a device tensor, never read back.
    rows = torch.zeros(n * h * w, dtype=torch.int32)
    count = torch.tensor([int(mask.sum())], dtype=torch.int32)
    config = BlockConfig(16, 16, 16, 4)
    kernels.region_conv(x, weight, None, rows, count, padding=2, dilation=2, config=config)
    kernels.region_conv_masked(x, weight, None, mask, padding=2, dilation=2, config=config)
    expected = (-(-n * h * w // 16), -(-c_out // 16))
    assert conv_grid(n * h * w, c_out, config) == expected == (8, 3)
    assert rows_kernel.launches[0][0] == expected and masked_kernel.launches[0][0] == expected
    assert rows_kernel.launches[0][1][4] is count
    assert masked_kernel.launches[0][2]["DIL_H"] == 2 and masked_kernel.launches[0][2]["PAD_W"] == 2


def test_conv_grid_arithmetic() -> None:
    assert conv_grid(64 * 64, 256, BLOCK_TABLE[(256, 256, 3, "fp16")]) == (64, 2)
    assert conv_grid(64 * 64, 64, BLOCK_TABLE[(64, 64, 3, "fp16")]) == (128, 1)
    assert conv_grid(1, 1, BlockConfig(64, 128, 64, 4)) == (1, 1)
    assert conv_grid(65, 129, BlockConfig(64, 128, 64, 4)) == (2, 2)


def test_block_table() -> None:
    for (c_in, c_out, k, dtype), config in BLOCK_TABLE.items():
        assert block_config(c_in, c_out, k, dtype) == config
        for size in config[:3]:
            assert size >= 16 and size & (size - 1) == 0  # tl.dot: powers of two ≥ 16
        assert config.num_warps in (1, 2, 4, 8)
        # Pipelined A and B tiles fit the ~99 KiB of shared memory of sm_86 / sm_89.
        element = 2 if dtype == "fp16" else 4
        tiles = (config.block_m + config.block_n) * config.block_k * element
        assert tiles * kernels.COMPILE_OPTIONS["num_stages"] <= 99 * 1024
    assert block_config(8, 8, 3, "fp32") == BlockConfig(32, 16, 16, 4)
    assert block_config(24, 20, 1, "fp16") == BlockConfig(64, 32, 32, 4)
    assert block_config(1024, 1024, 3, "fp16") == BlockConfig(64, 128, 64, 4)
    with pytest.raises(ValueError, match="dtype"):
        block_config(64, 64, 3, "bf16")


def test_argument_checks() -> None:
    x = torch.zeros(1, 5, 5, 8)
    weight = torch.zeros(8, 8, 3, 3)
    mask = torch.ones(1, 1, 5, 5)
    with pytest.raises(ValueError, match="same"):
        kernels.region_conv_masked(x, weight, None, mask, padding=0)
    with pytest.raises(ValueError, match="fp32 or fp16"):
        kernels.region_conv_masked(x, weight.double(), None, mask, padding=1)
    with pytest.raises(ValueError, match="channels"):
        kernels.region_conv_masked(x[..., :4].contiguous(), weight, None, mask, padding=1)
    with pytest.raises(ValueError, match="residual"):
        kernels.region_conv_masked(x, weight, None, mask, padding=1, residual=torch.zeros(1, 5, 5, 4))


def test_pack_weight_keeps_values() -> None:
    weight = torch.randn(6, 4, 3, 3)
    packed = kernels.pack_weight(weight)
    assert torch.equal(packed, weight) and packed.stride()[0] == 1


def test_grouped_conv_falls_back_to_reference() -> None:
    """groups ≠ 1 runs the reference, also from a list whose tail past the count is garbage."""
    torch.manual_seed(0)
    x = torch.randn(1, 5, 6, 8)
    weight = torch.randn(6, 4, 3, 3)
    mask = (torch.rand(1, 1, 5, 6) < 0.4).float()
    active = torch.nonzero(mask.flatten()).flatten().to(torch.int32)
    rows = torch.full((30,), 12345, dtype=torch.int32)
    rows[: active.numel()] = active
    count = torch.tensor([active.numel()], dtype=torch.int32)
    ref = region_conv_reference(x, weight, None, mask, padding=1, groups=2)
    assert torch.equal(kernels.region_conv(x, weight, None, rows, count, padding=1, groups=2), ref)
    assert torch.equal(kernels.region_conv_masked(x, weight, None, mask, padding=1, groups=2), ref)
