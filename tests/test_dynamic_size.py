"""Dynamic-size exports (lc-export --dynamic-size): one set of graphs with a symbolic height and width gives, at
every size, the labels and counts of a fixed-size export at that size: bit-exact on ONNX Runtime, as stage graphs
and as the joined, lowered cascade."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from layercascade.cli import export as export_cli
from layercascade.contract import DYNAMIC_DIMS, DYNAMIC_STAGE_DIMS, IMAGE, LABELS, STAGE_COUNTS
from layercascade.errors import LCError, run_cli
from layercascade.export.cascade_graph import cascade_graph
from layercascade.export.graph import load_onnx
from layercascade.export.lowering import lower_region_convs
from layercascade.export.stages import export_model
from layercascade.manifest import read_cascade_manifest
from layercascade.tests.helpers import random_images, sharpened_checkpoint

SIZES = [(64, 64), (16, 96), (96, 40), (72, 128)]


@pytest.fixture(scope="module")
def exports(dynamic_size_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[int, int], Path]]:
    """The shared dynamic-size export of a small model (conftest.py), and fixed-size exports of the same weights at
    each of SIZES."""
    folder = tmp_path_factory.mktemp("fixed")
    checkpoint = sharpened_checkpoint("tiny", (64, 64))
    return dynamic_size_model, {size: export_model(checkpoint, folder / f"fixed{size[0]}x{size[1]}", input_size=size)
                                for size in SIZES}


def joined_session(model_dir: Path, lower: bool) -> ort.InferenceSession:
    joined = cascade_graph([load_onnx(model_dir / f"stage{k}.onnx") for k in (1, 2, 3)])
    model = lower_region_convs(joined) if lower else joined
    if lower:
        assert not any(n.op_type == "RegionConv" for n in model.graph.node)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_manifest_records_the_bounds_and_symbolic_dims(exports) -> None:
    dynamic, _ = exports
    manifest = read_cascade_manifest(dynamic)
    assert manifest["dynamic_size"] == {"min": [16, 16], "max": [96, 128], "multiple": 8}
    assert manifest["input_size"] == [64, 64]  # the nominal size
    stage1, stage3 = manifest["stages"][0], manifest["stages"][2]
    assert next(t for t in stage1["inputs"] if t["name"] == IMAGE)["shape"] == ["batch", *DYNAMIC_DIMS, 3]
    assert next(t for t in stage1["outputs"] if t["name"] == "mask2")["shape"] == ["batch", 1, *DYNAMIC_STAGE_DIMS]
    assert next(t for t in stage3["outputs"] if t["name"] == LABELS)["shape"] == ["batch", *DYNAMIC_DIMS]


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "function-bodies"])
def test_each_size_gives_the_fixed_exports_labels(exports, lower: bool) -> None:
    dynamic, fixed = exports
    session = joined_session(dynamic, lower)
    for size, fixed_dir in fixed.items():
        reference = joined_session(fixed_dir, lower)
        for seed, rho in ((0, 0.9), (1, 0.985), (2, 1.0)):
            feeds = {IMAGE: random_images(1, size, seed), "rho2": np.full(21, rho, np.float32),
                     "rho3": np.full(21, rho, np.float32)}
            labels, counts = session.run([LABELS, STAGE_COUNTS], feeds)
            expected_labels, expected_counts = reference.run([LABELS, STAGE_COUNTS], feeds)
            assert labels.shape == (1, *size)
            np.testing.assert_array_equal(labels, expected_labels)
            np.testing.assert_array_equal(counts, expected_counts)
            assert counts.sum() == size[0] * size[1] // 64


def test_bounds_are_checked(tmp_path: Path, capsys) -> None:
    cases = {
        "60x64:512x512": "each height and width must be a multiple of 8",
        "64x64:32x512": "need MIN <= MAX",
        "8x8:512x512": "each side at least 16",
        "64x64:128x128": "the nominal input size 160x160",
        "64x64:16000x16000": "the largest size is over 100,000,000 pixels",
    }
    for bounds, expected in cases.items():
        assert run_cli(export_cli.main, ["-o", str(tmp_path / "m"), "--dynamic-size", bounds]) == 1
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "m").exists()


def test_a_garbage_dynamic_size_is_refused_at_load(exports, tmp_path: Path) -> None:
    import shutil

    from layercascade.manifest import sha256_file

    dynamic, _ = exports
    folder = shutil.copytree(dynamic, tmp_path / "model")
    manifest = json.loads((folder / "lc.json").read_text())
    manifest["dynamic_size"] = {"min": [16, 16], "max": [100, 128], "multiple": 8}
    manifest["files"] = {name: sha256_file(folder / name) for name in manifest["files"]}
    (folder / "lc.json").write_text(json.dumps(manifest))
    with pytest.raises(LCError, match=r"lc.json: dynamic_size .* is not \{\"min\": \[H, W\]"):
        read_cascade_manifest(folder)
