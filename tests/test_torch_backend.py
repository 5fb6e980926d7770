"""The torch backend (runtime/torch/) against the PyTorch reference cascade and the
ONNX Runtime backend on the demo model, its kernels path in Triton's interpreter, lc-run and
lc-bench with ``--backend torch``, its errors, and (on a GPU) the CUDA path.

Parity (region semantics, docs/architecture.md): ≥ 99.99 % of label pixels equal, masks equal
except where the confidence lies within 1e-5 of ρ, scores within 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from layercascade.cli import bench, run
from layercascade.contract import RhoLike, check_rho, rho_vectors
from layercascade.errors import LCError, run_cli
from layercascade.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from layercascade.model.network import normalize
from layercascade.model.region import confidence, region_conv2d
from layercascade.runtime.bench import sample_batch
from layercascade.runtime.cascade import DEMO_MODEL, Cascade
from layercascade.runtime.timing import forced_masks
from layercascade.runtime.torch.backend import TorchBackend
from layercascade.runtime.torch.program import KernelPath
from layercascade.runtime.torch.reference import ReferencePath
from layercascade.tests.helpers import random_images, sharpened_checkpoint

# One ρ for both stages, and per-stage pairs (ρ₂, ρ₃): ρ₂ = 1 sends every pixel to stage 2, ρ₃ < 1 thresholds M₃.
RHOS = (1.0, 0.985, 0.9, (0.9, 0.985), (1.0, 0.9))
LABEL_AGREEMENT = 0.9999
MASK_MARGIN = 1e-5
SCORE_TOLERANCE = 1e-4


@pytest.fixture
def one_thread():
    """One intra-op thread: small convs gain nothing from two, and spinning OpenMP threads
    slow them many times over while other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_cascade() -> Cascade:
    return Cascade.load(None, backend="torch")


@pytest.fixture(scope="module")
def ort_cascade() -> Cascade:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ORT parity needs it")
    return Cascade.load(DEMO_MODEL, backend="ort")


@pytest.fixture(scope="module")
def images(torch_cascade: Cascade) -> np.ndarray:
    return sample_batch(torch_cascade, 4)


def assert_masks_match(mask: np.ndarray, expected: np.ndarray, scores: torch.Tensor, rho: float,
                       excused: np.ndarray | None = None) -> np.ndarray:
    """Masks equal except where the confidence of ``scores`` is within MASK_MARGIN of ``rho``, the mask's own
    threshold (or ``excused``).
    Returns the pixels that differ."""
    differ = mask != expected
    near = np.abs(confidence(scores).numpy() - rho) <= MASK_MARGIN
    allowed = near if excused is None else near | excused
    assert not (differ & ~allowed).any(), f"{int((differ & ~allowed).sum())} mask pixels differ away from ρ"
    return differ


def assert_labels_match(labels: np.ndarray, expected: np.ndarray) -> None:
    assert labels.shape == expected.shape and labels.dtype == np.uint8
    agreement = float((labels == expected).mean())
    assert agreement >= LABEL_AGREEMENT, agreement


def assert_scores_match(scores: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray) -> None:
    error = float(np.abs(np.asarray(scores, np.float64) - np.asarray(expected, np.float64)).max())
    assert error <= SCORE_TOLERANCE, error


@pytest.mark.parametrize("rho", RHOS)
def test_matches_the_pytorch_reference_cascade(torch_cascade: Cascade, images: np.ndarray, rho: RhoLike) -> None:
    rho2, rho3 = check_rho(rho)
    checkpoint = load_checkpoint()
    with torch.inference_mode():
        reference = checkpoint.build_model()(normalize(torch.from_numpy(images), checkpoint.mean, checkpoint.std), rho)
    out = torch_cascade.run_batch(images, rho)
    assert_labels_match(out.labels, reference.labels.numpy().astype(np.uint8))
    differ2 = assert_masks_match(out.mask2, reference.masks[0].numpy(), reference.scores[0], rho2)
    assert_masks_match(out.mask3, reference.masks[1].numpy(), reference.scores[1], rho3, excused=differ2)
    assert out.stage_counts.dtype == np.int64 and out.stage_counts.shape == (4, 3)
    assert (out.stage_counts.sum(1) == out.mask2[0].size).all()
    fractions = out.stage_counts / out.mask2[0].size
    np.testing.assert_allclose(fractions, reference.stage_fractions.numpy(), atol=1e-6)
    outputs = torch_cascade.runner.path.stage_outputs(images, (rho2, rho3))
    for scores, expected in zip(outputs["scores"], reference.scores):
        assert_scores_match(scores, expected)


@pytest.mark.parametrize("rho", RHOS)
def test_matches_the_onnx_runtime_backend(torch_cascade: Cascade, ort_cascade: Cascade, images: np.ndarray,
                                          rho: RhoLike) -> None:
    rho2, rho3 = check_rho(rho)
    ours = torch_cascade.run_batch(images, rho)
    ours_scores = torch_cascade.runner.path.stage_outputs(images, (rho2, rho3))["scores"]
    stage1, stage2, _ = ort_cascade.runner.stages
    for k in range(len(images)):
        theirs = ort_cascade.run_batch(images[k:k + 1], rho)
        assert_labels_match(ours.labels[k:k + 1], theirs.labels)
        differ2 = assert_masks_match(ours.mask2[k:k + 1], theirs.mask2, ours_scores[0][k:k + 1], rho2)
        assert_masks_match(ours.mask3[k:k + 1], theirs.mask3, ours_scores[1][k:k + 1], rho3, excused=differ2)
        out1 = stage1.infer({"image": images[k:k + 1], "rho": np.full(21, rho2, np.float32)})
        assert_scores_match(ours_scores[0][k:k + 1], out1["scores1"])
        if not differ2.any():  # stage 2 then computed the same region
            out2 = stage2.infer({"feat1": out1["feat1"], "mask2": out1["mask2"], "rho": np.full(21, rho3, np.float32)})
            assert_scores_match(ours_scores[1][k:k + 1], out2["scores2"])
            if np.array_equal(ours.mask3[k:k + 1], theirs.mask3):
                np.testing.assert_array_equal(ours.stage_counts[k:k + 1], theirs.stage_counts)


def test_dense_runner(torch_cascade: Cascade, ort_cascade: Cascade, images: np.ndarray) -> None:
    """Every stage's blocks on every pixel, final head only: the cascade at ρ = 1, and dense.onnx."""
    dense = torch_cascade.runner.dense_runner(torch_cascade.manifest)
    labels = dense.infer({"image": images})["labels"]
    assert dense.last_ms > 0
    np.testing.assert_array_equal(labels, torch_cascade.run_batch(images, 1.0).labels)
    ort_dense = ort_cascade.runner.dense_runner(ort_cascade.manifest)
    theirs = np.concatenate([ort_dense.infer({"image": images[k:k + 1]})["labels"] for k in range(len(images))])
    assert_labels_match(labels, theirs)


def test_manifest_agrees_with_the_exported_demo(torch_cascade: Cascade) -> None:
    exported = json.loads((DEMO_MODEL / "lc.json").read_text())
    ours = torch_cascade.manifest
    for key in ("kind", "backbone", "classes", "palette", "mean", "std", "input_size", "stage_size", "default_rho"):
        assert ours[key] == exported[key], key
    assert ours["source"] == exported["source"]  # same checkpoint file, same hash
    for mine, theirs in zip(ours["stage_gmacs"], exported["stage_gmacs"]):
        assert mine == pytest.approx(theirs)
    assert torch_cascade.batch_size is None and torch_cascade.model_dir == DEMO_CHECKPOINT
    assert torch_cascade.backend == "torch"


def test_forced_masks_and_any_batch(torch_cascade: Cascade, images: np.ndarray) -> None:
    first = torch_cascade.run_batch(images[:3], 0.985)
    masks = forced_masks(first.mask2.shape, (0.5, 0.25))
    out = torch_cascade.run_batch(images[:3], 0.985, masks)
    np.testing.assert_array_equal(out.mask2, masks[0])
    np.testing.assert_array_equal(out.mask3, masks[1])
    reach2, reach3 = masks[0].sum((1, 2, 3)), masks[1].sum((1, 2, 3))
    np.testing.assert_array_equal(out.stage_counts, np.stack([400 - reach2, reach2 - reach3, reach3], 1))


def test_stages_timed_apart(torch_cascade: Cascade, images: np.ndarray) -> None:
    """``run_stages`` (lc-bench --per-stage) works on the torch backend: the reference times its stages."""
    staged = torch_cascade.runner.run_stages(images, (0.985, 0.985))
    assert {"stage1", "stage2", "stage3"} <= set(staged.timings)
    assert np.array_equal(staged.labels, torch_cascade.run_batch(images, 0.985).labels)


def test_input_size_option() -> None:
    cascade = Cascade.load(None, backend="torch", input_size=(64, 96))
    assert cascade.input_size == (64, 96) and cascade.manifest["stage_size"] == [8, 12]
    out = cascade(np.zeros((50, 70, 3), np.uint8))
    assert out.labels.shape == (50, 70)


def kernel_plan_report() -> dict:
    """Run in a fresh process with TRITON_INTERPRET=1: the kernels path on CPU tensors vs the
    reference path, at a small input size (the interpreter is slow)."""
    cascade = Cascade.load(None, backend="torch", input_size=(48, 48))
    reference = cascade.runner
    kernels = TorchBackend(load_checkpoint(), input_size=cascade.input_size, kernels=True)
    images = sample_batch(cascade, 2)
    report = {}
    for name, rho, masks in (("rho", (0.95, 0.985), None),
                             ("forced", (0.985, 0.985), forced_masks((2, 1, 6, 6), (0.5, 0.25)))):
        ref = reference.path.stage_outputs(images, rho, masks)
        program = kernels.path.program("cascade", len(images), masks is not None)
        program.inputs["rho2"].fill_(rho[0])
        program.inputs["rho3"].fill_(rho[1])
        if masks is not None:
            for key, mask in zip(("forced2", "forced3"), masks):
                program.inputs[key].copy_(torch.from_numpy(mask).permute(0, 2, 3, 1))
        program.inputs["images"].copy_(torch.from_numpy(images))
        out = program()
        report[name] = {
            "score_errors": [float((out[f"scores{k + 1}"].permute(0, 3, 1, 2) - s).abs().max())
                             for k, s in enumerate(ref["scores"])],
            "label_agreement": float((out["labels"] == ref["labels"]).float().mean()),
            "masks_equal": [bool(torch.equal(out[f"mask{k + 2}"].permute(0, 3, 1, 2), m))
                            for k, m in enumerate(ref["masks"])],
            "counts_equal": bool(torch.equal(out["stage_counts"], ref["stage_counts"])),
            "reach": [float(m.mean()) for m in ref["masks"]],
        }
    # fp16 storage (fp32 accumulation), the CUDA path's --precision fp16, on forced regions.
    half = KernelPath(reference.path.model, load_checkpoint(), cascade.input_size, torch.float16, torch.device("cpu"))
    masks = forced_masks((2, 1, 6, 6), (0.5, 0.25))
    program = half.program("cascade", len(images), forced=True)
    program.inputs["images"].copy_(torch.from_numpy(images))
    for key, mask in zip(("forced2", "forced3"), masks):
        program.inputs[key].copy_(torch.from_numpy(mask).permute(0, 2, 3, 1))
    out, ref = program(), reference.path.stage_outputs(images, (0.985, 0.985), masks)
    report["fp16"] = {
        "dtypes": sorted({str(out[f"scores{k}"].dtype) for k in (1, 2, 3)}),
        "score_errors": [float((out[f"scores{k + 1}"].permute(0, 3, 1, 2).float() - s).abs().max())
                         / float(s.abs().max()) for k, s in enumerate(ref["scores"])],
        "label_agreement": float((out["labels"] == ref["labels"]).float().mean()),
        "counts_equal": bool(torch.equal(out["stage_counts"], ref["stage_counts"])),
    }
    report["dense_agreement"] = float((kernels.dense_runner({}).infer({"image": images})["labels"]
                                       == reference.path.dense(images)).mean())
    run_out = kernels.run(images, (0.9, 0.985))
    report["run_labels_equal"] = bool(np.array_equal(run_out.labels, reference.run(images, (0.9, 0.985), None).labels))
    return report


@pytest.mark.slow
def test_kernels_path_in_the_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is not installed: the kernels path needs it")
    code = "import json; from layercascade.tests import test_torch_backend as t; print(json.dumps(t.kernel_plan_report()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("rho", "forced"):
        case = report[name]
        assert max(case["score_errors"]) <= SCORE_TOLERANCE, case
        assert case["label_agreement"] >= LABEL_AGREEMENT and all(case["masks_equal"]) and case["counts_equal"]
    assert 0.0 < report["forced"]["reach"][1] < report["forced"]["reach"][0] < 1.0  # real partial regions
    assert report["dense_agreement"] >= LABEL_AGREEMENT and report["run_labels_equal"]
    half = report["fp16"]
    assert half["dtypes"] == ["torch.float16"] and half["counts_equal"], half
    assert max(half["score_errors"]) <= 4e-3 and half["label_agreement"] >= 0.99, half


@pytest.mark.parametrize(("name", "size"), [("resnet18", (64, 64)), ("irnet", (32, 32))])
def test_kernel_plans_of_every_block_type(monkeypatch: pytest.MonkeyPatch, one_thread: None, name: str,
                                          size: tuple[int, int]) -> None:
    """The plans of ResNet (Bottleneck-free and strided stage 1) and IRNet blocks, with each
    kernel call answered by its reference (``plugins/reference.py``), against the reference path."""
    pytest.importorskip("triton", reason="triton is not installed: the kernels module needs it")
    from layercascade.plugins import kernels
    from layercascade.plugins.reference import active_list_reference

    def region_conv(x, weight, bias, rows, count, *, padding, dilation, relu, residual, groups, config=None):
        # plugins/reference.py's call, in fp32 (its fp64 convs take seconds per IRNet layer on a CPU).
        n, h, w, _ = x.shape
        mask = torch.zeros(n * h * w)
        mask[rows[: int(count)].long()] = 1
        y = region_conv2d(x.permute(0, 3, 1, 2), weight, bias, mask.view(n, 1, h, w), padding=padding,
                          dilation=dilation, groups=groups)
        y = (torch.relu(y) if relu else y).permute(0, 2, 3, 1)
        return (y if residual is None else residual + y).contiguous()

    monkeypatch.setattr(kernels, "region_conv", region_conv)
    monkeypatch.setattr(kernels, "active_list", active_list_reference)
    checkpoint = sharpened_checkpoint(name, size)
    model = checkpoint.build_model()
    reference = ReferencePath(model, checkpoint, size)
    plan = KernelPath(model, checkpoint, size, torch.float32, torch.device("cpu"))
    images = random_images(1, size, seed=3)
    # Thresholded (one ρ per stage, then per class: every other class never stops early), then regions forced to
    # 50 % / 25 % of the pixels.
    per_class, stage_shape = {k: 1.0 for k in range(0, 21, 2)}, None
    for rho, fractions in ((rho_vectors((0.9, 0.95), {}, 21), None), (rho_vectors((0.9, 0.95), per_class, 21), None),
                           (rho_vectors((1.0, 1.0), {}, 21), (0.5, 0.25))):
        masks = None if fractions is None else forced_masks(stage_shape, fractions)
        expected = reference.stage_outputs(images, rho, masks)
        stage_shape = tuple(expected["masks"][0].shape)
        forced = {} if masks is None else {f"forced{k + 2}": torch.from_numpy(m).permute(0, 2, 3, 1)
                                           for k, m in enumerate(masks)}
        with torch.inference_mode():
            out = plan.cascade(torch.from_numpy(images), *(torch.from_numpy(r) for r in rho), **forced)
        for k, scores in enumerate(expected["scores"]):
            scale = max(1.0, float(scores.abs().max()))
            assert float((out[f"scores{k + 1}"].permute(0, 3, 1, 2) - scores).abs().max()) <= 1e-4 * scale
        for k, mask in enumerate(expected["masks"]):
            assert torch.equal(out[f"mask{k + 2}"].permute(0, 3, 1, 2), mask)
        assert_labels_match(out["labels"].numpy(), expected["labels"].numpy())
    assert 0 < float(expected["masks"][1].mean()) < float(expected["masks"][0].mean()) < 1
    with torch.inference_mode():
        dense = plan.dense(torch.from_numpy(images))["labels"]
    assert_labels_match(dense.numpy(), reference.dense(images))


def test_lc_run_and_lc_bench_with_the_torch_backend(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert run_cli(run.main, ["-o", str(out), "--backend", "torch", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "torch" and summary["images"] == 4 and not summary["failed"]
    for record in summary["results"]:
        assert len(record["outputs"]) == 3 and all((out / name).is_file() for name in record["outputs"])
        assert sum(record["stage_fractions"]) == pytest.approx(1.0, abs=1e-5)  # three 6-decimal roundings
    capsys.readouterr()
    assert run_cli(bench.main, ["--backend", "torch", "--iters", "2", "--warmup", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "torch" and result["speedup"] > 0 and "torch" in result["machine"]
    assert result["model"] == str(DEMO_CHECKPOINT)


def test_auto_backend_runs_a_checkpoint_with_torch() -> None:
    assert Cascade.load(DEMO_CHECKPOINT).backend == "torch"


def test_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LCError, match="--precision fp16 runs on CUDA only"):
        Cascade.load(None, backend="torch", precision="fp16")
    with pytest.raises(LCError, match="--cuda-graph needs --device cuda"):
        Cascade.load(None, backend="torch", cuda_graph=True)
    with pytest.raises(LCError, match=r"an exported model directory.*\(lc_tiny_synthetic\.pt\)"):
        Cascade.load(DEMO_MODEL, backend="torch")
    with pytest.raises(LCError, match="--threads-per-core: not a setting of the torch backend"):
        Cascade.load(None, backend="torch", threads_per_core=2)
    with pytest.raises(LCError, match="no such file"):
        Cascade.load(tmp_path / "missing.pt", backend="torch")
    with pytest.raises(LCError, match="too small"):
        Cascade.load(None, backend="torch", input_size=(8, 8))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(LCError, match="TRITON_INTERPRET=1"):
        Cascade.load(None, backend="torch", kernels=True)
    assert run_cli(run.main, ["-o", str(tmp_path / "o"), "--backend", "torch", "--precision", "fp16"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: --precision fp16") and "\n" not in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(LCError, match="no CUDA device"):
        Cascade.load(None, backend="torch", device="cuda")
    assert run_cli(run.main, ["-o", str(tmp_path / "o"), "--backend", "torch", "--device", "cuda"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the torch backend's kernels path "
                                                          "runs natively only on one")
@pytest.mark.parametrize(("precision", "cuda_graph"), [("fp32", False), ("fp32", True), ("fp16", True)])
def test_cuda_kernels_path(torch_cascade: Cascade, images: np.ndarray, precision: str, cuda_graph: bool) -> None:
    cascade = Cascade.load(None, backend="torch", device="cuda", precision=precision, cuda_graph=cuda_graph)
    for rho in RHOS:
        expected = torch_cascade.run_batch(images, rho)
        out = cascade.run_batch(images, rho)
        if precision == "fp32":
            assert_labels_match(out.labels, expected.labels)
            np.testing.assert_array_equal(out.mask2, expected.mask2)
        else:  # fp16 moves confidences by ~1e-3: masks and labels agree on nearly every pixel
            assert (out.labels == expected.labels).mean() >= 0.99
            assert (out.mask2 == expected.mask2).mean() >= 0.98
    dense = cascade.runner.dense_runner(cascade.manifest).infer({"image": images})["labels"]
    assert (dense == torch_cascade.run_batch(images, 1.0).labels).mean() >= (0.9999 if precision == "fp32" else 0.99)
