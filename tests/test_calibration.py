"""INT8 calibration (lc-calibrate) and precision comparison (lc-bench --compare) on the bundled demo model:
cascade-aware statistics, the QDQ graphs and their record, the cache, int8 accuracy, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from layercascade.calibration.calibrate import calibrate
from layercascade.calibration.statistics import Statistics, fold_absolute, rows_at
from layercascade.cli import bench
from layercascade.cli import calibrate as calibrate_cli
from layercascade.errors import LCError, run_cli
from layercascade.model.data import open_dataset
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.compare import compare_precisions, plot_comparison, precision_sources
from layercascade.tests.helpers import CALIBRATION_IMAGES


def test_rows_at_takes_the_masked_pixels_only() -> None:
    tensor = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    mask = np.zeros((2, 1, 2, 2), np.float32)
    mask[0, 0, 1, 0] = mask[1, 0, 0, 1] = 1
    np.testing.assert_array_equal(rows_at(tensor, mask), [tensor[0, :, 1, 0], tensor[1, :, 0, 1]])
    assert rows_at(tensor, None).shape == (8, 3)


def test_stage_statistics_count_only_the_pixels_that_reach_the_stage(demo_fp32, demo_int8) -> None:
    _, _, cache = demo_int8
    statistics = Statistics.load(cache)
    reach2, reach3 = statistics.meta["pixels_reaching"]
    cascade = Cascade.load(demo_fp32, backend="ort")  # the runtime the statistics were collected on
    dataset = open_dataset("synthetic", "train", limit=CALIBRATION_IMAGES)
    masks = [cascade.run_batch(cascade.prepare(dataset[k][0])[None], statistics.meta["rho"])
             for k in range(CALIBRATION_IMAGES)]
    assert reach2 == sum(int(m.mask2.sum()) for m in masks) and reach3 == sum(int(m.mask3.sum()) for m in masks)
    assert 0 < reach3 < reach2 < CALIBRATION_IMAGES * masks[0].mask2.size  # the cascade really splits the pixels
    channels = {"stage2.onnx:feat1": 32, "stage3.onnx:feat2": 64}
    for key, reached in zip(channels, (reach2, reach3)):
        assert statistics.histograms[key][0].sum() == reached * channels[key]
    stage1_pixels = statistics.histograms["stage1.onnx:backbone.layer1.0/relu"][0].sum()
    assert stage1_pixels == CALIBRATION_IMAGES * masks[0].mask2.size * 32


def test_per_stage_calibration_thresholds(demo_fp32, tmp_path) -> None:
    """``rho=(ρ₂, ρ₃)``: stage 2's statistics from M₂ at ρ₂, stage 3's from M₃ at ρ₃; recorded as the
    pair, and a second run with the same pair reuses the statistics."""
    cache, rho = tmp_path / "pair.npz", (0.9, 0.995)
    record = calibrate(demo_fp32, tmp_path / "a", limit=1, method="minmax", rho=rho, cache=cache, progress=False)
    assert record["rho"] == [0.9, 0.995] and not record["statistics_reused"]
    cascade = Cascade.load(demo_fp32, backend="ort")
    out = cascade.run_batch(cascade.prepare(open_dataset("synthetic", "train", limit=1)[0][0])[None], rho)
    assert Statistics.load(cache).meta["pixels_reaching"] == [int(out.mask2.sum()), int(out.mask3.sum())]
    again = calibrate(demo_fp32, tmp_path / "b", limit=1, method="minmax", rho=list(rho), cache=cache,
                      progress=False)
    assert again["statistics_reused"]


def test_naive_statistics_count_every_pixel(demo_fp32, tmp_path) -> None:
    cache = tmp_path / "naive.npz"
    calibrate(demo_fp32, tmp_path / "naive", limit=1, method="minmax", cascade_aware=False, cache=cache,
              progress=False)
    statistics = Statistics.load(cache)
    pixels = 20 * 20
    assert statistics.histograms["stage3.onnx:feat2"][0].sum() == pixels * 64
    assert json.loads((tmp_path / "naive" / "lc.json").read_text())["quantization"]["cascade_aware"] is False


def test_int8_graphs_have_symmetric_per_channel_weights_and_per_tensor_activations(demo_int8) -> None:
    output, record, _ = demo_int8
    manifest = json.loads((output / "lc.json").read_text())
    assert manifest["quantization"]["statistics_sha256"] == record["statistics_sha256"]
    assert {k: manifest["quantization"][k] for k in ("method", "data", "images", "precision")} == {
        "method": "minmax", "data": "synthetic", "images": CALIBRATION_IMAGES, "precision": "int8"}
    for name in ("stage1.onnx", "stage2.onnx", "stage3.onnx", "dense.onnx"):
        model = onnx.load(str(output / name))
        initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        weights = [n for n in dequantize if initializers.get(n.input[0]) is not None
                   and initializers[n.input[0]].ndim == 4]
        convs = [n for n in model.graph.node if n.op_type in ("Conv", "RegionConv")]
        kept_float = [n for n in convs if n.name in manifest["quantization"]["float_convs"]]
        stem = [n for n in kept_float if "image" not in {i.name for i in model.graph.input}
                or initializers[n.input[1]].shape[1] == 3]
        # the classifier stays float (scores), and in the graphs that read the image the stem too
        assert len(weights) == len(convs) - len(kept_float) > 0, name
        assert len(kept_float) == (2 if name in ("stage1.onnx", "dense.onnx") else 1), name
        assert stem and all(initializers[n.input[1]].dtype == np.float32 for n in kept_float)
        for node in weights:
            values, scale, zero = (initializers[i] for i in node.input)
            assert values.dtype == np.int8 and scale.shape == (values.shape[0],) and not zero.any()
            assert np.abs(values).max() == 127  # symmetric: each channel's largest weight maps to ±127
        activations = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert activations, name
        for node in activations:
            assert initializers[node.input[1]].shape == () and initializers[node.input[2]] == 0
    stage2 = onnx.load(str(output / "stage2.onnx"))
    region_inputs = {n.input[0] for n in stage2.graph.node if n.op_type == "RegionConv"
                     and n.name != "heads.1.classifier"}
    dq_outputs = {n.output[0] for n in stage2.graph.node if n.op_type == "DequantizeLinear"}
    assert region_inputs <= dq_outputs  # every RegionConv but the classifier reads a dequantized int8 tensor


@pytest.mark.parametrize("lower", [True, False])
def test_int8_labels_agree_with_fp32(demo_fp32, demo_int8, lower) -> None:
    output, _, _ = demo_int8
    fp32, quantized = Cascade.load(demo_fp32, backend="ort"), Cascade.load(output, backend="ort", lower=lower)
    dataset = open_dataset("synthetic", "val", limit=4)
    agree = [np.mean(fp32(image).labels == quantized(image).labels) for image, _ in dataset]
    assert np.mean(agree) >= 0.97


def test_lowered_int8_stage_matches_its_function_bodies(demo_int8) -> None:
    """The int8 row lowering (int8 gathers, QGemm) computes what the QDQ graph says, up to the
    rounding of values that fall on a quantization step boundary."""
    from layercascade.runtime.ort.loader import load_runner

    output, _, _ = demo_int8
    stage1 = load_runner(output / "stage1.onnx")
    lowered, bodies = load_runner(output / "stage2.onnx"), load_runner(output / "stage2.onnx", lower=False)
    assert lowered.lowered and not bodies.lowered
    image, _ = open_dataset("synthetic", "val", limit=1)[0]
    rho = np.full(21, 0.985, np.float32)
    first = stage1.infer({"image": Cascade.load(output).prepare(image)[None], "rho": rho})
    feeds = {"feat1": first["feat1"], "mask2": first["mask2"], "rho": rho}
    assert 0 < first["mask2"].mean() < 1
    fast, reference = lowered.infer(feeds), bodies.infer(feeds)
    for name in ("feat2", "scores2"):
        np.testing.assert_allclose(fast[name], reference[name], atol=0.01 * np.abs(reference[name]).max())
    np.testing.assert_array_equal(fast["mask3"], reference["mask3"])


def test_lowered_int8_region_convs_run_as_int8_gemms(demo_int8, tmp_path) -> None:
    """ONNX Runtime turns every quantized RegionConv of a lowered stage into QGemm (no float GEMM left)."""
    from layercascade.export.lowering import lower_region_convs

    output, record, _ = demo_int8
    model = onnx.load(str(output / "stage3.onnx"))
    quantized = [n for n in model.graph.node if n.op_type == "RegionConv" and n.name not in record["float_convs"]]
    ops = _optimized_ops(lower_region_convs(model), tmp_path)
    assert ops.count("QGemm") == len(quantized) > 0
    assert "DequantizeLinear" not in ops  # every dequantized operand went into an int8 kernel


def _optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """The op types of ``model`` after ONNX Runtime's CPU graph optimizations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_relu_as_uint8_fuses_every_int8_conv_with_its_relu(demo_int8, tmp_path) -> None:
    """With the ReLUs in uint8 Qs ONNX Runtime runs stage 1 as a chain of QLinearConvs: no
    DQ → ReLU → Q pass is left between them (the only DQ / ReLU left feed the float classifier
    and the graph output feat1)."""
    from layercascade.runtime.ort.int8 import relu_as_uint8

    output, record, _ = demo_int8
    model = onnx.load(str(output / "stage1.onnx"))
    quantized = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in record["float_convs"]]
    before, after = _optimized_ops(model, tmp_path), _optimized_ops(relu_as_uint8(model), tmp_path)
    assert before.count("Relu") > 1 and before.count("DequantizeLinear") > 2
    assert after.count("QLinearConv") == len(quantized) > 0
    assert after.count("Relu") == 1 and after.count("DequantizeLinear") == 2
    relus = [n for n in model.graph.node if n.op_type == "Relu"]  # the rewrite works on a copy
    assert len(relus) == len(quantized) + 1


def test_lowered_uint8_rows_still_run_as_int8_gemms(demo_int8, tmp_path) -> None:
    """Stage 3's rows from ReLUs (its own, and feat2 from stage 2's ReLU) become uint8: every quantized
    RegionConv still runs as QGemm, and no Max(·, 0) pass is left in front of a Q."""
    from layercascade.export.lowering import lower_region_convs
    from layercascade.runtime.ort.int8 import rectified_outputs, relu_as_uint8

    output, record, _ = demo_int8
    model = onnx.load(str(output / "stage3.onnx"))
    non_negative = rectified_outputs(onnx.load(str(output / "stage2.onnx")))
    assert "feat2" in non_negative
    rewritten = relu_as_uint8(lower_region_convs(model), non_negative)
    zero_points = [numpy_helper.to_array(t) for t in rewritten.graph.initializer if t.name.endswith("/x_zero_point")]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    quantized = [n for n in model.graph.node if n.op_type == "RegionConv" and n.name not in record["float_convs"]]
    ops, plain = _optimized_ops(rewritten, tmp_path), _optimized_ops(lower_region_convs(model), tmp_path)
    assert ops.count("QGemm") == len(quantized) > 0 and "DequantizeLinear" not in ops
    assert ops.count("Max") == 1 < plain.count("Max")  # left: the one feeding the float classifier


def test_relu_as_uint8_keeps_the_int8_values(demo_int8) -> None:
    """Stage 1 with and without the uint8 rewrite: the same masks, features within a few int8 steps
    at 99 % of the pixels (the rewrite drops one requantization between each conv and its ReLU,
    and keeps values above the int8 range up to 255 steps)."""
    import onnxruntime

    from layercascade.runtime.ort.loader import load_runner

    output, _, _ = demo_int8
    image, _ = open_dataset("synthetic", "val", limit=1)[0]
    feeds = {"image": Cascade.load(output).prepare(image)[None], "rho": np.full(21, 0.985, np.float32)}
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    plain = onnxruntime.InferenceSession(str(output / "stage1.onnx"), options, providers=["CPUExecutionProvider"])
    reference = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feeds)))
    rewritten = load_runner(output / "stage1.onnx").infer(feeds)
    assert np.mean(rewritten["mask2"] == reference["mask2"]) >= 0.99
    close = np.abs(rewritten["feat1"] - reference["feat1"]) <= 0.05 * np.abs(reference["feat1"]).max()
    assert close.mean() >= 0.99


def test_int8_stem_reorders_folded_with_the_same_results(demo_int8) -> None:
    """Where the stem has one NCHWc block of channels (16 on AVX-512) the runner folds ONNX Runtime's
    NCHWc → NCHW → quantize → NHWC passes after it (runtime/ort/layout.py); the outputs stay bit for bit."""
    from layercascade.runtime.ort.layout import nchwc_block_size
    from layercascade.runtime.ort.loader import load_runner

    output, _, _ = demo_int8
    path = output / "stage1.onnx"
    stem = next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                if t.name == "backbone.stem.0.weight")
    folded, plain = load_runner(path), load_runner(path, fold_layout=False)
    assert folded.layout_folded == (nchwc_block_size() == stem.shape[0]) and not plain.layout_folded
    images = np.random.default_rng(0).integers(0, 256, (1, *Cascade.load(output).input_size, 3), dtype=np.uint8)
    feeds = {"image": images, "rho": np.full(21, 0.985, np.float32)}
    for name, value in plain.infer(feeds).items():
        np.testing.assert_array_equal(folded.infer(feeds)[name], value, err_msg=name)


def test_another_method_reuses_the_statistics(demo_fp32, demo_int8, tmp_path) -> None:
    _, record, cache = demo_int8
    again = calibrate(demo_fp32, tmp_path / "pct", limit=CALIBRATION_IMAGES, method="percentile", cache=cache,
                      progress=False)
    assert again["statistics_reused"] and again["statistics_sha256"] == record["statistics_sha256"]
    assert not record["statistics_reused"]


def test_ranges_per_method_order() -> None:
    """Percentile and entropy clip a long-tailed histogram below its maximum; min-max keeps it."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    values = np.concatenate([np.random.default_rng(0).normal(0, 1, 200_000), [40.0]]).astype(np.float32)
    collector = HistogramCollector(method="entropy", symmetric=True, num_bins=512, num_quantized_bins=128,
                                   percentile=99.999, scenario="same")
    collector.collect({"x": values})
    statistics = Statistics({"g:x": collector.get_histogram_dict()["x"]}, {})
    amax = {m: float(statistics.ranges(m, "g")["x"][1]) for m in ("minmax", "percentile", "entropy")}
    assert amax["minmax"] == 40.0
    assert amax["entropy"] < 40.0 and amax["percentile"] < 40.0
    counts, edges, *_ = fold_absolute(collector.get_histogram_dict()["x"])
    assert counts.sum() == values.size and edges[0] == 0.0


# -- bad input: one line, exit 1, nothing written -----------------------------------------------------------
def _fails(argv: list[str], capsys, output: Path, match: str) -> None:
    assert run_cli(calibrate_cli.main, argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
    assert not output.exists()


def test_already_int8(demo_int8, tmp_path, capsys) -> None:
    output, _, _ = demo_int8
    _fails([str(output), "-o", str(tmp_path / "again")], capsys, tmp_path / "again", "already an INT8 model")


def test_cache_of_another_model(demo_fp32, demo_int8, tmp_path, capsys) -> None:
    _, _, cache = demo_int8
    other = tmp_path / "other"
    shutil.copytree(demo_fp32, other)
    manifest = json.loads((other / "lc.json").read_text())
    stage1 = onnx.load(str(other / "stage1.onnx"))
    stage1.doc_string = "another export"
    onnx.save(stage1, str(other / "stage1.onnx"))
    from layercascade.manifest import sha256_file

    manifest["files"]["stage1.onnx"] = sha256_file(other / "stage1.onnx")
    (other / "lc.json").write_text(json.dumps(manifest))
    _fails([str(other), "-o", str(tmp_path / "out"), "--cache", str(cache), "--limit", str(CALIBRATION_IMAGES)], capsys,
           tmp_path / "out", "statistics of another model")


def test_no_calibration_images(demo_fp32, tmp_path, capsys) -> None:
    voc = tmp_path / "VOC2012"
    for folder in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass"):
        (voc / folder).mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")
    _fails([str(demo_fp32), "-o", str(tmp_path / "out"), "--data", f"voc:{voc}"], capsys, tmp_path / "out", "empty")


def test_images_of_the_wrong_kind(demo_fp32, tmp_path, capsys) -> None:
    from PIL import Image

    city = tmp_path / "cs"
    for folder in ("leftImg8bit", "gtFine"):
        (city / folder / "train" / "aachen").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(city / "leftImg8bit/train/aachen/aachen_0_0_leftImg8bit.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(city / "gtFine/train/aachen/aachen_0_0_gtFine_labelIds.png")
    _fails([str(demo_fp32), "-o", str(tmp_path / "out"), "--data", f"cityscapes:{city}"], capsys, tmp_path / "out",
           "19 classes, the model 21")


def test_output_is_the_model_dir(demo_fp32, capsys) -> None:
    assert run_cli(calibrate_cli.main, [str(demo_fp32), "-o", str(demo_fp32)]) == 1
    assert "is the model dir itself" in capsys.readouterr().err


# -- lc-bench --compare ---------------------------------------------------------------------------------------
def test_compare_fp32_int8_with_accuracy_and_plot(demo_int8, tmp_path) -> None:
    output, _, _ = demo_int8
    sources = precision_sources(output, ["int8", "fp32"], "ort")
    assert list(sources) == ["fp32", "int8"] and sources["int8"] == (output, {"backend": "ort", "precision": "int8"})
    cascades = {name: Cascade.load(folder, **options) for name, (folder, options) in sources.items()}
    dataset = open_dataset("synthetic", "val", limit=3)
    result = compare_precisions(cascades, [1.0, 0.9], batch=1, iters=2, warmup=0, dataset=dataset, progress=False,
                                profile=True)
    rows = {(r["precision"], r["rho"]): r for r in result["rows"]}
    for (precision, _), row in rows.items():  # the profile shows which kernels each precision runs
        int8_kernels = {r["op"] for r in row["profile"]["op_types"]} & {"QGemm", "QLinearConv"}
        assert bool(int8_kernels) == (precision == "int8") and row["profile"]["conv_gemm_ms"] > 0
    assert set(rows) == {("fp32", 1.0), ("fp32", 0.9), ("int8", 1.0), ("int8", 0.9)}
    assert rows[("fp32", 0.9)]["label_agreement"] == 100.0 and rows[("fp32", 0.9)]["speedup_vs_fp32"] == 1.0
    assert rows[("int8", 0.9)]["label_agreement"] >= 97.0
    assert abs(rows[("int8", 0.9)]["miou"] - rows[("fp32", 0.9)]["miou"]) < 5.0
    plot_comparison(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_cli_prints_the_profile_per_precision(demo_int8, capsys) -> None:
    output, _, _ = demo_int8
    assert run_cli(bench.main, [str(output), "--compare", "fp32,int8", "--rhos", "1,0.9", "--iters", "1",
                                "--warmup", "0", "--profile"]) == 0
    table = capsys.readouterr().out.split("profile, kernel ms per run")[1]
    assert "convolution & GEMM" in table
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| fp32")
            or line.startswith("| int8")] == ["fp32", "fp32", "int8", "int8"]


def test_plot_without_matplotlib(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(LCError, match="--plot needs matplotlib"):
        plot_comparison({"rows": []}, tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


def test_compare_sources_of_a_checkpoint() -> None:
    checkpoint = Path("lc_tiny_synthetic.pt")
    assert precision_sources(checkpoint, ["fp16", "fp32"]) == {
        "fp32": (checkpoint, {"backend": "torch", "precision": "fp32"}),
        "fp16": (checkpoint, {"backend": "torch", "precision": "fp16"})}
    with pytest.raises(LCError, match="needs the INT8 model dir"):
        precision_sources(checkpoint, ["fp32", "int8"])


def test_compare_errors(demo_fp32, capsys) -> None:
    for argv, match in (([str(demo_fp32), "--compare", "fp32,int8"], "is an fp32 model"),
                        ([str(demo_fp32), "--compare", "int8"], "--compare takes fp32"),
                        ([str(demo_fp32), "--compare", "fp32,fp16"], "backend has no fp16 (backends that have it: trt, torch)"),
                        ([str(demo_fp32), "--compare", "fp32", "--plot", "x.png"], "give --data too"),
                        ([str(demo_fp32), "--data", "synthetic"], "go with --compare")):
        assert run_cli(bench.main, argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and match in err, err
