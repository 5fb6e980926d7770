"""The label map (export/labels.py) against PyTorch's bilinear upsampling (half-pixel centres) and argmax: the 8×8
cells on static and on symbolic sizes, and the Resize path, on random scores where every pixel's class can change."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto

from layercascade.contract import LABELS
from layercascade.export.graph import GraphBuilder
from layercascade.export.labels import SCALE, cell_weights, label_map


def label_graph(classes: int, stage_size: tuple[int, int] | None, input_size: tuple[int, int] | None) -> ort.InferenceSession:
    """A graph of just the label map: scores (N, h, w, C) → labels; symbolic sizes when ``stage_size`` is None."""
    g = GraphBuilder("labels", 18)
    dims = ["h", "w"] if stage_size is None else list(stage_size)
    scores = g.add_input("scores", TensorProto.FLOAT, ["n", *dims, classes])
    label_map(g, scores, classes, input_size, stage_size)
    g.add_output(LABELS, TensorProto.UINT8, ["n", "H", "W"])
    model = g.build()
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def reference(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    nchw = torch.from_numpy(scores).permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(nchw, size=size, mode="bilinear", align_corners=False).argmax(1).numpy()


def agreement(labels: np.ndarray, expected: np.ndarray) -> float:
    assert labels.shape == expected.shape and labels.dtype == np.uint8
    return float((labels == expected).mean())


def test_cell_weights_are_bilinear_and_sum_to_one() -> None:
    weights = cell_weights()
    assert weights.shape == (4, SCALE * SCALE) and np.allclose(weights.sum(0), 1)
    assert np.all(weights * 256 == np.round(weights * 256))  # exact in float32
    # The top-left pixel of a cell sits 1/16 of the way from the top-left corner in each direction.
    assert weights[:, 0] == pytest.approx([(15 / 16) ** 2, 15 / 16 / 16, 15 / 16 / 16, 1 / 256])


@settings(max_examples=12, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), batch=st.integers(1, 2), classes=st.integers(2, 24),
       seed=st.integers(0, 2**16))
def test_cells_on_symbolic_sizes_match_the_reference(height: int, width: int, batch: int, classes: int,
                                                     seed: int) -> None:
    """One graph, any size: what a dynamic-size export runs."""
    session = label_graph(classes, None, None)
    scores = np.random.default_rng(seed).standard_normal((batch, height, width, classes)).astype(np.float32)
    labels = session.run([LABELS], {"scores": scores})[0]
    # Float rounding of exact ties may differ from PyTorch's order of operations: nearly every pixel, not all.
    assert agreement(labels, reference(scores, (SCALE * height, SCALE * width))) >= 0.999


@pytest.mark.parametrize("stage_size", [(1, 1), (3, 5), (20, 20)])
def test_cells_on_static_sizes_match_the_same_graph_on_symbolic_ones(stage_size: tuple[int, int]) -> None:
    """A fixed-size export computes its indices from the shapes, as the dynamic one does: identical labels."""
    classes = 21
    scores = np.random.default_rng(3).standard_normal((2, *stage_size, classes)).astype(np.float32)
    image = (SCALE * stage_size[0], SCALE * stage_size[1])
    static = label_graph(classes, stage_size, image).run([LABELS], {"scores": scores})[0]
    symbolic = label_graph(classes, None, None).run([LABELS], {"scores": scores})[0]
    np.testing.assert_array_equal(static, symbolic)
    assert agreement(static, reference(scores, image)) >= 0.999


def test_sizes_that_are_not_eight_times_the_stage_size_are_resized() -> None:
    classes, stage, image = 5, (6, 8), (44, 60)
    session = label_graph(classes, stage, image)
    scores = np.random.default_rng(5).standard_normal((1, *stage, classes)).astype(np.float32)
    labels = session.run([LABELS], {"scores": scores})[0]
    assert agreement(labels, reference(scores, image)) >= 0.999


def test_a_uniform_map_is_one_class_and_boundaries_are_blended() -> None:
    """Cells whose corners agree take the corner's class without interpolation; a vertical class edge between
    two stage columns falls halfway between their pixel centres."""
    session = label_graph(3, None, None)
    scores = np.zeros((1, 2, 2, 3), np.float32)
    scores[..., 1] = 1.0
    assert (session.run([LABELS], {"scores": scores})[0] == 1).all()
    scores[:, :, 1, :] = [0.0, 0.0, 1.0]  # right column: class 2
    labels = session.run([LABELS], {"scores": scores})[0][0]
    assert (labels[:, :SCALE] == 1).all() and (labels[:, SCALE:] == 2).all()
