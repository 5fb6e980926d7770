"""The confidence map (issue 26): stage 3's ``confidence`` output against the PyTorch reference on every backend
here, the graph's formula against softmax, the cascade's own invariant (a pixel stops at stage k only above ρ),
the placement round trip, lc-run --outputs, lc-serve's answer, and model dirs exported before it."""

from __future__ import annotations

import base64
import functools
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from layercascade.errors import LCError, run_cli
from layercascade.export.graph import GraphBuilder
from layercascade.export.stages import confidence as confidence_node
from layercascade.model.checkpoint import load_checkpoint
from layercascade.model.data.images import read_rgb
from layercascade.model.data.placement import SCALE, upsample_stage_map
from layercascade.model.network import normalize
from layercascade.model.region import confidence, fuse_scores
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import SAMPLES
from layercascade.serve.http import (
    HTTPProblem,
    Limits,
    RhoUsed,
    check_answer_outputs,
    check_segment_request,
    segment_answer,
    wants_json,
)
from layercascade.tests.helpers import synthetic_images, version2_copy

JPEG = SAMPLES / "synthetic-240x320.jpg"
RHO = (0.9, 0.95)
# What each backend's confidence may differ from the PyTorch reference's by (same masks, fp32).
TOLERANCE = {"ort": 1e-5, "openvino": 1e-4, "torch": 1e-5}
LOADS = {"ort": (None, {}), "openvino": (None, {"precision": "fp32"}), "torch": (None, {})}


@pytest.fixture(scope="module")
def demo() -> Cascade:
    with Cascade.load(None, backend="ort") as cascade:
        yield cascade


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Two images, the PyTorch reference's confidence of their fused scores (N, h, w) at :data:`RHO` and its
    masks."""
    images = synthetic_images(2)
    checkpoint = load_checkpoint()
    with torch.inference_mode():
        out = checkpoint.build_model()(normalize(torch.from_numpy(images), checkpoint.mean, checkpoint.std), RHO)
        expected = confidence(fuse_scores(out.scores, out.masks))[:, 0].numpy()
    return images, expected, tuple(m.float().numpy() for m in out.masks)


@pytest.mark.parametrize("backend", list(LOADS))
def test_the_confidence_output_is_the_references(backend: str, reference) -> None:
    """With the reference's masks forced, each backend's confidence is the max softmax of the reference's fused
    scores, pixel for pixel."""
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed")
    images, expected, masks = reference
    source, options = LOADS[backend]
    with Cascade.load(source, backend=backend, **options) as cascade:
        assert cascade.has_confidence
        for batch in range(len(images)):  # the demo is exported at batch 1
            out = cascade.run_batch(images[batch:batch + 1], RHO, (masks[0][batch:batch + 1], masks[1][batch:batch + 1]))
            assert out.confidence.dtype == np.float32 and out.confidence.shape == expected[batch:batch + 1].shape
            np.testing.assert_allclose(out.confidence, expected[batch:batch + 1], atol=TOLERANCE[backend])


@functools.cache
def confidence_session() -> Any:
    """ONNX Runtime running stage 3's confidence nodes alone, on channels-last scores of any shape."""
    import onnxruntime

    g = GraphBuilder("confidence", 18)
    scores = g.add_input("scores", onnx.TensorProto.FLOAT, ["n", "h", "w", "classes"])
    g.add_output(confidence_node(g, scores), onnx.TensorProto.FLOAT, ["n", "h", "w"])
    return onnxruntime.InferenceSession(g.build().SerializeToString(), providers=["CPUExecutionProvider"])


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=5),
                  elements=st.floats(-60, 60, width=32)))
def test_the_graph_computes_one_over_the_partition(scores: np.ndarray) -> None:
    """The exported formula, 1 / Σ_c exp(s_c − max s) over the last axis, is the max softmax probability."""
    (found,) = confidence_session().run(None, {"scores": scores})
    expected = torch.softmax(torch.from_numpy(scores).double(), dim=-1).amax(dim=-1).numpy()
    assert found.shape == scores.shape[:3]
    np.testing.assert_allclose(found, expected, rtol=1e-5)
    assert ((found > 0) & (found <= 1 + 1e-6)).all()


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_a_pixel_stops_at_a_stage_only_above_its_threshold(backend: str) -> None:
    """M₂ = [conf₁ ≤ ρ₂]: a pixel decided at stage 1 has its fused (stage 1) confidence above ρ₂; one decided at
    stage 2 (¬M₃ inside M₂), above ρ₃."""
    images = synthetic_images(2)
    with Cascade.load(None, backend=backend) as cascade:
        for image in images:
            result = cascade(image, RHO)
            first, second = result.stage_map == 1, result.stage_map == 2
            assert first.any() and second.any()
            assert (result.confidence[first] > RHO[0]).all()
            assert (result.confidence[second] > RHO[1]).all()


def test_an_int8_dir_carries_it(demo_int8: tuple[Path, dict, Path]) -> None:
    """lc-calibrate's QDQ graphs keep stage 3's confidence output, and the stop invariant holds on them."""
    with Cascade.load(demo_int8[0], backend="ort") as cascade:
        assert cascade.has_confidence
        result = cascade(synthetic_images(1)[0], RHO)
    assert result.confidence.shape == result.stage_map.shape
    assert (result.confidence[result.stage_map == 1] > RHO[0]).all()


@pytest.fixture(scope="module")
def dynamic_size(dynamic_size_model: Path) -> Cascade:
    with Cascade.load(dynamic_size_model, backend="ort") as cascade:
        yield cascade


@pytest.mark.parametrize(("mode", "size"), [("fit", (240, 320)), ("stretch", (97, 61)), ("none", (72, 100)),
                                            ("tiles", (150, 230))])
def test_the_confidence_follows_the_placement(demo: Cascade, dynamic_size: Cascade, mode: str,
                                              size: tuple[int, int]) -> None:
    """At the stage map's shape (padding cropped, tiles stitched) and, at the image's size, in [0, 1]; tiles keep the
    stop invariant of the windows they came from."""
    image = synthetic_images(1, size)[0]
    if mode in ("fit", "stretch"):
        result = demo(image, 0.9, resize=mode)
    else:
        tile = (64, 64) if mode == "tiles" else None
        result = dynamic_size(image, 0.9, resize="none", tile=tile)
    assert result.confidence.shape == result.stage_map.shape and result.confidence.dtype == np.float32
    if mode in ("none", "tiles"):
        assert result.stage_map.shape == (-(-size[0] // SCALE), -(-size[1] // SCALE))
    assert (result.confidence[result.stage_map == 1] > 0.9).all()
    full = result.confidence_at_image_size()
    assert full.shape == size and full.dtype == np.float32
    assert 0 <= full.min() and full.max() <= 1
    assert result.confidence.min() - 1e-6 <= full.min() and full.max() <= result.confidence.max() + 1e-6


def test_the_image_size_map_is_the_labels_bilinear_upsampling() -> None:
    """Where the image spans the whole stage grid, the map is PyTorch's 8× bilinear (half-pixel) upsampling, as the
    label map reads the scores; a partly padded last stage pixel stretches the grid over the image."""
    values = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(values)[None, None], scale_factor=SCALE, mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(upsample_stage_map(values, (5, 7), (40, 56)), expected, atol=1e-6)
    constant = upsample_stage_map(np.full((3, 3), 0.25, np.float32), (2.5, 2.2), (20, 1000))
    assert constant.shape == (20, 1000) and np.allclose(constant, 0.25)


def test_lc_run_writes_the_confidence_it_is_asked_for(tmp_path: Path, demo: Cascade) -> None:
    from layercascade.cli import run

    out = tmp_path / "out"
    assert run_cli(run.main, [str(JPEG), "-o", str(out), "--backend", "ort", "--rho", "0.9", "--quiet",
                              "--outputs", "confidence,confidence-npy"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{JPEG.stem}_confidence.png",
                                                            f"{JPEG.stem}_confidence.npy", "summary.json"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] == ["confidence", "confidence-npy"]
    result = demo(read_rgb(JPEG), 0.9)
    picture = Image.open(out / f"{JPEG.stem}_confidence.png")
    assert picture.mode == "I;16" and picture.size == (320, 240)
    levels = np.asarray(picture).astype(np.float64) / 65535
    assert np.abs(levels - result.confidence_at_image_size()).max() <= 1 / 65535
    np.testing.assert_array_equal(np.load(out / f"{JPEG.stem}_confidence.npy"), result.confidence)


def test_lc_run_outputs_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from layercascade.cli import run

    assert run_cli(run.main, [str(JPEG), "-o", str(tmp_path / "a"), "--outputs", "labels,heatmap"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --outputs") and "'heatmap'" in error and "\n" not in error
    # The default set is today's, and only the chosen suffixes take part in name clashes.
    assert run.build_parser().parse_args(["-o", "x"]).outputs == ("labels", "overlay", "stages")
    assert run.build_parser().parse_args(["-o", "x", "--outputs", "stages,labels"]).outputs == ("labels", "stages")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / f"{JPEG.stem}_overlay.jpg").write_bytes(b"the user's")
    assert run_cli(run.main, [str(JPEG), "-o", str(tmp_path / "b"), "--outputs", "labels", "--quiet"]) == 0
    assert (tmp_path / "b" / f"{JPEG.stem}.png").is_file()


def test_a_model_dir_exported_before_it_runs_without(tmp_path: Path, demo: Cascade,
                                                     capsys: pytest.CaptureFixture) -> None:
    from layercascade.cli import run

    old = version2_copy(tmp_path / "old")
    image = read_rgb(JPEG)
    for backend, options in (("ort", {}), ("openvino", {"precision": "fp32"})):
        if backend == "openvino":
            pytest.importorskip("openvino", reason="OpenVINO is not installed")
        with Cascade.load(old, backend=backend, **options) as cascade:
            assert not cascade.has_confidence and cascade.threshold_count == 1  # both read from its graphs
            result = cascade(image, 0.9)
            assert result.confidence is None
            assert np.mean(result.labels == demo(image, 0.9).labels) >= 0.9999
            with pytest.raises(LCError, match="re-export it with lc-export"):
                result.confidence_at_image_size()
    assert run_cli(run.main, [str(JPEG), "-o", str(tmp_path / "a"), "--model", str(old), "--quiet"]) == 0
    assert run_cli(run.main, [str(JPEG), "-o", str(tmp_path / "b"), "--model", str(old), "--outputs",
                              "labels,confidence"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --outputs confidence:") and "re-export it with lc-export" in error
    assert "\n" not in error and not (tmp_path / "b" / f"{JPEG.stem}.png").exists()
    with pytest.raises(HTTPProblem, match="re-export") as refused:
        check_answer_outputs(check_segment_request({}, "outputs=confidence", Limits(), demo.classes),
                             has_confidence=False)
    assert refused.value.status == 400


def test_lc_serve_answers_the_maps_asked_for_in_json(demo: Cascade) -> None:
    query = check_segment_request({}, "outputs=stages,confidence,labels&rho=0.9", Limits(), demo.classes)
    assert query.outputs == ("labels", "confidence", "stages") and query.rho == (0.9, 0.9)
    assert wants_json(None, query) and not wants_json(None, check_segment_request({}, "", Limits(), demo.classes))
    for bad in ("outputs=heatmap", "outputs=", "outputs=labels&outputs=stages"):
        with pytest.raises(HTTPProblem) as refused:
            check_segment_request({}, bad, Limits(), demo.classes)
        assert refused.value.status == 400
    result = demo(read_rgb(JPEG), 0.9)
    body, media_type, _ = segment_answer(result, demo.palette, 1.0, True, RhoUsed(query.rho, "request"),
                                         query.outputs)
    answer = json.loads(body)
    assert media_type == "application/json" and {"labels_png", "confidence_png", "stages_png"} <= set(answer)
    picture = Image.open(io.BytesIO(base64.b64decode(answer["confidence_png"])))
    assert picture.mode == "I;16" and picture.size == (320, 240)
    levels = np.asarray(picture).astype(np.float64) / 65535
    assert np.abs(levels - result.confidence_at_image_size()).max() <= 1 / 65535
    stages = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["stages_png"]))))
    np.testing.assert_array_equal(stages, result.stage_map)

