"""The runtime on real exported models: lc-run end to end; bad model directories and bad
inputs give one clear line, a non-zero exit and nothing partial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from layercascade.cli import bench, run
from layercascade.errors import LCError, run_cli
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.registry import auto_backend
from layercascade.tests.helpers import TINY_SIZE, random_images

STAGE_SIZE = (TINY_SIZE[0] // 8, TINY_SIZE[1] // 8)


@pytest.fixture
def model_dir(tiny_model) -> Path:
    return tiny_model[1]


@pytest.fixture
def broken(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def rewrite_manifest(folder, **changes) -> None:
    path = folder / "lc.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def refresh_hash(folder, name: str) -> None:
    from layercascade.manifest import sha256_file

    manifest = json.loads((folder / "lc.json").read_text())
    manifest["files"][name] = sha256_file(folder / name)
    (folder / "lc.json").write_text(json.dumps(manifest))


def test_truncated_onnx(broken) -> None:
    data = (broken / "stage2.onnx").read_bytes()
    (broken / "stage2.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(LCError, match="stage2.onnx: sha256 does not match"):
        Cascade.load(broken)
    refresh_hash(broken, "stage2.onnx")  # a consistent manifest over a damaged file
    with pytest.raises(LCError, match="stage2.onnx: (corrupt or truncated|ONNX Runtime cannot load)"):
        Cascade.load(broken)


def test_stage_graph_onnx_runtime_rejects(broken) -> None:
    """A stage graph that parses but ONNX Runtime cannot load: the error names that stage's file,
    not the joined graph."""
    import onnx

    model = onnx.load(str(broken / "stage2.onnx"))
    model.graph.node[-1].op_type = "NoSuchOp"
    onnx.save(model, str(broken / "stage2.onnx"))
    refresh_hash(broken, "stage2.onnx")
    with pytest.raises(LCError, match="stage2.onnx: ONNX Runtime cannot load it"):
        Cascade.load(broken)


def test_missing_stage_file(broken) -> None:
    (broken / "stage3.onnx").unlink()
    with pytest.raises(LCError, match="stage3.onnx: missing"):
        Cascade.load(broken)


def test_newer_manifest_and_garbage_manifest(broken) -> None:
    rewrite_manifest(broken, version=7)
    with pytest.raises(LCError, match="newer"):
        Cascade.load(broken)
    (broken / "lc.json").write_text("{not json")
    with pytest.raises(LCError, match="not valid JSON"):
        Cascade.load(broken)
    (broken / "lc.json").unlink()
    with pytest.raises(LCError, match="lc.json: missing"):
        Cascade.load(broken)
    with pytest.raises(LCError, match="no such model directory"):
        Cascade.load(broken / "nowhere")


def test_wrong_inputs(model_dir) -> None:
    cascade = Cascade.load(model_dir)
    with pytest.raises(LCError, match=r"expected \(N, 72, 88, 3\) uint8"):
        cascade.run_batch(np.zeros((1, 72, 72, 3), np.uint8))
    with pytest.raises(LCError, match="batch 1"):
        cascade.run_batch(np.zeros((2, 72, 88, 3), np.uint8))
    with pytest.raises(LCError, match="uint8 RGB image"):
        cascade(np.zeros((10, 10), np.float32))
    for rho in (0.0, 1.5, -1):
        with pytest.raises(LCError, match=r"rho must be a number in \(0, 1\]"):
            cascade(np.zeros((30, 30, 3), np.uint8), rho)
    result = cascade(np.zeros((17, 23, 3), np.uint8), 0.9)  # any size: resized in and out
    assert result.labels.shape == (17, 23) and result.stage_map.shape == STAGE_SIZE


def test_cli_errors_are_one_line_and_leave_nothing(broken, tmp_path, capsys) -> None:
    (broken / "stage1.onnx").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert run_cli(run.main, ["--engine", str(broken), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stage1.onnx" in err
    assert not out.exists() or not any(out.iterdir())
    assert run_cli(bench.main, [str(broken), "--iters", "1"]) == 1
    assert "stage1.onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--rho", "0"])
    assert exit_info.value.code == 2


def test_lc_run_end_to_end(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert run_cli(run.main, ["--engine", str(model_dir), "-o", str(out), "--json", "--rho", "0.9"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 4 and not summary["failed"]
    assert summary["backend"] == auto_backend(model_dir) and summary["precision"] in ("fp32", "bf16")
    files = sorted(p.name for p in out.iterdir())
    assert "summary.json" in files and len(files) == 4 * 3 + 1
    from PIL import Image

    first = summary["results"][0]
    with Image.open(out / first["outputs"][0]) as labels:
        assert labels.mode == "P" and list(labels.size) == first["size"][::-1]


def test_lc_bench_json(model_dir, capsys) -> None:
    assert run_cli(bench.main, [str(model_dir), "--iters", "3", "--warmup", "1", "--json",
                                "--active-fraction", "0.3,0.15"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("cascade", "dense"):
        assert set(result[key]) == {"median_ms", "p90_ms", "p99_ms", "fps", "runs"}
    assert result["stage_fractions"][2] == pytest.approx(0.15, abs=0.1)
    assert result["ideal_speedup"] > 1 and result["speedup"] > 0 and result["machine"]
    assert "stages_ms" not in result
    assert run_cli(bench.main, [str(model_dir), "--iters", "2", "--warmup", "0", "--json", "--per-stage"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages_ms"]
    assert list(stages) == ["stage1", "stage2", "stage3"] and all(ms > 0 for ms in stages.values())
    assert run_cli(bench.main, [str(model_dir), "--size", "64x64", "--iters", "1"]) == 1
    assert "lc-export --input-size 64x64" in capsys.readouterr().err


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "function-body"])
def test_lc_bench_profile_counts_each_conv_once_per_run(model_dir, lower: bool, capsys) -> None:
    """--profile sums ONNX Runtime's kernel events of the timed runs only (not the warmup ones):
    one convolution or GEMM kernel per run for every Conv / RegionConv of the stage graphs."""
    import onnx

    from layercascade.runtime.bench import CONV_KERNELS

    argv = [str(model_dir), "--backend", "ort", "--iters", "3", "--warmup", "2", "--json", "--profile"]
    argv += [] if lower else ["--no-lowering"]
    assert run_cli(bench.main, argv) == 0
    profile = json.loads(capsys.readouterr().out)["profile"]
    convs = sum(node.op_type in ("Conv", "RegionConv")
                for k in (1, 2, 3) for node in onnx.load(str(model_dir / f"stage{k}.onnx")).graph.node)
    assert sum(r["kernels"] for r in profile["op_types"] if r["op"] in CONV_KERNELS) == convs
    assert profile["runs"] == 3 and all(r["ms"] > 0 and r["kernels"] > 0 for r in profile["op_types"])
    assert profile["conv_gemm_ms"] + profile["other_ms"] == pytest.approx(profile["kernel_ms"], abs=2e-3)
    assert profile["kernel_ms"] == pytest.approx(sum(r["ms"] for r in profile["op_types"]), abs=2e-3)
    row_gemms = [r for r in profile["op_types"] if r["op"] in ("Gemm", "FusedGemm")]
    assert bool(row_gemms) == lower  # region convs as row GEMMs; the function bodies run them as dense Convs


def test_lc_bench_profile_table_and_backends(model_dir, capsys) -> None:
    assert run_cli(bench.main, [str(model_dir), "--iters", "2", "--warmup", "0", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "| op type" in out and "convolution & GEMM kernels" in out
    assert run_cli(bench.main, ["--backend", "torch", "--iters", "1", "--profile"]) == 1  # the demo checkpoint
    err = capsys.readouterr().err
    assert "--profile reads " in err and "ONNX Runtime's profiler (--backend ort)" in err
    assert "OpenVINO's per-op counters (PERF_COUNT) (--backend openvino)" in err and "the torch backend has none" in err


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "function-body"])
def test_joined_session_equals_the_stages_run_one_by_one(model_dir, lower: bool) -> None:
    """The ONNX Runtime backend runs the three stage graphs joined into one session; it gives
    what the stage graphs give run one after another, thresholded and with forced masks."""
    from layercascade.runtime.timing import forced_masks

    cascade = Cascade.load(model_dir, backend="ort", lower=lower)
    assert cascade.runner.joined.lowered == lower
    images = random_images(1, TINY_SIZE)
    runs = [(rho, None) for rho in ((1.0, 1.0), (0.985, 0.985), (0.9, 0.9), (0.9, 0.985), (1.0, 0.9))]
    runs.append(((0.985, 0.985), forced_masks((1, 1, *STAGE_SIZE), (0.5, 0.2))))
    for rho, masks in runs:
        joined, one_by_one = cascade.run_batch(images, rho, masks), cascade.runner.run_stages(images, rho, masks)
        np.testing.assert_array_equal(joined.labels, one_by_one.labels)
        np.testing.assert_array_equal(joined.mask2, one_by_one.mask2)
        np.testing.assert_array_equal(joined.mask3, one_by_one.mask3)
        np.testing.assert_array_equal(joined.stage_counts, one_by_one.stage_counts)
        assert set(joined.timings) == {"total"} and set(one_by_one.timings) == {"stage1", "stage2", "stage3", "total"}
    assert 0 < joined.stage_counts[0, 2] < 0.4 * np.prod(STAGE_SIZE)  # the forced run left some pixels before stage 3


def test_joined_lowering_keeps_stage2_rows_for_stage3(model_dir) -> None:
    """In the joined graph stage 3's region convs read stage 2's rows: feat2 is never scattered
    back to a dense map. The scatters left: scores2's into zeros (stage 2's threshold reads it
    densely), and the two score fusions, which write the rows of scores2 and scores3 into the
    scores before them instead of adding their zero-filled maps."""
    import onnx

    from layercascade.export.cascade_graph import cascade_graph
    from layercascade.export.lowering import lower_region_convs

    stages = [onnx.load(str(model_dir / f"stage{k}.onnx")) for k in (1, 2, 3)]
    lowered = lower_region_convs(cascade_graph(stages))
    producers = {o: n for n in lowered.graph.node for o in n.output}
    scatters = [n for n in lowered.graph.node if n.op_type == "ScatterND" and n.name.startswith("lowered/")]
    into = sorted(producers[n.input[0]].op_type for n in scatters)
    assert into == ["ConstantOfShape", "Reshape", "Reshape"]
    assert sum("fuse/" in n.name for n in scatters) == 2


def test_a_cascade_is_a_context_manager_that_releases_its_backend(model_dir) -> None:
    with Cascade.load(model_dir) as cascade:
        assert cascade(np.zeros((20, 30, 3), np.uint8)).labels.shape == (20, 30)
    assert cascade.closed and cascade.runner.joined is None  # the ONNX Runtime sessions are gone
    with pytest.raises(LCError, match="this cascade was closed; load the model again"):
        cascade(np.zeros((20, 30, 3), np.uint8))
    cascade.close()  # closing twice is harmless


def test_backend_settings_are_checked_in_one_place(model_dir) -> None:
    with pytest.raises(LCError, match=r"^--precision fp16: the ort backend runs a model dir at its own precision, "
                                      r"fp32 for .*; lc-doctor and lc-run --help list the backends that have it$"):
        Cascade.load(model_dir, backend="ort", precision="fp16")
    with pytest.raises(LCError, match=r"^--precision int8: .*; make an INT8 dir with lc-calibrate "):
        Cascade.load(model_dir, backend="ort", precision="int8")
    assert Cascade.load(model_dir, backend="ort", precision="fp32").precision == "fp32"
    with pytest.raises(LCError, match=r"^--uint8-activations: not a setting of the torch backend$"):
        Cascade.load(None, backend="torch", uint8_activations=False)
    written = Cascade.load(model_dir, uint8_activations=False)  # the ORT backend's own setting
    assert written.runner.settings["uint8_activations"] is False
