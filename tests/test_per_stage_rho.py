"""Per-stage thresholds (ρ₂, ρ₃): one ρ still means both; the pair through the contract, the joined
graph, ``Cascade``, the commands and the manifest (format version 2, version-1 dirs still read).

The backends' parity at pairs lives with each backend's tests (test_export, test_runtime,
test_openvino, test_torch_backend, test_trt_runtime); here: what a pair means and how it is taken.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from layercascade.cli import bench, evaluate, run
from layercascade.contract import check_rho, format_rho, rho_or_default, rho_value
from layercascade.errors import LCError, run_cli
from layercascade.export.cascade_graph import cascade_graph
from layercascade.export.graph import load_onnx
from layercascade.manifest import read_cascade_manifest
from layercascade.runtime.cascade import DEMO_MODEL, Cascade
from layercascade.tests.helpers import synthetic_images, version2_copy


@pytest.fixture(scope="module")
def demo() -> Cascade:
    return Cascade.load(DEMO_MODEL, backend="ort")


def test_one_rho_means_both_stages_and_a_pair_is_rho2_rho3() -> None:
    assert check_rho(0.9) == (0.9, 0.9) and check_rho((0.9, 0.97)) == (0.9, 0.97) and check_rho([1, 0.5]) == (1.0, 0.5)
    assert check_rho(np.float32(0.5)) == (0.5, 0.5)
    assert rho_or_default(None, [0.9, 0.95]) == (0.9, 0.95) and rho_or_default(0.8, 0.985) == (0.8, 0.8)
    assert rho_value((0.9, 0.9)) == 0.9 and rho_value((0.9, 0.95)) == [0.9, 0.95]
    assert format_rho(0.985) == "0.985" and format_rho([0.9, 0.95]) == "0.9,0.95"


@pytest.mark.parametrize("bad", [0.0, 1.5, -1, math.nan, "0.9", True, None, (0.9,), (0.9, 0.9, 0.9), (0.9, 0.0),
                                 (0.9, math.nan), ("0.9", 0.9)])
def test_bad_thresholds_are_one_line_errors(bad: object) -> None:
    with pytest.raises(LCError, match="rho must be") as error:
        check_rho(bad)
    assert "\n" not in str(error.value)


def test_the_joined_graph_takes_each_stage_threshold_as_its_own_input() -> None:
    stages = [load_onnx(DEMO_MODEL / f"stage{k}.onnx") for k in (1, 2, 3)]
    for forced in (False, True):
        joined = cascade_graph(stages, forced)
        assert [i.name for i in joined.graph.input][:3] == ["image", "rho2", "rho3"]
        assert "rho" not in {name for node in joined.graph.node for name in node.input}
    thresholds = {name for node in cascade_graph(stages).graph.node for name in node.input if name.startswith("rho")}
    assert thresholds == {"rho2", "rho3"}  # stage 1's threshold node reads ρ₂, stage 2's ρ₃


def test_each_threshold_acts_on_its_own_mask(demo: Cascade) -> None:
    images = synthetic_images(1)
    split = demo.run_batch(images, 0.9)
    assert 0 < split.mask2.mean() < 1 and 0 < split.mask3.mean() < split.mask2.mean()
    all_to_stage2 = demo.run_batch(images, (1.0, 0.9))  # ρ₂ = 1: M₂ is every pixel; ρ₃ still splits
    assert all_to_stage2.mask2.all() and 0 < all_to_stage2.mask3.mean() < 1
    none_stop_at_2 = demo.run_batch(images, (0.9, 1.0))  # ρ₃ = 1: every pixel of M₂ goes on to stage 3
    np.testing.assert_array_equal(none_stop_at_2.mask2, split.mask2)
    np.testing.assert_array_equal(none_stop_at_2.mask3, split.mask2)
    assert (none_stop_at_2.stage_counts[:, 1] == 0).all()
    result = demo(images[0], rho=(0.9, 1.0))
    assert result.stage_fractions[1] == 0.0 and demo.rho((0.9, 1.0)) == (0.9, 1.0) and demo.rho(0.9) == (0.9, 0.9)
    with pytest.raises(LCError, match="one threshold or two"):
        demo(images[0], rho=(0.9, 0.9, 0.9))


def version_1_copy(target: Path) -> Path:
    """The demo model dir as layercascade wrote it before per-stage thresholds: version 1, one default ρ (and one
    threshold per stage graph, no confidence)."""
    assert read_cascade_manifest(DEMO_MODEL)["default_rho"] == [0.985, 0.985]
    return version2_copy(target, version=1, default_rho=0.985)


def test_a_version_1_model_dir_still_runs(tmp_path: Path, demo: Cascade) -> None:
    old = version_1_copy(tmp_path / "v1")
    assert read_cascade_manifest(old)["default_rho"] == [0.985, 0.985]
    images = synthetic_images(1)
    for backend in ("ort", "openvino"):
        if backend == "openvino":
            pytest.importorskip("openvino", reason="OpenVINO is not installed")
        with Cascade.load(old, backend=backend, **({"precision": "fp32"} if backend == "openvino" else {})) as cascade:
            assert cascade.default_rho == (0.985, 0.985)
            assert np.mean(cascade.run_batch(images).labels == demo.run_batch(images).labels) >= 0.9999


def test_the_commands_take_r_or_r2_r3(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for parser in (run.build_parser(), bench.build_parser()):
        base = ["-o", "out"] if parser.prog == "lc-run" else []
        assert parser.parse_args([*base, "--rho", "0.9,0.95"]).rho == (0.9, 0.95)
        assert parser.parse_args([*base, "--rho", "0.9"]).rho == (0.9, 0.9)
    assert evaluate.build_parser().parse_args(["--rho", "1,0.9"]).rho == (1.0, 0.9)
    out = tmp_path / "out"
    assert run_cli(run.main, ["-o", str(out), "--rho", "0.9,0.95", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["rho"] == [0.9, 0.95]
    assert run_cli(bench.main, ["--rho", "0.9,0.95", "--iters", "1", "--warmup", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rho"] == [0.9, 0.95]
    assert run_cli(evaluate.main, [str(DEMO_MODEL), "--limit", "1", "--rho", "0.9,0.95", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rho"] == [0.9, 0.95]


@pytest.mark.parametrize("value", ["0.9,abc", "0.9,0.9,0.9", "0.9,", ",0.9", "nan", "0.9,1.5", "0,0.9"])
def test_bad_rho_options_exit_2_naming_the_option(value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main(["-o", "out", "--rho", value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("lc-run: error: argument --rho: rho ")
