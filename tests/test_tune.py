"""lc-tune (runtime/tune.py, cli/tune.py): the grid, the frontier, the choice for each kind of budget, the tuned
copy of the model dir, and the command's output.

The choice is tested on measured mIoU with latencies injected (``timed_blocks`` replaced by fixed ones), so no
test depends on this machine's timing; one run times for real with a budget every setting meets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layercascade.cli import tune as tune_cli
from layercascade.contract import check_rho
from layercascade.errors import LCError, run_cli
from layercascade.manifest import model_hash, read_cascade_manifest, sha256_file
from layercascade.model.data import open_dataset
from layercascade.runtime import tune
from layercascade.runtime.control import read_frontier
from layercascade.runtime.registry import auto_backend
from layercascade.runtime.tune import Budget, choose_setting, grid_pairs, pareto_front

# A small grid: (0.95, 0.95), (0.9, 0.95), (0.9, 0.9), and the demo model's default (0.985, 0.985).
SMALL = ["--grid", "0.95,0.9", "--limit", "3", "--iters", "2", "--warmup", "0"]


def injected_ms(setting) -> float:
    """The latency the tests give each setting ((ρ₂, ρ₃), per-class thresholds): lower thresholds stop more pixels
    early, so run faster; a class's own threshold counts the less, the fewer pixels it decides."""
    (rho2, rho3), rho_class = setting
    return round(100 * (rho2 + rho3) + 10 * sum(value - rho2 for _, value in rho_class), 3)


@pytest.fixture
def fixed_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """``timed_blocks`` with :func:`injected_ms` for every setting (each step still runs once)."""
    def timed_blocks(steps, iters, warmup, progress):
        for step in steps.values():
            step()
        return {setting: [injected_ms(setting)] * iters for setting in steps}

    monkeypatch.setattr(tune, "timed_blocks", timed_blocks)


def point(rho, ms: float, miou: float, reference_miou: float = 70.0, default: bool = False) -> dict:
    return {"rho": rho, "median_ms": ms, "fps": round(1e3 / ms, 2), "miou": miou,
            "miou_drop": round(reference_miou - miou, 4), "default": default}


POINTS = [point(0.985, 10.0, 70.0, default=True), point([0.9, 0.99], 6.0, 70.3), point(0.9, 5.0, 69.5),
          point([0.95, 0.99], 8.0, 70.6), point(1.0, 20.0, 60.0), point([0.97, 0.99], 8.0, 70.4)]


def tune_json(capsys, *argv: str) -> dict:
    assert run_cli(tune_cli.main, [*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- the grid and the frontier --------------------------------------------------------------------------------------
def test_grid_pairs_keep_rho3_at_least_rho2() -> None:
    assert grid_pairs([0.9, 1, 0.95, 0.9]) == [(1.0, 1.0), (0.95, 1.0), (0.95, 0.95), (0.9, 1.0), (0.9, 0.95),
                                               (0.9, 0.9)]
    with pytest.raises(LCError, match=r"rho must be a number in \(0, 1\]"):
        grid_pairs([0.9, 1.5])


def test_pareto_front_keeps_what_nothing_beats() -> None:
    front = pareto_front(POINTS, "median_ms", "miou")
    assert [p["rho"] for p in front] == [0.9, [0.9, 0.99], [0.95, 0.99]]


# -- the choice -------------------------------------------------------------------------------------------------------
def test_latency_budget_picks_the_most_accurate_setting_within_it() -> None:
    assert choose_setting(POINTS, Budget("target_ms", 7.0))["rho"] == [0.9, 0.99]
    assert choose_setting(POINTS, Budget("target_ms", 8.0))["rho"] == [0.95, 0.99]
    assert choose_setting(POINTS, Budget("target_ms", 100.0))["rho"] == [0.95, 0.99]
    # 125 images/s is 8 ms per image at batch 1.
    assert choose_setting(POINTS, Budget("target_fps", 125.0))["rho"] == [0.95, 0.99]
    assert choose_setting(POINTS, Budget("target_fps", 150.0))["rho"] == [0.9, 0.99]


def test_equal_mious_go_to_the_faster_setting() -> None:
    points = [point(0.97, 9.0, 71.0), point(0.95, 7.0, 71.0), point(0.985, 10.0, 70.0, default=True)]
    assert choose_setting(points, Budget("target_ms", 10.0))["rho"] == 0.95


def test_accuracy_budget_picks_the_fastest_setting_within_it() -> None:
    assert choose_setting(POINTS, Budget("max_miou_drop", 0.0))["rho"] == [0.9, 0.99]
    assert choose_setting(POINTS, Budget("max_miou_drop", 0.5))["rho"] == 0.9
    assert choose_setting(POINTS, Budget("max_miou_drop", 0.4))["rho"] == [0.9, 0.99]


def test_a_budget_none_meets_names_the_closest_setting() -> None:
    with pytest.raises(LCError) as error:
        choose_setting(POINTS, Budget("target_ms", 4.0))
    message = str(error.value)
    assert "no setting of the 6 measured meets --target-ms 4" in message
    assert "the closest is the fastest, ρ = 0.9: 5.00 ms per run, 200.0 images/s, mIoU 69.50" in message
    with pytest.raises(LCError, match="meets --target-fps 500 .* the closest is the fastest, ρ = 0.9"):
        choose_setting(POINTS, Budget("target_fps", 500.0))


def test_budgets_are_checked() -> None:
    with pytest.raises(LCError, match="--target-ms must be a finite number above 0, got 0"):
        Budget("target_ms", 0.0)
    with pytest.raises(LCError, match="--max-miou-drop must be a finite number of 0 or more, got -1"):
        Budget("max_miou_drop", -1.0)
    with pytest.raises(LCError, match="--target-fps must be a finite number above 0, got nan"):
        Budget("target_fps", float("nan"))
    with pytest.raises(LCError, match="--target-ms must be a finite number above 0, got inf"):
        Budget("target_ms", float("inf"))
    assert Budget("max_miou_drop", 0.0).value == 0.0  # as accurate as the default: a budget its message allows


# -- the command ------------------------------------------------------------------------------------------------------
def test_tune_for_a_latency_budget(demo_fp32: Path, tmp_path: Path, capsys, fixed_latency: None) -> None:
    """The choice on the 2×2 grid (+ the default) with injected latencies; the tuned copy, the record, the plot."""
    from layercascade.runtime.cascade import Cascade

    before = {name: sha256_file(demo_fp32 / name) for name in ("lc.json", *read_cascade_manifest(demo_fp32)["files"])}
    output, plot = tmp_path / "tuned", tmp_path / "frontier.png"
    result = tune_json(capsys, str(demo_fp32), "--data", "synthetic", *SMALL, "--target-ms", "186", "-o", str(output),
                       "--plot", str(plot))

    assert set(result) >= {"points", "frontier", "reference", "chosen", "budget", "output", "plot", "machine",
                           "backend", "size", "batch", "data", "grid", "iters", "timing_images"}
    pairs = {tuple(check_rho(p["rho"])) for p in result["points"]}
    assert pairs == {(0.95, 0.95), (0.9, 0.95), (0.9, 0.9), (0.985, 0.985)}
    assert result["reference"]["rho"] == 0.985 and result["reference"]["miou_drop"] == 0
    for p in result["points"]:
        assert p["median_ms"] == injected_ms((check_rho(p["rho"]), ())) and p["runs"] == 2
        assert set(p) >= {"p90_ms", "p99_ms", "fps", "miou", "stage_fractions", "default", "on_frontier"}
    # The most accurate of the settings at ≤ 186 ms: (0.9, 0.95) at 185 ms and (0.9, 0.9) at 180 ms.
    meeting = [p for p in result["points"] if p["median_ms"] <= 186]
    assert {tuple(check_rho(p["rho"])) for p in meeting} == {(0.9, 0.95), (0.9, 0.9)}
    assert result["chosen"] == max(meeting, key=lambda p: (p["miou"], -p["median_ms"]))
    assert result["budget"] == {"target_ms": 186.0}
    assert result["frontier"] == [p for p in sorted(result["points"], key=lambda p: p["median_ms"]) if p["on_frontier"]]

    chosen = check_rho(result["chosen"]["rho"])
    assert result["output"] == str(output.resolve()) and result["plot"] == str(plot)
    manifest = read_cascade_manifest(output)  # every file re-hashed and verified
    assert manifest["default_rho"] == list(chosen)
    assert model_hash(manifest) == model_hash(read_cascade_manifest(demo_fp32))  # the graphs are the same
    record = manifest["tuning"]
    assert record["budget"] == {"target_ms": 186.0} and record["chosen"]["rho"] == result["chosen"]["rho"]
    assert record["previous_default"]["rho"] == 0.985 and record["backend"] == auto_backend(demo_fp32)
    assert record["data"] == {"spec": "synthetic", "split": "val", "seed": 0, "images": 3}
    assert {"machine", "date", "grid", "batch", "iters", "source", "size"} <= set(record)
    # The frontier, for lc-serve --target-ms: what the run measured, fastest first, read back as one.
    assert record["frontier"] == [{key: p[key] for key in ("rho", "median_ms", "p90_ms", "miou")}
                                  for p in result["frontier"]]
    frontier = read_frontier(manifest, output / "lc.json")
    assert [p.rho for p in reversed(frontier.points)] == [tuple(check_rho(p["rho"])) for p in result["frontier"]]
    assert frontier.reference_miou == result["reference"]["miou"]
    with Cascade.load(output) as tuned:
        assert tuned.default_rho == chosen
        images = np.zeros((1, *tuned.input_size, 3), np.uint8)
        assert tuned.run_batch(images).labels.shape == (1, *tuned.input_size)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {name: sha256_file(demo_fp32 / name) for name in before} == before  # the source is untouched


def test_tune_for_an_accuracy_budget_prints_the_frontier(demo_fp32: Path, tmp_path: Path, capsys,
                                                        fixed_latency: None) -> None:
    output = tmp_path / "tuned"
    assert run_cli(tune_cli.main, [str(demo_fp32), "--data", "synthetic", *SMALL, "--max-miou-drop", "0", "-o",
                                   str(output), "--no-plot"]) == 0
    text = capsys.readouterr().out
    manifest = read_cascade_manifest(output)
    assert "| ρ " in text and "median ms" in text and "mIoU" in text and "previous default" in text
    assert "budget: mIoU at most 0 below the default's → ρ = " in text and f"wrote {output}" in text
    assert not list(tmp_path.glob("*.png"))
    # The fastest setting at least as accurate as the default, found from the same measurements again.
    result = tune_json(capsys, str(demo_fp32), "--data", "synthetic", *SMALL, "--max-miou-drop", "0", "-o",
                       str(tmp_path / "again"), "--no-plot")
    within = [p for p in result["points"] if p["miou"] >= result["reference"]["miou"]]
    assert result["chosen"] == min(within, key=lambda p: (p["median_ms"], -p["miou"]))
    assert manifest["default_rho"] == list(check_rho(result["chosen"]["rho"]))
    assert result["plot"] is None


def test_tune_one_class(demo_fp32: Path, tmp_path: Path, capsys, fixed_latency: None) -> None:
    """--tune-class NAME: that class's threshold at each grid value (plus the default, no per-class threshold),
    the pair at the model's default; the tuned copy runs with the chosen one as its default_rho_class, which a
    run's own rho_class overrides and which a second --tune-class keeps for the other classes."""
    from layercascade.runtime.cascade import Cascade

    output = tmp_path / "tuned"
    result = tune_json(capsys, str(demo_fp32), "--data", "synthetic", *SMALL, "--tune-class", "background",
                       "--max-miou-drop", "100", "-o", str(output), "--no-plot")
    assert result["tune_class"] == "background"
    settings = [(p["rho"], p["rho_class"]) for p in result["points"]]
    assert settings == [(0.985, {"background": 0.95}), (0.985, {"background": 0.9}), (0.985, {})]
    assert result["reference"]["rho_class"] == {} and result["reference"]["default"]
    for p in result["points"]:
        class_setting = tuple((0, v) for v in p["rho_class"].values())
        assert p["median_ms"] == injected_ms(((0.985, 0.985), class_setting))
    assert result["chosen"]["rho_class"] == {"background": 0.9}  # the fastest within a drop of 100 points
    manifest = read_cascade_manifest(output)
    assert manifest["default_rho_class"] == {"background": 0.9} and manifest["default_rho"] == [0.985, 0.985]
    assert manifest["tuning"]["tune_class"] == "background"
    assert manifest["tuning"]["chosen"]["rho_class"] == {"background": 0.9}
    # Its grid holds one (ρ₂, ρ₃): no frontier for --target-ms / --target-fps to move along.
    assert "frontier" not in manifest["tuning"]
    with pytest.raises(LCError, match="records no latency frontier"):
        read_frontier(manifest, output / "lc.json")
    images = np.stack([open_dataset("synthetic", "val", limit=1)[0][0]])
    with Cascade.load(output, backend="ort") as tuned, Cascade.load(demo_fp32, backend="ort") as source:
        assert tuned.default_rho_class == {0: 0.9}
        expected = source.run_batch(images, rho_class={"background": 0.9})
        assert np.array_equal(tuned.run_batch(images).mask2, expected.mask2)
        assert np.array_equal(tuned.run_batch(images, rho_class={}).mask2, source.run_batch(images).mask2)
    again = tune_json(capsys, str(output), "--data", "synthetic", *SMALL, "--tune-class", "person",
                      "--max-miou-drop", "100", "-o", str(tmp_path / "again"), "--no-plot")
    assert {"background": 0.9, "person": 0.9} in [p["rho_class"] for p in again["points"]]
    assert again["reference"]["rho_class"] == {"background": 0.9}
    with pytest.raises(LCError, match=r"rho_class: 'unicorn' is not a class of this model \(background, "):
        tune_cli.main([str(demo_fp32), "--data", "synthetic", *SMALL, "--tune-class", "unicorn", "--target-ms", "5",
                       "-o", str(tmp_path / "never"), "--no-plot"])
    assert not (tmp_path / "never").exists()


def test_a_budget_none_meets_writes_nothing(demo_fp32: Path, tmp_path: Path, capsys, fixed_latency: None) -> None:
    output = tmp_path / "tuned"
    assert run_cli(tune_cli.main, [str(demo_fp32), "--data", "synthetic", *SMALL, "--target-fps", "100", "-o",
                                   str(output), "--plot", str(tmp_path / "p.png")]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "no setting of the 4 measured meets --target-fps 100" in captured.err
    assert "the closest is the fastest, ρ = 0.9: 180.00 ms per run, 5.6 images/s" in captured.err
    assert "| ρ " in captured.out  # the frontier, to pick a budget from
    assert not output.exists() and not (tmp_path / "p.png").exists()


def test_tune_times_for_real(demo_fp32: Path, tmp_path: Path, capsys) -> None:
    """Unmocked timing with a budget every setting meets: the most accurate setting, whatever the times."""
    result = tune_json(capsys, str(demo_fp32), "--data", "synthetic", "--grid", "0.9", "--limit", "2", "--iters", "1",
                       "--warmup", "0", "--target-ms", "1e9", "-o", str(tmp_path / "tuned"), "--no-plot")
    assert len(result["points"]) == 2 and all(p["median_ms"] > 0 for p in result["points"])
    assert result["chosen"]["miou"] == max(p["miou"] for p in result["points"])


def test_the_output_never_replaces_the_model(demo_fp32: Path, tmp_path: Path) -> None:
    for output in (demo_fp32, demo_fp32 / "sub", demo_fp32.parent):
        with pytest.raises(LCError, match="would overwrite the model dir"):
            tune_cli.main([str(demo_fp32), "--data", "synthetic", "--target-ms", "5", "-o", str(output)])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LCError, match="exists and is not a layercascade model directory"):
        tune_cli.main([str(demo_fp32), "--data", "synthetic", "--target-ms", "5", "-o", str(tmp_path)])
    with pytest.raises(LCError, match="export the checkpoint first"):
        tune_cli.main([str(tmp_path / "model.pt"), "--data", "synthetic", "--target-ms", "5"])


def test_data_and_one_budget_are_required(capsys) -> None:
    for argv in (["--target-ms", "5"], ["--data", "synthetic"],
                 ["--data", "synthetic", "--target-ms", "5", "--target-fps", "10"]):
        with pytest.raises(SystemExit) as exit_:
            tune_cli.main(argv)
        assert exit_.value.code == 2
    capsys.readouterr()


def test_default_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from layercascade.runtime.inputs import DEMO_MODEL

    monkeypatch.chdir(tmp_path)
    assert tune.default_output(tmp_path / "models" / "voc512") == tmp_path / "models" / "voc512_tuned"
    assert tune.default_output(DEMO_MODEL) == tmp_path / "demo_model_tuned"


# -- the tuned copy of other model dirs -------------------------------------------------------------------------------
def test_a_tuned_int8_dir_keeps_its_quantization_record(demo_int8, tmp_path: Path) -> None:
    from layercascade.runtime.cascade import Cascade
    from layercascade.runtime.compare import precision_sources

    int8_dir, record, _ = demo_int8
    output = tune.write_tuned_dir(int8_dir, tmp_path / "tuned", (0.9, 0.95), {"budget": {"target_ms": 5.0}})
    manifest = read_cascade_manifest(output)
    assert manifest["quantization"] == read_cascade_manifest(int8_dir)["quantization"]
    assert manifest["default_rho"] == [0.9, 0.95] and manifest["tuning"] == {"budget": {"target_ms": 5.0}}
    assert set(precision_sources(output, ["fp32", "int8"])) == {"fp32", "int8"}  # its fp32 source still matches
    with Cascade.load(output) as cascade:
        assert cascade.default_rho == (0.9, 0.95)


def test_a_tuned_dir_loads_on_openvino(demo_fp32: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'layercascade[openvino]')")
    from layercascade.runtime.cascade import Cascade

    output = tune.write_tuned_dir(demo_fp32, tmp_path / "tuned", (0.95, 0.99), {})
    with Cascade.load(output, backend="openvino") as cascade:
        assert cascade.default_rho == (0.95, 0.99)


def test_a_tuned_engine_dir_keeps_its_engines(tmp_path: Path) -> None:
    from layercascade.runtime.trt.engines import is_engine_dir, read_metadata
    from layercascade.tests.fake_tensorrt import fake_engine_dir

    engines = fake_engine_dir(tmp_path / "engines")
    output = tune.write_tuned_dir(engines, tmp_path / "tuned", (0.95, 0.99), {})
    manifest = read_cascade_manifest(output)
    assert is_engine_dir(output) and read_metadata(output) == read_metadata(engines)
    assert manifest["engines"] == read_cascade_manifest(engines)["engines"]
    assert manifest["default_rho"] == [0.95, 0.99]
