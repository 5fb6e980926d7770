"""Dynamic-size exports on OpenVINO (each size its own compiled model, a bounded cache of them) and lc-bench --size:
at every size the labels of ONNX Runtime and of a fixed-size export at that size; the cache compiles once per size
and keeps at most its bound; lc-bench times a dynamic export at a size it takes and refuses the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layercascade.cli import bench as bench_cli
from layercascade.errors import LCError, run_cli
from layercascade.export.stages import export_model
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.timing import forced_masks
from layercascade.tests.helpers import random_images, sharpened_checkpoint

BOUNDS = ((16, 16), (96, 128))
NOMINAL = (64, 64)
SIZES = [(16, 96), (96, 40), (72, 128)]  # besides the nominal size; each has a fixed export too
RHOS = (None, 0.9, (1.0, 0.9))


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[int, int], Path]]:
    """A dynamic-size export of a small model (nominal size :data:`NOMINAL`), and fixed-size exports of the same
    weights at each of :data:`SIZES`."""
    folder = tmp_path_factory.mktemp("openvino_dynamic")
    checkpoint = sharpened_checkpoint("tiny", NOMINAL)
    dynamic = export_model(checkpoint, folder / "dynamic", dynamic_size=BOUNDS)
    return dynamic, {size: export_model(checkpoint, folder / f"fixed{size[0]}x{size[1]}", input_size=size)
                     for size in SIZES}


@pytest.fixture(scope="module")
def openvino() -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'layercascade[cpu]')")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.mean(a == b))


def test_fp32_labels_at_each_size_are_onnx_runtimes_and_a_fixed_exports(exports, openvino) -> None:
    """The joined cascade, forced masks, the stages one by one and the dense network, each at the run's size."""
    dynamic, fixed = exports
    with Cascade.load(dynamic, backend="openvino", precision="fp32") as ov, \
            Cascade.load(dynamic, backend="ort") as ort:
        for size in [NOMINAL, *SIZES]:
            images = random_images(2, size, seed=size[0])
            references = [ort] + ([Cascade.load(fixed[size], backend="openvino", precision="fp32")]
                                  if size in fixed else [])
            for image in images:
                batch = image[None]
                for rho in RHOS:
                    ours = ov.run_batch(batch, rho)
                    assert ours.labels.shape == (1, *size)
                    assert ours.stage_counts.sum() == size[0] * size[1] // 64
                    for reference in references:
                        assert agreement(ours.labels, reference.run_batch(batch, rho).labels) >= 0.9999, (size, rho)
                masks = forced_masks(ours.mask2.shape, (0.3, 0.15))
                forced = ov.run_batch(batch, 0.985, masks)
                np.testing.assert_array_equal(forced.mask3, masks[1])
                assert agreement(forced.labels, ort.run_batch(batch, 0.985, masks).labels) >= 0.9999
                stages = ov.runner.run_stages(batch, ov.rho(0.9))
                assert agreement(stages.labels, ort.run_batch(batch, 0.9).labels) >= 0.9999
            dense = ov.runner.dense_runner(ov.manifest).infer({"image": images[:1]})["labels"]
            expected = ort.runner.dense_runner(ort.manifest).infer({"image": images[:1]})["labels"]
            assert agreement(dense, expected) >= 0.9999
            for reference in references[1:]:
                reference.close()


def test_the_cache_compiles_once_per_size_and_keeps_at_most_its_bound(exports, openvino) -> None:
    from layercascade.runtime.openvino.runner import COMPILED_SIZES, OvRunner, SizedRunner

    dynamic, fixed = exports
    with Cascade.load(fixed[SIZES[0]], backend="openvino", precision="fp32") as static:
        assert isinstance(static.runner.joined, OvRunner)  # a fixed-size export compiles once, as it is
    with Cascade.load(dynamic, backend="openvino", precision="fp32") as ov:
        joined = ov.runner.joined
        assert isinstance(joined, SizedRunner)
        assert (joined.compiles, joined.sizes) == (1, [NOMINAL])  # the nominal size is compiled at load
        sizes = [NOMINAL, (16, 16), (24, 16), (16, 24), (32, 32)]
        assert len(sizes) == COMPILED_SIZES + 1
        first = {}
        for size in sizes:
            for seed in range(2):  # a stream of one size compiles once
                out = ov.run_batch(random_images(1, size, seed))
                first.setdefault(size, out.labels)
        assert joined.compiles == len(sizes)
        assert joined.sizes == sizes[1:]  # the least recently used went
        ov.run_batch(random_images(1, sizes[1], 0))  # kept: no compile, and now the most recently used
        assert joined.compiles == len(sizes) and joined.sizes[-1] == sizes[1]
        again = ov.run_batch(random_images(1, NOMINAL, 0))  # dropped: compiled again, same labels
        assert joined.compiles == len(sizes) + 1 and len(joined.sizes) == COMPILED_SIZES
        np.testing.assert_array_equal(again.labels, first[NOMINAL])
        assert sizes[2] not in joined.sizes  # the least recently used of the kept ones went


def test_a_sized_runner_keeps_the_most_recently_used_and_refuses_inputs_of_two_sizes() -> None:
    """The cache's bookkeeping with a stand-in compile (no OpenVINO)."""
    from layercascade.runtime.openvino.loader import implied_dimensions
    from layercascade.runtime.openvino.runner import SizedRunner

    compiled: list[dict] = []

    class Echo:
        last_ms = 0.0

        def __init__(self, dims: dict) -> None:
            self.dims = dims

        def infer(self, feeds: dict) -> dict:
            return {"dims": self.dims}

    def compile_at(dims: dict) -> Echo:
        compiled.append(dims)
        return Echo(dims)

    sized = [("image", 1, "height"), ("image", 2, "width"), ("mask", 2, "stage_height"), ("mask", 3, "stage_width"),
             ("scores", 2, "stage_height"), ("scores", 3, "stage_width")]
    runner = SizedRunner(compile_at, sized, implied_dimensions, "graph",
                         {"height": 16, "width": 24, "stage_height": 2, "stage_width": 3, "other": 5}, capacity=2)
    assert compiled == [{"height": 16, "width": 24, "stage_height": 2, "stage_width": 3}]

    def feeds(height: int, width: int, scores: tuple[int, int] | None = None) -> dict:
        stage = (height // 8, width // 8)
        return {"image": np.zeros((1, height, width, 3)), "mask": np.zeros((1, 1, *stage)),
                "scores": np.zeros((1, 21, *(scores or stage)))}

    assert runner.infer(feeds(32, 16))["dims"] == {"height": 32, "width": 16, "stage_height": 4, "stage_width": 2}
    runner.infer(feeds(16, 24))
    runner.infer(feeds(40, 8))  # evicts 32x16, not 16x24 (used more recently)
    assert runner.sizes == [(16, 24, 2, 3), (40, 8, 5, 1)] and runner.compiles == len(compiled) == 3
    with pytest.raises(LCError, match="^graph: scores has stage_width 4, not 3; give inputs of one size$"):
        runner.infer(feeds(16, 24, scores=(2, 4)))
    assert runner.compiles == 3
    stage = SizedRunner(compile_at, sized[2:], implied_dimensions, "stage", {"stage_height": 2, "stage_width": 3})
    with pytest.raises(LCError, match="^stage: scores has stage_height 3, not 2; give inputs of one size$"):
        stage.infer(feeds(16, 24, scores=(3, 3)))


@pytest.mark.parametrize("backend", ["openvino", "ort"])
def test_lc_bench_times_a_dynamic_export_at_the_size_given(exports, backend: str, capsys,
                                                           request: pytest.FixtureRequest) -> None:
    if backend == "openvino":
        request.getfixturevalue("openvino")
    dynamic, _ = exports
    profile = ["--profile"] if backend == "openvino" else []  # ONNX Runtime's profiler is tested in test_runtime.py
    argv = [str(dynamic), "--backend", backend, "--size", "16x96", "--iters", "2", "--warmup", "0", "--json",
            "--active-fraction", "0.5,0.25", "--per-stage", "--peers", *profile]
    assert run_cli(bench_cli.main, argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["size"] == [16, 96] and result["backend"] == backend
    assert result["forced_active_fractions"] == [0.5, 0.25] and sum(result["stage_fractions"]) == pytest.approx(1)
    assert set(result["stages_ms"]) == {"stage1", "stage2", "stage3"}
    assert result["peers"]["ort"]["runs"] == 2
    if backend == "openvino":
        assert result["peers"]["openvino"]["runs"] == 2 and result["profile"]["kernel_ms"] > 0
    assert run_cli(bench_cli.main, [str(dynamic), "--backend", backend, "--iters", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == list(NOMINAL)


def test_lc_bench_refuses_a_size_the_export_does_not_take(exports, capsys) -> None:
    dynamic, fixed = exports
    fixed_dir = fixed[SIZES[0]]
    cases = {
        (dynamic, "20x96"): f"--size 20x96: {dynamic} takes H, W (multiples of 8, 16 <= H <= 96, 16 <= W <= 128)",
        (dynamic, "104x96"): "--size 104x96: ",
        (dynamic, "8x96"): "--size 8x96: ",
        (fixed_dir, "64x64"): f"--size 64x64: {fixed_dir} takes 16x96 images only; export it for 64x64 "
                              "(lc-export --input-size 64x64) or with --dynamic-size",
    }
    for (model, size), message in cases.items():
        assert run_cli(bench_cli.main, [str(model), "--backend", "ort", "--size", size, "--iters", "1"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert run_cli(bench_cli.main, [str(fixed_dir), "--backend", "ort", "--size", "16x96", "--iters", "1",
                                    "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == [16, 96]
    assert run_cli(bench_cli.main, [str(dynamic), "--backend", "ort", "--size", "16x96", "--compare", "fp32"]) == 1
    assert "--compare times the model at its input size (64x64)" in capsys.readouterr().err
