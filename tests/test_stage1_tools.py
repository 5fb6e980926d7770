"""The issue-16 analysis tools: tools/stage1_calibration.py (stage 1's reliability, where its kept pixels
go wrong) end to end on a few val images, and the DSN-as-cascade block of tools/make_results.py."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from layercascade.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from layercascade.model.data import open_dataset
from layercascade.model.evaluate import evaluate, torch_predictor

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"


@pytest.fixture
def tools() -> Iterator[None]:
    """tools/ on sys.path, as when a script there runs (they import results_block beside them)."""
    sys.path.insert(0, str(TOOLS))
    yield
    sys.path.remove(str(TOOLS))


def load_tool(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_stage1_calibration_end_to_end(tmp_path: Path) -> None:
    markdown = tmp_path / "training.md"
    markdown.write_text("# Training\n\nkept text\n")
    figure, numbers = tmp_path / "stage1.png", tmp_path / "stage1.json"
    done = subprocess.run([sys.executable, str(TOOLS / "stage1_calibration.py"), str(DEMO_CHECKPOINT), "--reference",
                           str(DEMO_CHECKPOINT), "--limit", "3", "--figure", str(figure), "--markdown", str(markdown),
                           "--json", str(numbers)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = markdown.read_text()
    assert text.startswith("# Training\n\nkept text\n")
    assert "<!-- stage1-calibration:begin -->" in text and "<!-- stage1-calibration:end -->" in text
    assert "![stage-1 reliability](stage1.png)" in text and figure.stat().st_size > 0
    [summary] = json.loads(numbers.read_text())
    assert summary["rho"] == 0.985 and summary["name"] == "cascade-trained lc_tiny_synthetic.pt"
    assert 0 < summary["kept_share"] < 100
    # The reliability bins and the distance classes each cover every counted (resp. kept) pixel once.
    assert sum(row["pixels"] for row in summary["reliability_all"]) == summary["pixels"]
    assert sum(row["share_of_kept"] for row in summary["by_distance"]) == pytest.approx(100)
    # The cascade's and the reference's labels are those lc-eval scores (here the reference is the model itself).
    checkpoint = load_checkpoint(DEMO_CHECKPOINT)
    predict = torch_predictor(checkpoint.build_model(), checkpoint.mean, checkpoint.std)
    cascade, dense = evaluate(predict, open_dataset("synthetic", "val", limit=3), [0.985, 1.0], checkpoint.classes,
                              progress=False)
    assert summary["miou"]["cascade"] == pytest.approx(cascade.miou, abs=1e-3)
    assert summary["miou"]["reference dense"] == pytest.approx(dense.miou, abs=1e-3)


def test_distance_classes_and_calibration_error(tools: None) -> None:
    import torch

    calibration = load_tool("stage1_calibration")
    labels = torch.zeros(1, 40, 40, dtype=torch.int64)
    labels[0, :, 0] = 255  # the band: column 0
    classes = calibration.distance_classes(labels, stride=4)[0, 0]
    # Chessboard distance d to column 0 in units of 4 px: ≤ 1, (1, 2], (2, 4], > 4.
    assert classes[1:5].tolist() == [0] * 4 and classes[5:9].tolist() == [1] * 4
    assert classes[9:17].tolist() == [2] * 8 and classes[17:].tolist() == [3] * 23
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    assert calibration.expected_calibration_error(confidence, np.array([1.0, 1.0, 0.0, 1.0])) == pytest.approx(
        (2 * 0.05 + 2 * 0.05) / 4 * 100)


def test_dsn_cascade_section(tools: None, tmp_path: Path) -> None:
    results = load_tool("make_results")

    def sweep(mious: list[float], stage1: list[float]) -> list[dict]:
        return [{"rho": rho, "miou": m, "stage_fractions": [s, 0.0, 1.0 - s]}
                for rho, m, s in zip((1.0, 0.985, 0.9), mious, stage1)]

    pair = {"seed": 0, "label": "seed 0, runs/x", "cascade": "c.pt", "dsn": "d.pt", "dsn_sweep": sweep([82.0, 75.0, 70.0], [0.0, 0.7, 0.8]),
            "cascade_sweep": sweep([60.0, 78.0, 77.0], [0.0, 0.7, 0.8])}
    section = results.dsn_cascade_section([pair])
    assert section.startswith(results.DSN_CASCADE_BEGIN) and section.endswith(results.DSN_CASCADE_END)
    assert "| 0.985 | 70.0" in section and "75.00" in section and "78.00" in section
    assert ("seed 0, runs/x: DSN-trained, dense 82.00, at ρ = 0.985 75.00 (70.0 % stop at stage 1); cascade-trained "
            "at ρ = 0.985 78.00 (70.0 %), -4.00 against the DSN-trained dense, its best 78.00 at ρ = 0.985") in section
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\n{results.PAIRS_BEGIN}\npairs\n{results.PAIRS_END}\n")
    for _ in range(2):  # inserted before the (ρ₂, ρ₃) block, then replaced, not inserted twice
        results.replace_block(page, "dsn-cascade", section, before=results.PAIRS_BEGIN)
    text = page.read_text()
    assert text.count(results.DSN_CASCADE_BEGIN) == 1 and text.index(section) < text.index(results.PAIRS_BEGIN)
    assert results.plot_sweep(pair["cascade_sweep"], tmp_path / "sweep.png", pair["dsn_sweep"])


def test_dsn_demo_ships_beside_the_cascade_demo() -> None:
    """model/demo/dsn_tiny_synthetic.pt: the same network trained with deep supervision, without optimizer
    state, matched by the package-data glob."""
    import tomllib

    dsn_path = DEMO_CHECKPOINT.parent / "dsn_tiny_synthetic.pt"
    dsn, cascade = load_checkpoint(dsn_path), load_checkpoint(DEMO_CHECKPOINT)
    assert dsn.resume is None and dsn.config == cascade.config and dsn.classes == cascade.classes
    assert dsn.training["mode"] == "dsn" and dsn.training["seed"] == cascade.training["seed"] == 0
    assert dsn.training["epochs"] == 2 * cascade.training["epochs"]  # equal budget: the cascade's dsn half + its own
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert dsn_path in {*dsn_path.parent.parent.glob(globs["layercascade.model"][0])}
