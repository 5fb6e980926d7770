"""Per-class thresholds (issue 26): a pixel whose stage-k winner is class c stops only if its confidence exceeds ρ_c.

The rule is ``model/region.py``'s ``next_mask`` with a per-class vector; here: the exported graphs' threshold against
it (a property test), the issue's test on every CPU backend (``person=1``: no pixel labelled person at stage 1 or 2
stops there), a uniform ``rho_class`` equal to plain ρ bit for bit, model dirs exported before per-class thresholds,
and how the commands and the API take them. lc-serve's query: tests/test_serve*.py; Triton: tests/test_triton.py;
TensorRT's runner: tests/test_trt_runtime.py; lc-tune --tune-class: tests/test_tune.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from layercascade.cli import bench, evaluate, run
from layercascade.contract import check_rho_class, rho_class_from_text, rho_vectors, stage_rho
from layercascade.errors import LCError, run_cli
from layercascade.export.session import inference_session
from layercascade.manifest import read_cascade_manifest
from layercascade.model.data import VOC_CLASSES
from layercascade.model.region import confidence, next_mask
from layercascade.runtime.backend import StageOutputs
from layercascade.runtime.cascade import DEMO_MODEL, Cascade
from layercascade.tests.helpers import synthetic_images, version2_copy

PERSON = VOC_CLASSES.index("person")
RHO = 0.7  # low enough that, on the synthetic images, person pixels stop at stages 1 and 2 under one threshold
BACKENDS = [("ort", {}), ("openvino", {"precision": "fp32"}), ("torch", {})]
# How far from its threshold a pixel's confidence may be where two implementations decide it apart (fp32
# rounding of ρ · Σ exp against max softmax).
MARGIN = 1e-5


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_images(8)


@pytest.fixture(scope="module")
def reference() -> Cascade:
    """The PyTorch reference of the demo model (its checkpoint, the dense masked form)."""
    return Cascade.load(None, backend="torch")


def load(backend: str, options: dict) -> Cascade:
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed")
    return Cascade.load(None, backend=backend, **options)


def run_each(cascade: Cascade, images: np.ndarray, rho: object = None, rho_class: object = None) -> StageOutputs:
    """``run_batch`` one image at a time (the demo model takes batch 1), the outputs stacked."""
    outs = [cascade.run_batch(images[k:k + 1], rho, rho_class=rho_class) for k in range(len(images))]
    return StageOutputs(*(np.concatenate([getattr(o, field) for o in outs])
                          for field in ("labels", "mask2", "mask3", "stage_counts")), {})


def assert_masks_match(mask: np.ndarray, expected: torch.Tensor, scores: torch.Tensor, rho: np.ndarray,
                       excused: np.ndarray | None = None) -> np.ndarray:
    """``mask`` equals ``expected`` except where a pixel's confidence lies within :data:`MARGIN` of its winner's
    threshold (or ``excused``); returns the pixels that differ."""
    differ = mask != expected.numpy()
    threshold = rho[scores.argmax(dim=1, keepdim=True).numpy()]
    near = np.abs(confidence(scores).numpy() - threshold) <= MARGIN
    allowed = near if excused is None else near | excused
    assert not (differ & ~allowed).any(), f"{int((differ & ~allowed).sum())} mask pixels differ away from ρ"
    return differ


# -- the rule: the graph's threshold and the reference's ---------------------------------------------------------
def exported_threshold() -> object:
    """An ONNX Runtime session of the demo's stage 2 threshold as exported (cut out of ``stage2.onnx``):
    ``scores`` (N, C, h, w), ``rho`` (C,), ``mask2`` (the region) → ``mask3``."""
    model = onnx.load(DEMO_MODEL / "stage2.onnx")
    scores = next(node.input[0] for node in model.graph.node if node.name == "threshold3/peak")
    cut = onnx.utils.Extractor(model).extract_model([scores, "rho", "mask2"], ["mask3"])
    del cut.graph.value_info[:]
    for graph_input in [*cut.graph.input, *cut.graph.output]:  # any batch and size
        dims = graph_input.type.tensor_type.shape.dim
        for axis, symbol in ((0, "n"), (2, "h"), (3, "w")):
            if len(dims) == 4:
                dims[axis].dim_param = symbol
    return inference_session(cut), scores


THRESHOLD_SESSION, SCORES = exported_threshold()
CLASSES = len(VOC_CLASSES)


@settings(max_examples=40)
@given(scores=arrays(np.float32, (2, CLASSES, 2, 3), elements=st.floats(-8, 8, width=32)),
       rho=arrays(np.float32, (CLASSES,), elements=st.one_of(st.just(1.0), st.floats(0.0625, 1.0, width=32))),
       region=arrays(np.float32, (2, 1, 2, 3), elements=st.sampled_from([0.0, 1.0])))
def test_the_graph_threshold_is_the_reference_rule(scores: np.ndarray, rho: np.ndarray, region: np.ndarray) -> None:
    """The exported test ``ρ[argmax s] · Σ exp(s − max s) ≥ 1`` (∧ the region) is ``next_mask`` with a per-class
    vector: equal except where a pixel's confidence is within fp32 rounding of its winner's threshold."""
    (mask,) = THRESHOLD_SESSION.run(None, {SCORES: scores, "rho": rho, "mask2": region})
    expected = next_mask(torch.from_numpy(scores), torch.from_numpy(rho), torch.from_numpy(region))
    assert_masks_match(mask, expected, torch.from_numpy(scores), rho)
    never = rho[scores.argmax(axis=1)[:, None]] == 1.0
    assert (mask[never] == region[never]).all()  # ρ_c = 1: a pixel won by c never stops early


def test_next_mask_takes_the_winners_threshold() -> None:
    scores = torch.tensor([[[[4.0, 0.0]], [[0.0, 4.0]], [[0.0, 0.0]]]])  # pixel 0 won by class 0, pixel 1 by class 1
    conf = confidence(scores)[0, 0, 0]
    assert conf[0] == conf[1] and 0.9 < conf[0] < 0.99
    assert next_mask(scores, 0.9, None).flatten().tolist() == [0.0, 0.0]  # one threshold: both stop
    per_class = torch.tensor([0.9, 1.0, 0.9])  # class 1 never stops early
    assert next_mask(scores, per_class, None).flatten().tolist() == [0.0, 1.0]
    region = torch.tensor([[[[1.0, 0.0]]]])
    assert next_mask(scores, per_class, region).flatten().tolist() == [0.0, 0.0]  # nested in the region


# -- the test, on every CPU backend ----------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=[b for b, _ in BACKENDS])
def test_person_never_stops_early(backend: str, options: dict, images: np.ndarray, reference: Cascade) -> None:
    """With ``person=1`` no pixel whose stage-1 or stage-2 winner is person stops there (which one threshold does
    stop), and the masks are the reference's ``next_mask`` with the per-class vectors."""
    with load(backend, options) as cascade:
        thresholds = cascade.thresholds(RHO, {"person": 1.0})
        assert thresholds[0][PERSON] == 1.0 and (np.delete(thresholds[0], PERSON) == np.float32(RHO)).all()
        out = run_each(cascade, images, RHO, {"person": 1.0})
        plain = run_each(cascade, images, RHO)  # one threshold
    expected = reference.runner.path.stage_outputs(images, thresholds)
    scores1, scores2 = expected["scores"][:2]
    person1 = scores1.argmax(1, keepdim=True).numpy() == PERSON
    person2 = (scores2.argmax(1, keepdim=True).numpy() == PERSON) & (out.mask2 > 0)
    assert (out.mask2[person1] == 1).all() and (out.mask3[person2] == 1).all()
    # Not vacuous: enough of them are more confident than ρ, which stops them with one threshold for every class.
    confident1, confident2 = (person & (confidence(s).numpy() > RHO) for person, s in ((person1, scores1),
                                                                                       (person2, scores2)))
    assert confident1.sum() >= 10 and confident2.sum() >= 10
    assert (plain.mask2[confident1] == 0).all()
    # The stage maps are the reference's.
    differ2 = assert_masks_match(out.mask2, expected["masks"][0], scores1, thresholds[0])
    assert_masks_match(out.mask3, expected["masks"][1], scores2, thresholds[1], excused=differ2)
    if not differ2.any():
        assert np.mean(out.labels == expected["labels"].numpy()) >= 0.999


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=[b for b, _ in BACKENDS])
def test_a_uniform_rho_class_is_plain_rho(backend: str, options: dict, images: np.ndarray) -> None:
    """Every class at ρ is ρ, bit for bit (and ``{}`` is no per-class threshold)."""
    with load(backend, options) as cascade:
        every = dict.fromkeys(cascade.classes, 0.9)
        plain = run_each(cascade, images[:3], 0.9)
        for rho_class in (every, {}, {"person": 0.9}):
            ours = run_each(cascade, images[:3], 0.9, rho_class)
            for field in ("labels", "mask2", "mask3", "stage_counts"):
                assert np.array_equal(getattr(ours, field), getattr(plain, field)), (field, rho_class)


def test_the_api_takes_names_or_indices_and_checks_them(images: np.ndarray) -> None:
    with Cascade.load(None, backend="ort") as cascade:
        by_name = cascade(images[0], RHO, rho_class={"background": 1.0})
        by_index = cascade(images[0], RHO, rho_class={0: 1.0})
        assert np.array_equal(by_name.stage_map, by_index.stage_map)
        assert by_name.stage_fractions != cascade(images[0], RHO).stage_fractions
        [batched] = cascade.segment_batch([images[0]], RHO, rho_class={"background": 1.0})
        assert np.array_equal(batched.labels, by_name.labels)
        with pytest.raises(LCError, match=r"rho_class: 'unicorn' is not a class of this model \(background, "
                                          r"aeroplane, .*tvmonitor\)$"):
            cascade(images[0], rho_class={"unicorn": 1.0})
        for bad in (0.0, 1.5, float("nan"), "1", True):
            with pytest.raises(LCError, match=r"rho_class: person=.*a threshold must be a number in \(0, 1\]"):
                cascade(images[0], rho_class={"person": bad})
        with pytest.raises(LCError, match="not a class of this model"):
            cascade(images[0], rho_class={21: 1.0})


def test_contract_helpers() -> None:
    assert rho_class_from_text("person=1,car=0.9") == {"person": 1.0, "car": 0.9}
    assert rho_class_from_text("person:1", ":") == {"person": 1.0}
    for bad, message in (("person", "NAME=R"), ("=1", "NAME=R"), ("person=x", "NAME=R"), ("person=0", r"\(0, 1\]"),
                         ("person=2", r"\(0, 1\]"), ("person=1,", "NAME=R"), ("", "NAME=R")):
        with pytest.raises(LCError, match=message):
            rho_class_from_text(bad)
    assert check_rho_class({"car": 0.5, 0: 1}, VOC_CLASSES) == {7: 0.5, 0: 1.0}
    rho2, rho3 = rho_vectors((0.9, 0.95), {7: 0.5}, 21)
    assert rho2.dtype == np.float32 and rho2.shape == (21,) and rho2[7] == rho3[7] == np.float32(0.5)
    assert (np.delete(rho2, 7) == np.float32(0.9)).all() and (np.delete(rho3, 7) == np.float32(0.95)).all()
    assert np.array_equal(stage_rho(rho2, 21), rho2) and stage_rho(0.9, 21).tolist() == [np.float32(0.9)] * 21
    assert stage_rho(np.full(21, 0.9, np.float32), 1).tolist() == [np.float32(0.9)]
    with pytest.raises(LCError, match="exported before per-class thresholds; re-export it with lc-export"):
        stage_rho(rho2, 1)


# -- model dirs exported before per-class thresholds -------------------------------------------------------------
def test_a_model_dir_of_one_threshold_per_stage_still_runs(tmp_path: Path, images: np.ndarray) -> None:
    """Graphs whose ``rho`` is [1] (lc.json version 2) run uniform thresholds on every backend that runs model
    dirs, as the demo did before; per-class thresholds on them are one line."""
    old = version2_copy(tmp_path / "v2")
    manifest = read_cascade_manifest(old)
    assert manifest["version"] == 2 and manifest["stages"][0]["inputs"][1] == {"name": "rho", "dtype": "float32",
                                                                              "shape": [1]}
    with Cascade.load(DEMO_MODEL, backend="ort") as new:
        expected = {rho: run_each(new, images, rho) for rho in (0.9, (0.9, 0.97))}
    for backend, options in BACKENDS[:2]:
        with load(backend, options) as _, Cascade.load(old, backend=backend, **options) as cascade:
            assert cascade.threshold_count == 1 and not cascade.has_confidence  # both read from its graphs
            for rho, theirs in expected.items():
                ours = run_each(cascade, images, rho)
                assert np.array_equal(ours.mask2, theirs.mask2) and np.array_equal(ours.mask3, theirs.mask3)
                assert np.mean(ours.labels == theirs.labels) >= 0.9999
            staged = cascade.runner.run_stages(images[:1], cascade.thresholds(0.9))  # each stage graph alone
            assert np.array_equal(staged.mask2, expected[0.9].mask2[:1])
            with pytest.raises(LCError, match=f"^{old}: per-class thresholds \\(rho_class\\) need a model that takes "
                                              "them; it was exported before per-class thresholds; re-export it "
                                              "with lc-export$"):
                cascade.run_batch(images[:1], 0.9, rho_class={"person": 1.0})
            with pytest.raises(LCError, match="exported before per-class thresholds"):  # the runner's own check
                cascade.runner.run(images[:1], rho_vectors((0.9, 0.9), {0: 1.0}, 21))


def test_commands_refuse_per_class_thresholds_on_an_old_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    old = version2_copy(tmp_path / "v2")
    assert run_cli(run.main, ["-o", str(tmp_path / "out"), "--model", str(old), "--backend", "ort",
                              "--rho-class", "person=1", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "exported before per-class thresholds; re-export it with lc-export" in error


def test_a_default_rho_class_is_checked_as_untrusted_input(tmp_path: Path) -> None:
    from layercascade.tests.helpers import copy_demo_model

    for bad in ({"unicorn": 0.5}, {"person": 0}, {"person": "1"}, ["person"]):
        folder = copy_demo_model(tmp_path / f"bad{len(list(tmp_path.iterdir()))}", default_rho_class=bad)
        with pytest.raises(LCError, match=r"lc.json: default_rho_class .* is not \{class name: threshold\}"):
            Cascade.load(folder, backend="ort")
    good = copy_demo_model(tmp_path / "good", default_rho_class={"background": 1.0})
    with Cascade.load(good, backend="ort") as cascade:
        assert cascade.default_rho_class == {0: 1.0}
        image = synthetic_images(1)
        assert np.array_equal(cascade.run_batch(image, RHO).mask2,
                              cascade.run_batch(image, RHO, rho_class={"background": 1.0}).mask2)
        without = cascade.run_batch(image, RHO, rho_class={}).mask2  # {}: no per-class threshold, not the default
        assert not np.array_equal(cascade.run_batch(image, RHO).mask2, without)


# -- the commands --------------------------------------------------------------------------------------------------
def test_the_commands_take_rho_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for parser in (run.build_parser(), bench.build_parser(), evaluate.build_parser()):
        base = ["-o", "out"] if parser.prog == "lc-run" else []
        assert parser.parse_args([*base, "--rho-class", "person=1,car=0.9"]).rho_class == {"person": 1.0, "car": 0.9}
        assert parser.parse_args(base).rho_class is None
        for bad, message in (("person", "NAME=R"), ("person=0", r"\(0, 1\]"), ("person=x", "NAME=R")):
            with pytest.raises(SystemExit):
                parser.parse_args([*base, "--rho-class", bad])
            assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
    assert run_cli(run.main, ["-o", str(tmp_path / "out"), "--backend", "ort", "--rho-class", "unicorn=1",
                              "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'unicorn' is not a class of this model (background," in error


def test_lc_run_lc_bench_and_lc_eval_report_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert run_cli(run.main, ["-o", str(out), "--backend", "ort", "--rho", str(RHO), "--rho-class", "person=1",
                              "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rho_class"] == {"person": 1.0} and summary["rho"] == RHO
    assert run_cli(bench.main, ["--backend", "ort", "--iters", "1", "--warmup", "0", "--rho-class", "person=1",
                                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rho_class"] == {"person": 1.0}
    assert run_cli(bench.main, ["--backend", "ort", "--iters", "1", "--warmup", "0", "--rho-class", "person=1"]) == 0
    assert "ρ = 0.985 (person=1)" in capsys.readouterr().out
    assert run_cli(bench.main, ["--compare", "fp32", "--rho-class", "person=1"]) == 1
    assert "--rho-class goes without --compare" in capsys.readouterr().err
    results = {}
    for rho_class in ([], ["--rho-class", "person=1,background=1"]):
        for source in ([], [str(DEMO_MODEL)]):  # the PyTorch reference and the exported graphs
            assert run_cli(evaluate.main, [*source, "--data", "synthetic", "--limit", "2", "--rho", str(RHO),
                                           *rho_class, "--json"]) == 0
            results[bool(rho_class), bool(source)] = json.loads(capsys.readouterr().out)
    assert results[True, False]["rho_class"] == {"background": 1.0, "person": 1.0}
    assert results[False, True]["rho_class"] == {}
    for source in (False, True):  # more pixels go on when background and person never stop early
        assert results[True, source]["stage_fractions"][0] < results[False, source]["stage_fractions"][0]
    np.testing.assert_allclose(results[True, False]["stage_fractions"], results[True, True]["stage_fractions"],
                               atol=0.01)
