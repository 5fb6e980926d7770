"""lc-build without TensorRT: fp16 conversion parity on ONNX Runtime, the checks that run before
TensorRT, the engine-dir writer, and one-line errors with nothing written."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from layercascade.cli import build
from layercascade.errors import LCError, run_cli
from layercascade.export import regionconv
from layercascade.export.fp16 import convert_to_fp16
from layercascade.manifest import read_manifest, sha256_file
from layercascade.runtime.cascade import DEMO_MODEL, Cascade
from layercascade.runtime.trt.engines import (
    METADATA,
    BatchRange,
    BuiltEngine,
    batch_range,
    is_engine_dir,
    profile_shapes,
    write_engine_dir,
)
from layercascade.tests.fake_tensorrt import install_gpu_without_builder
from layercascade.tests.helpers import copy_demo_model, synthetic_images

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


# -- fp16 conversion ----------------------------------------------------------------------------
def test_fp16_cascade_matches_fp32_on_onnxruntime(demo_fp16) -> None:
    """The converted graphs through ONNX Runtime's CPU function-body path.

    ORT's CPU provider has few fp16 kernels; its InsertCastTransformer runs such nodes in fp32
    between fp16 casts, so weights and every tensor between ops are still rounded to fp16 (the
    feat1 check below) while accumulation is fp32 — the numerics of TensorRT's fp16 kernels.
    """
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # ORT warns that it cannot constant-fold fp16 nodes
    reference = Cascade.load(None, backend="ort", lower=False)
    half = Cascade.load(demo_fp16, backend="ort", lower=False)
    images = synthetic_images(16)
    equal = total = 0
    for image in images:
        ours, theirs = half.run_batch(image[None]), reference.run_batch(image[None])
        equal += int((ours.labels == theirs.labels).sum())
        total += ours.labels.size
        # Thresholds stay fp32; fp16 scores may move a pixel across ρ only when it sits on it.
        assert np.mean(ours.mask2 != theirs.mask2) < 0.01 and np.mean(ours.mask3 != theirs.mask3) < 0.01
    assert equal / total >= 0.999, f"fp16 labels agree on {equal / total:.5f} of pixels"
    rho = np.array([0.985], np.float32)
    feat1 = half.runner.stages[0].infer({"image": images[:1], "rho": rho})["feat1"]
    assert np.array_equal(feat1, feat1.astype(np.float16).astype(np.float32)), "feat1 was not computed in fp16"
    assert not np.array_equal(feat1, reference.runner.stages[0].infer({"image": images[:1], "rho": rho})["feat1"])


def _types(model: onnx.ModelProto) -> dict[str, int]:
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


@pytest.mark.parametrize("name", ["stage1.onnx", "stage2.onnx", "stage3.onnx", "dense.onnx"])
def test_fp16_graph_types(name) -> None:
    original = onnx.load(DEMO_MODEL / name)
    converted = convert_to_fp16(original)
    types = _types(converted)
    # I/O unchanged: fp32 I/O for the runtime's buffers and the next stage.
    for before, after in [*zip(original.graph.input, converted.graph.input),
                          *zip(original.graph.output, converted.graph.output)]:
        assert (before.name, before.type.tensor_type.elem_type) == (after.name, after.type.tensor_type.elem_type)
    for node in converted.graph.node:
        if node.op_type in ("Conv", regionconv.OP_TYPE):  # X, W, B (and M) all fp16: the plugin's fp16 path
            assert [types[i] for i in node.input] == [FLOAT16] * len(node.input), node.name
        if node.op_type in ("Softmax", "ReduceMax", "LessOrEqual", "ReduceSum"):  # ρ threshold, pixel counts
            assert all(types[i] == FLOAT for i in node.input if types.get(i) in (FLOAT, FLOAT16)), node.name
    body = {(f.domain, f.name): f for f in converted.functions}.get((regionconv.DOMAIN, regionconv.OP_TYPE))
    if body is not None:
        casts = [a.i for n in body.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
        assert casts == [FLOAT16]


def test_fp16_refuses_a_converted_graph() -> None:
    converted = convert_to_fp16(onnx.load(DEMO_MODEL / "stage2.onnx"))
    with pytest.raises(LCError, match="already holds fp16"):
        convert_to_fp16(converted)


def test_tensorrt_graphs_keep_uint8_at_their_io(tmp_path) -> None:
    """The graphs lc-build parses: no uint8 tensor inside (TensorRT's rule), same results."""
    from layercascade.runtime.trt.build import onnx_for, uint8_only_at_io
    from layercascade.runtime.trt.engines import graphs_of

    for graph in graphs_of(read_manifest(DEMO_MODEL)):
        for precision in ("fp32", "fp16"):
            inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(onnx_for(graph, DEMO_MODEL, precision)))
            internal = [v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
            assert internal == [], (graph.name, precision, internal)
    reference = Cascade.load(None, backend="ort", lower=False)
    rewritten = Cascade.load(copy_demo_model(tmp_path / "model", uint8_only_at_io), backend="ort", lower=False)
    for image in synthetic_images(4):
        ours, theirs = rewritten.run_batch(image[None]), reference.run_batch(image[None])
        assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.stage_counts, theirs.stage_counts)


# -- profiles -----------------------------------------------------------------------------------
def test_batch_range_and_profiles() -> None:
    static = {"batch": {"dynamic": False, "size": 2}}
    assert batch_range(static, None) == BatchRange(2, 2, 2) == batch_range(static, 2)
    with pytest.raises(LCError, match="--dynamic-batch 8"):
        batch_range(static, 8)
    dynamic = {"batch": {"dynamic": True, "max": 4}}
    assert batch_range(dynamic, None) == BatchRange(1, 4, 4)
    assert batch_range(dynamic, 16) == BatchRange(1, 16, 16)
    with pytest.raises(LCError, match="at least 1"):
        batch_range(dynamic, 0)
    inputs = [{"name": "feat1", "shape": ["batch", 32, 20, 20]}, {"name": "rho", "shape": [1]}]
    assert profile_shapes(inputs, BatchRange(1, 4, 8)) == {
        "feat1": ([1, 32, 20, 20], [4, 32, 20, 20], [8, 32, 20, 20]), "rho": ([1], [1], [1])}
    with pytest.raises(LCError, match="only the batch"):
        profile_shapes([{"name": "image", "shape": ["batch", "h", 160, 3]}], BatchRange(1, 1, 1))


# -- the engine-dir writer (TensorRT stood in by a fake builder) --------------------------------
SETTINGS = {"precision": "fp16", "tensorrt": "11.4.0.106", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"},
            "plugin_sha256": "ab" * 32, "batch": BatchRange(1, 1, 1), "version_compatible": False}


def test_write_engine_dir(tmp_path) -> None:
    built = []

    def fake_build(graph) -> BuiltEngine:
        built.append(graph.name)
        return BuiltEngine(f"plan of {graph.name}".encode(), "cd" * 32)

    manifest = read_manifest(DEMO_MODEL)
    target = write_engine_dir(tmp_path / "engines", DEMO_MODEL, manifest, fake_build, SETTINGS)
    assert built == ["stage1", "stage2", "stage3", "dense"] and is_engine_dir(target)
    metadata = json.loads((target / METADATA).read_text())
    assert metadata["tensorrt"] == "11.4.0.106" and metadata["precision"] == "fp16"
    assert metadata["gpu"]["compute_capability"] == "9.0" and metadata["plugin_sha256"] == "ab" * 32
    record = metadata["engines"]["stage2"]
    assert record["onnx_sha256"] == sha256_file(DEMO_MODEL / "stage2.onnx")
    assert record["sha256"] == sha256_file(target / "stage2.engine")
    assert [i["name"] for i in record["inputs"]] == ["feat1", "mask2", "rho"]
    assert record["inputs"][0]["profile"]["max"] == [1, 32, 20, 20]
    runtime_manifest = read_manifest(target)  # verifies the engines' hashes
    assert [s["file"] for s in runtime_manifest["stages"]] == ["stage1.engine", "stage2.engine", "stage3.engine"]
    assert runtime_manifest["classes"] == manifest["classes"] and runtime_manifest["dense"]["file"] == "dense.engine"


def test_failed_build_leaves_nothing(tmp_path) -> None:
    def failing(graph) -> BuiltEngine:
        if graph.name == "stage3":
            raise LCError("parser rejected it")
        return BuiltEngine(b"plan", "00")

    with pytest.raises(LCError, match="parser"):
        write_engine_dir(tmp_path / "engines", DEMO_MODEL, read_manifest(DEMO_MODEL), failing, SETTINGS)
    assert list(tmp_path.iterdir()) == []


# -- lc-build: one-line errors, nothing written -------------------------------------------------
def lc_build(argv: list[str], capsys) -> tuple[int, str]:
    code = run_cli(build.main, argv)
    return code, capsys.readouterr().err.strip()


def test_lc_build_without_tensorrt(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError, installed or not
    code, err = lc_build([str(DEMO_MODEL), "--precision", "fp16", "-o", str(tmp_path / "engines")], capsys)
    assert code == 1 and err.startswith("error: lc-build needs TensorRT") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("gpus, builder_error", [
    (0, None), (1, TypeError("pybind11::init(): factory function returned nullptr"))])
def test_lc_build_without_gpu(gpus, builder_error, tmp_path, monkeypatch, capsys) -> None:
    install_gpu_without_builder(monkeypatch, gpus, builder_error)
    code, err = lc_build([str(DEMO_MODEL), "--precision", "fp32", "-o", str(tmp_path / "engines")], capsys)
    assert code == 1 and "no CUDA GPU" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_int8_needs_lc_calibrate(tmp_path, capsys) -> None:
    code, err = lc_build([str(DEMO_MODEL), "--precision", "int8", "-o", str(tmp_path / "engines")], capsys)
    assert code == 1 and "run lc-calibrate first" in err
    assert list(tmp_path.iterdir()) == []


def test_qdq_dir_builds_only_as_int8(tmp_path, monkeypatch, capsys) -> None:
    qdq = copy_demo_model(tmp_path / "qdq", quantization={"method": "test record"})
    code, err = lc_build([str(qdq), "--precision", "fp16", "-o", str(tmp_path / "engines")], capsys)
    assert code == 1 and "--precision int8" in err
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, err = lc_build([str(qdq), "--precision", "int8", "-o", str(tmp_path / "engines")], capsys)
    assert code == 1 and "needs TensorRT" in err  # past the QDQ check, as far as this machine goes
    assert not (tmp_path / "engines").exists()


def test_lc_build_refuses_bad_targets(tmp_path, capsys) -> None:
    code, err = lc_build([str(DEMO_MODEL), "--precision", "fp16", "-o", str(DEMO_MODEL)], capsys)
    assert code == 1 and "holds an exported model" in err
    code, err = lc_build([str(DEMO_MODEL), "--precision", "fp16", "-o", str(tmp_path / "e"), "--max-batch", "4"],
                         capsys)
    assert code == 1 and "--dynamic-batch 4" in err
    code, err = lc_build([str(tmp_path / "missing"), "--precision", "fp16", "-o", str(tmp_path / "e")], capsys)
    assert code == 1 and "no such model directory" in err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    code, err = lc_build([str(DEMO_MODEL), "--precision", "fp16", "-o", str(tmp_path / "photos")], capsys)
    assert code == 1 and "holds other files" in err and list((tmp_path / "photos").iterdir()) == [
        tmp_path / "photos" / "a.jpg"]


def test_lc_build_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--precision", "--timing-cache", "--workspace", "--max-batch", "--version-compatible"):
        assert flag in out
