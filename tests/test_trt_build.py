"""lc-build without TensorRT: fp16 conversion parity on ONNX Runtime, the checks that run before
TensorRT, the engine-dir writer, and one-line errors with nothing written."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

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
    Graph,
    SizeRange,
    batch_range,
    is_engine_dir,
    profile_shapes,
    size_range,
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
    rho = np.full(21, 0.985, np.float32)
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


def test_size_profiles_of_a_dynamic_size_export(dynamic_size_model) -> None:
    """--shapes MIN:OPT:MAX within the export's bounds (default: the bounds, the nominal size as opt); the image's
    height and width and the stage tensors' (an eighth) follow it, with the batch range."""
    manifest = read_manifest(dynamic_size_model)
    assert size_range(manifest, None) == SizeRange((16, 16), (64, 64), (96, 128))
    sizes = size_range(manifest, ((16, 32), (48, 48), (64, 128)))
    inputs = {stage["file"]: stage["inputs"] for stage in manifest["stages"]}
    shapes = profile_shapes([*inputs["stage1.onnx"], *inputs["stage3.onnx"]], BatchRange(1, 2, 3), sizes)
    assert shapes["image"] == ([1, 16, 32, 3], [2, 48, 48, 3], [3, 64, 128, 3]) and shapes["rho"] == ([21],) * 3
    assert shapes["feat2"] == ([1, 64, 2, 4], [2, 64, 6, 6], [3, 64, 8, 16])
    assert shapes["mask2"] == ([1, 1, 2, 4], [2, 1, 6, 6], [3, 1, 8, 16])
    for shapes, message in [
        (((16, 16), (60, 64), (96, 128)), "multiple of 8"),
        (((16, 16), (64, 64), (48, 128)), "MIN <= OPT <= MAX"),
        (((8, 16), (64, 64), (96, 128)), r"outside the sizes the model was exported for \(16x16 to 96x128"),
        (((16, 16), (64, 64), (96, 136)), "outside the sizes"),
        (((16, 16), (64, 64)), "three sizes"),
    ]:
        with pytest.raises(LCError, match=message) as error:
            size_range(manifest, shapes)
        assert "\n" not in str(error.value)
    fixed = read_manifest(DEMO_MODEL)
    assert size_range(fixed, None) is None and size_range(fixed, ((160, 160),) * 3) is None
    with pytest.raises(LCError, match="exported at a fixed 160x160; re-export it with lc-export --dynamic-size"):
        size_range(fixed, ((160, 160), (160, 160), (320, 320)))


class _Network:
    """A parsed network's inputs as TensorRT reports them (-1: a dynamic dimension)."""

    def __init__(self, shapes: dict[str, list[int]]) -> None:
        self.inputs = [type("Tensor", (), {"name": name, "shape": shape}) for name, shape in shapes.items()]
        self.num_inputs = len(self.inputs)

    def get_input(self, index: int):
        return self.inputs[index]


def test_the_optimization_profile_lc_build_adds(dynamic_size_model) -> None:
    """Every input of a network with dynamic dimensions gets its (min, opt, max) from lc.json's dimensions; a
    static network none; a parsed input whose dynamic dimensions are not lc.json's symbolic ones is refused."""
    from layercascade.runtime.trt.build import Profile, add_profile

    manifest = read_manifest(dynamic_size_model)
    graph = Graph("stage2", "stage2.onnx", manifest["stages"][1])
    profile = Profile(BatchRange(1, 3, 3), SizeRange((16, 16), (64, 64), (96, 128)))
    calls = []
    builder = type("Builder", (), {"create_optimization_profile": lambda self: type("Profile", (), {
        "set_shape": lambda self, *args: calls.append(args)})()})()
    config = type("Config", (), {"add_optimization_profile": lambda self, p: calls.append("added")})()
    add_profile(builder, config, _Network({"feat1": [-1, 32, -1, -1], "mask2": [-1, 1, -1, -1], "rho": [21]}), graph,
                profile)
    assert calls == [("feat1", [1, 32, 2, 2], [3, 32, 8, 8], [3, 32, 12, 16]),
                     ("mask2", [1, 1, 2, 2], [3, 1, 8, 8], [3, 1, 12, 16]), ("rho", [21], [21], [21]), "added"]
    with pytest.raises(LCError, match=r"TensorRT parsed input 'mask2' as \[-1, 1, 8, -1\], lc.json lists"):
        add_profile(builder, config, _Network({"feat1": [-1, 32, -1, -1], "mask2": [-1, 1, 8, -1], "rho": [21]}),
                    graph, profile)
    calls.clear()
    static = Graph("stage2", "stage2.onnx", read_manifest(DEMO_MODEL)["stages"][1])
    add_profile(builder, config, _Network({"feat1": [1, 32, 20, 20], "mask2": [1, 1, 20, 20], "rho": [21]}), static,
                Profile(BatchRange(1, 1, 1), None))
    assert calls == []


# -- the engine-dir writer (TensorRT stood in by a fake builder) --------------------------------
SETTINGS = {"precision": "fp16", "tensorrt": "11.4.0.106", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"},
            "plugin_sha256": "ab" * 32, "ptx_cuda": "12.8", "batch": BatchRange(1, 1, 1), "version_compatible": False}


def test_write_engine_dir(tmp_path) -> None:
    built = []

    def fake_build(graph) -> BuiltEngine:
        built.append(graph.name)
        return BuiltEngine(f"plan of {graph.name}".encode(), "cd" * 32, graph.name == "stage3")

    manifest = read_manifest(DEMO_MODEL)
    target = write_engine_dir(tmp_path / "engines", DEMO_MODEL, manifest, fake_build, SETTINGS)
    assert built == ["stage1", "stage2", "stage3", "dense"] and is_engine_dir(target)
    metadata = json.loads((target / METADATA).read_text())
    assert metadata["tensorrt"] == "11.4.0.106" and metadata["precision"] == "fp16"
    assert metadata["gpu"]["compute_capability"] == "9.0" and metadata["plugin_sha256"] == "ab" * 32
    assert metadata["ptx_cuda"] == "12.8" and metadata["size"] is None  # a fixed-size export
    assert [r["data_dependent_shapes"] for r in metadata["engines"].values()] == [False, False, True, False]
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
        return BuiltEngine(b"plan", "00", False)

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


def test_lc_build_below_the_tensorrt_floor(tmp_path, monkeypatch, capsys) -> None:
    """A TensorRT whose ONNX parser cannot create the Python plugin (before 10.10): one line naming the
    version found and the one needed, before the GPU is even asked."""
    install_gpu_without_builder(monkeypatch, 1, None)
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", "10.3.0.30")  # JetPack 6.2's
    code, err = lc_build([str(DEMO_MODEL), "--precision", "fp32", "-o", str(tmp_path / "engines")], capsys)
    assert code == 1 and "\n" not in err
    assert err.startswith("error: lc-build needs TensorRT ≥ 10.10, found TensorRT 10.3.0.30: older ONNX parsers")
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
    for flag in ("--precision", "--timing-cache", "--workspace", "--max-batch", "--shapes", "--version-compatible"):
        assert flag in out


# -- the static TensorRT check (lc-build --check) ----------------------------------------------------
def _errors(findings) -> list[str]:
    return [f.line() for f in findings if f.level == "error"]


def test_check_passes_every_kind_of_export(tiny_model, dynamic_model, dynamic_size_model, demo_int8,
                                           tmp_path) -> None:
    """fp32 and fp16 of a static, a dynamic-batch and a dynamic-size export, the INT8 dir, a dense-only export:
    no error; NonZero (the label upsampling's mixed cells) is listed as a warning with its cost."""
    from layercascade.export.stages import export_model
    from layercascade.runtime.trt.build import check_model_dir

    dense = export_model(tiny_model[0], tmp_path / "dense", dense_only=True)
    for folder, graphs in ((tiny_model[1], 8), (dynamic_model[1], 8), (dynamic_size_model, 8), (demo_int8[0], 4),
                           (dense, 2)):
        findings, checked = check_model_dir(folder)
        assert checked == graphs and _errors(findings) == [], folder
        warnings = [f for f in findings if f.level == "warning"]
        assert warnings and all(f.op == "NonZero" and "CUDA graph" in f.reason for f in warnings)


def test_data_dependent_shapes_are_found_in_the_graphs_tensorrt_parses(tmp_path) -> None:
    """What lc-build records per engine (and --cuda-graph never captures): stage 3 and the dense graph
    hold NonZero, stages 1–2 none; an op in a model-local function counts too."""
    from layercascade.runtime.trt.build import tensorrt_graph
    from layercascade.runtime.trt.check import data_dependent_shapes
    from layercascade.runtime.trt.engines import graphs_of

    found = {graph.name: data_dependent_shapes(tensorrt_graph(graph, DEMO_MODEL, precision))
             for graph in graphs_of(read_manifest(DEMO_MODEL)) for precision in ("fp32", "fp16")}
    assert found == {"stage1": False, "stage2": False, "stage3": True, "dense": True}
    inner = onnx.helper.make_function("local", "F", ["x"], ["y"], [onnx.helper.make_node("NonZero", ["x"], ["y"])],
                                      [onnx.helper.make_opsetid("", 18)])
    graph = onnx.helper.make_graph([onnx.helper.make_node("F", ["x"], ["y"], domain="local")], "g",
                                   [onnx.helper.make_tensor_value_info("x", FLOAT, [4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [1, None])])
    model = onnx.helper.make_model(graph, functions=[inner], opset_imports=[onnx.helper.make_opsetid("", 18)])
    assert data_dependent_shapes(model)
    del model.functions[:]
    assert not data_dependent_shapes(model)


def test_tensorrt_int8_graphs_hold_no_constant_dequantize_but_the_convs_own(demo_int8) -> None:
    """int32 bias DQs and the plugin's weight DQs become float initializers of the same values
    (TensorRT's DequantizeLinear takes int8 data only); the int8 weights of standard convs keep theirs."""
    import onnxruntime as ort

    from layercascade.export import regionconv
    from layercascade.runtime.trt.build import tensorrt_graph
    from layercascade.runtime.trt.engines import graphs_of

    folder = demo_int8[0]
    feeds = {"image": synthetic_images(1), "rho": np.full(21, 0.985, np.float32)}
    for graph in graphs_of(read_manifest(folder)):
        model = tensorrt_graph(graph, folder, "int8")
        producers = {o: n for n in model.graph.node for o in n.output}
        initializers = {t.name: t for t in model.graph.initializer}
        dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert all(initializers[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dequantize
                   if n.input[0] in initializers)
        for node in model.graph.node:
            if (node.domain, node.op_type) == (regionconv.DOMAIN, regionconv.OP_TYPE):
                assert node.input[1] in initializers and node.input[1] not in producers
        # Same results as the dir's graph on ONNX Runtime (RegionConv as its function body), each stage
        # fed the outputs of the stages before.
        sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                    for m in (onnx.load(folder / graph.onnx), model)]
        outputs = [s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()}) for s in sessions]
        for ours, theirs in zip(*outputs):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        feeds.update(zip((o.name for o in sessions[0].get_outputs()), outputs[0]))


def _checked(nodes, inputs, outputs, initializers=(), opset=18, domains=()) -> list[str]:
    from layercascade.runtime.trt.check import check_graph

    graph = onnx.helper.make_graph(nodes, "bad", inputs, outputs, list(initializers))
    opsets = [onnx.helper.make_opsetid("", opset), *(onnx.helper.make_opsetid(d, 1) for d in domains)]
    return _errors(check_graph(onnx.helper.make_model(graph, opset_imports=opsets), "bad.onnx"))


def test_check_catches_what_the_parser_rejects() -> None:
    """Hand-made graphs, each with one thing TensorRT's ONNX parser rejects: one line naming it."""
    info, T = onnx.helper.make_tensor_value_info, onnx.TensorProto
    node = onnx.helper.make_node
    # The label upsampling's old form: an INT64 MatMul.
    lines = _checked([node("MatMul", ["a", "b"], ["c"], name="labels/top_left_2d")],
                     [info("a", T.INT64, [4, 3]), info("b", T.INT64, [3, 1])], [info("c", T.INT64, [4, 1])])
    assert lines == ["error: bad.onnx: labels/top_left_2d (MatMul): INT64 input 'a': TensorRT's MatMul takes FP32, "
                     "FP16, BF16"]
    # NonZero of a bool map, an op the parser lacks, axes that are not an initializer, an old opset.
    lines = _checked([node("NonZero", ["m"], ["i"], name="nz"), node("Unique", ["x"], ["u"], name="uq"),
                      node("ReduceSum", ["x", "axes"], ["s"], name="rs")],
                     [info("m", T.BOOL, [4]), info("x", T.FLOAT, [4]), info("axes", T.INT64, [1])],
                     [info("i", T.INT64, None), info("u", T.FLOAT, None), info("s", T.FLOAT, None)], opset=8)
    assert any("opset 8" in line for line in lines)
    assert any("nz (NonZero): BOOL input 'm'" in line for line in lines)
    assert any("uq (Unique): TensorRT" in line and "does not support Unique" in line for line in lines)
    assert any("rs (ReduceSum): input 'axes' must be a constant" in line for line in lines)
    # Axes from a Constant node are constants; a zero point of 5, TopK's limits are not for TensorRT.
    axes = onnx.helper.make_tensor("axes", T.INT64, [1], [0])
    zero_point = numpy_helper.from_array(np.array(5, np.int8), "zp")
    lines = _checked([node("Constant", [], ["ax"], value=axes), node("ReduceSum", ["x", "ax"], ["s"], name="rs"),
                      node("Constant", [], ["k"], value=onnx.helper.make_tensor("k", T.INT64, [1], [4000])),
                      node("TopK", ["x", "k"], ["v", "i"], name="top", sorted=0),
                      node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="quant")],
                     [info("x", T.FLOAT, [4])],
                     [info("s", T.FLOAT, None), info("v", T.FLOAT, None), info("i", T.INT64, None),
                      info("q", T.INT8, None)],
                     [zero_point, numpy_helper.from_array(np.array(0.1, np.float32), "scale")])
    assert not any("rs (ReduceSum)" in line for line in lines)
    assert any("top (TopK): TopK with sorted=0" in line for line in lines)
    assert any("top (TopK): TopK K=4000: TensorRT takes K < 3840" in line for line in lines)
    assert any("quant (QuantizeLinear): zero point must be 0" in line for line in lines)
    # uint8 inside the graph; a custom op without a plugin.
    lines = _checked([node("Relu", ["x"], ["r"], name="relu"), node("Cast", ["r"], ["u"], name="to_u8", to=T.UINT8),
                      node("Identity", ["u"], ["y"], name="copy"),
                      node("Foo", ["x"], ["z"], name="foo", domain="acme")],
                     [info("x", T.FLOAT, [4])], [info("y", T.UINT8, [4]), info("z", T.FLOAT, [4])], domains=["acme"])
    assert any("uint8 tensor 'u' inside the graph" in line for line in lines)
    assert any("foo (acme::Foo): custom op acme::Foo has no TensorRT plugin" in line for line in lines)


def test_check_holds_region_convs_to_the_plugin_fields() -> None:
    info, T = onnx.helper.make_tensor_value_info, onnx.TensorProto
    weights = [numpy_helper.from_array(np.zeros((4, 4, 3, 3), np.float32), "w"),
               numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    good = regionconv.node_attributes((1, 1), (1, 1), 1, True)
    inputs = [info("x", T.FLOAT, [1, 4, 8, 8]), info("m", T.FLOAT, [1, 1, 8, 8])]
    outputs = [info("y", T.FLOAT, [1, 4, 8, 8])]

    def region_conv(**attributes):
        return [onnx.helper.make_node(regionconv.OP_TYPE, ["x", "w", "b", "m"], ["y"], name="rc",
                                      domain=regionconv.DOMAIN, **attributes)]

    assert _checked(region_conv(**good), inputs, outputs, weights, domains=[regionconv.DOMAIN]) == []
    lines = _checked(region_conv(**{**good, "extra": 1}), inputs, outputs, weights, domains=[regionconv.DOMAIN])
    assert len(lines) == 1 and "attributes do not match the plugin's fields" in lines[0] and "['extra']" in lines[0]
    lines = _checked(region_conv(**{**good, "dilations": [0, 1]}), inputs, outputs, weights,
                     domains=[regionconv.DOMAIN])
    assert len(lines) == 1 and "dilations >= 1" in lines[0]
    grouped = [numpy_helper.from_array(np.zeros((4, 2, 3, 3), np.float32), "w"), weights[1]]
    lines = _checked(region_conv(**{**good, "group": 2}), inputs, outputs, grouped, domains=[regionconv.DOMAIN])
    assert len(lines) == 1 and "grouped: the AOT kernel lc-build uses has no groups" in lines[0]


def test_lc_build_check_command(tmp_path, capsys) -> None:
    code, out = run_cli(build.main, ["--check", "--json"]), capsys.readouterr().out
    report = json.loads(out)
    assert code == 0 and report["errors"] == 0 and report["graphs"] == 8 and report["tensorrt_operator_table"]
    bad = copy_demo_model(tmp_path / "bad")
    model = onnx.load(bad / "stage1.onnx")
    model.graph.node.append(onnx.helper.make_node("Unique", ["feat1"], ["unique"], name="unique"))
    onnx.save(model, bad / "stage1.onnx")
    manifest = json.loads((bad / "lc.json").read_text())
    manifest["files"]["stage1.onnx"] = sha256_file(bad / "stage1.onnx")
    (bad / "lc.json").write_text(json.dumps(manifest))
    assert run_cli(build.main, [str(bad), "--check", "--precision", "fp32"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("error: stage1.onnx (fp32): unique (Unique): TensorRT 10.15's ONNX parser does not support "
                        "Unique")
    assert lines[-1].endswith("1 error(s), 2 warning(s) in 4 graph(s) (TensorRT 10.15's ONNX parser operator table)")
    # lc-build runs the same check before it needs TensorRT, and builds nothing
    code, err = lc_build([str(bad), "--precision", "fp32", "-o", str(tmp_path / "engines")], capsys)
    assert code == 1 and "unique (Unique)" in err and "1 node(s) TensorRT's ONNX parser would reject" in err
    assert not (tmp_path / "engines").exists()


def test_lc_build_check_of_a_dynamic_size_export(dynamic_size_model, tmp_path, monkeypatch, capsys) -> None:
    """lc-build --check reports the profile a build would use (--max-batch, --shapes or the defaults) and refuses
    sizes outside the export's bounds, as lc-build does before it needs TensorRT; an input dimension no profile
    covers is an error of the check."""
    from layercascade.runtime.trt.build import profile_findings

    folder = str(dynamic_size_model)
    assert run_cli(build.main, [folder, "--check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == ("profile: batch 1 … 3 (opt 3), images 16x16 … 96x128 (opt 64x64), stage tensors 2x2 … "
                         "12x16")
    assert run_cli(build.main, [folder, "--check", "--json", "--max-batch", "2", "--shapes", "16x16:32x32:48x64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["profile"] == {
        "batch": {"min": 1, "opt": 2, "max": 2}, "size": {"min": [16, 16], "opt": [32, 32], "max": [48, 64]}}
    for argv in ([folder, "--check"], [folder, "--precision", "fp16", "-o", str(tmp_path / "engines")]):
        code, err = lc_build([*argv, "--shapes", "16x16:64x64:128x128"], capsys)
        assert code == 1 and "\n" not in err
        assert err == ("error: --shapes 16x16:64x64:128x128: outside the sizes the model was exported for (16x16 to "
                       "96x128, lc-export --dynamic-size); choose sizes within them, or re-export with wider bounds")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, err = lc_build([folder, "--precision", "fp16", "-o", str(tmp_path / "engines"), "--shapes",
                          "16x16:64x64:96x96"], capsys)
    assert code == 1 and "needs TensorRT" in err and list(tmp_path.iterdir()) == []  # past the profile checks
    with pytest.raises(SystemExit) as exit_info:
        build.main([folder, "--check", "--shapes", "16x16:64x64"])
    assert exit_info.value.code == 2 and "expected 3 sizes HxW joined by ':'" in capsys.readouterr().err
    model = onnx.load(dynamic_size_model / "stage2.onnx")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "channels"
    [finding] = profile_findings(model, "stage2.onnx (fp32)")
    assert finding.level == "error" and finding.line().startswith(
        "error: stage2.onnx (fp32): feat1 (graph input): tensor 'feat1' has the symbolic dimension 'channels'")
    assert run_cli(build.main, ["--check"]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == "profile: batch 1, images 160x160 (a fixed-size export)"


def test_version_compatible_engines_with_the_python_plugin_are_refused(tmp_path, capsys) -> None:
    code, err = lc_build(["--precision", "fp16", "-o", str(tmp_path / "engines"), "--version-compatible"], capsys)
    assert code == 1 and "--version-compatible" in err and "Python plugin" in err and "\n" not in err.strip()
