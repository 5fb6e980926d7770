"""The OpenVINO backend against ONNX Runtime on the same model dirs, its settings and errors, and
lc-bench's dense peers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from layercascade.cli import bench, run
from layercascade.contract import RhoLike
from layercascade.errors import LCError, run_cli
from layercascade.manifest import sha256_file
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.timing import forced_masks
from layercascade.tests.helpers import DYNAMIC_MAX, random_images, synthetic_images

openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'layercascade[openvino]')")


def labels_of(cascade: Cascade, images: np.ndarray, rho: RhoLike | None = None) -> np.ndarray:
    return np.stack([cascade(image, rho).labels for image in images])


@pytest.mark.parametrize("fixture", ["tiny_model", "demo_fp32"])
def test_fp32_labels_equal_onnx_runtime(fixture: str, request: pytest.FixtureRequest) -> None:
    """fp32 on OpenVINO: the labels and stage fractions of ONNX Runtime (≥ 99.99 % of labels equal)."""
    value = request.getfixturevalue(fixture)
    folder = value[1] if isinstance(value, tuple) else value
    with Cascade.load(folder, backend="ort") as ort, \
            Cascade.load(folder, backend="openvino", precision="fp32") as ov:
        images = synthetic_images(4, ort.input_size)
        for rho in (None, 0.9, 1.0, (0.9, 0.985), (1.0, 0.9)):
            ours = [ov(image, rho) for image in images]
            theirs = [ort(image, rho) for image in images]
            agreement = np.mean([np.mean(a.labels == b.labels) for a, b in zip(ours, theirs)])
            assert agreement >= 0.9999, (rho, agreement)
            np.testing.assert_allclose([a.stage_fractions for a in ours], [b.stage_fractions for b in theirs],
                                       atol=1e-3)
        masks = forced_masks(ov.run_batch(images[:1]).mask2.shape, (0.3, 0.15))
        forced = [c.run_batch(images[:1], 0.985, masks) for c in (ov, ort)]
        assert np.mean(forced[0].labels == forced[1].labels) >= 0.9999
        np.testing.assert_array_equal(forced[0].mask2, masks[0])


def test_default_precision_is_openvinos_and_close_to_fp32(demo_fp32: Path) -> None:
    """Without --precision OpenVINO picks (bf16 where the CPU has it): labels ≥ 99.5 % those of fp32."""
    from layercascade.runtime.openvino.loader import cpu_capabilities

    with Cascade.load(demo_fp32, backend="openvino") as default, \
            Cascade.load(demo_fp32, backend="openvino", precision="fp32") as fp32:
        expected = "bf16" if "BF16" in cpu_capabilities() else "f32"
        assert default.runner.inference_precision() == expected and f"({expected})" in default.runner.machine()
        assert fp32.runner.inference_precision() == "f32"
        images = synthetic_images(4)
        assert np.mean(labels_of(default, images) == labels_of(fp32, images)) >= 0.995


def test_dynamic_batch_and_the_stages_one_by_one(dynamic_model) -> None:
    with Cascade.load(dynamic_model[1], backend="openvino", precision="fp32") as ov, \
            Cascade.load(dynamic_model[1], backend="ort") as ort:
        images = random_images(DYNAMIC_MAX, ov.input_size, seed=3)
        for rho in (None, (0.9, 0.985)):
            joined, stages = ov.run_batch(images, rho), ov.runner.run_stages(images, ov.rho(rho))
            np.testing.assert_array_equal(joined.labels, stages.labels)
            np.testing.assert_array_equal(joined.mask3, stages.mask3)
            assert set(stages.timings) == {"stage1", "stage2", "stage3", "total"}
            assert np.mean(joined.labels == ort.run_batch(images, rho).labels) >= 0.9999


def test_int8_dirs_run_their_quantized_graphs(demo_int8) -> None:
    """An INT8 dir from lc-calibrate runs as it is (OpenVINO's int8 kernels), close to ONNX Runtime's."""
    folder = demo_int8[0]
    with Cascade.load(folder, backend="openvino", precision="int8") as ov, Cascade.load(folder, backend="ort") as ort:
        assert "int8 (QDQ)" in ov.runner.machine()
        images = synthetic_images(4)
        assert np.mean(labels_of(ov, images) == labels_of(ort, images)) >= 0.99


@pytest.mark.parametrize(("options", "message"), [
    ({"device": "cuda"}, "--device cuda: the openvino backend runs on the CPU here"),
    ({"precision": "fp16"}, "--precision fp16: the openvino backend runs fp32, bf16 or int8"),
    ({"precision": "int8"}, "--precision int8 runs an INT8 dir; make one with lc-calibrate"),
    ({"uint8_activations": False}, "--uint8-activations: not a setting of the OpenVINO backend"),
])
def test_settings_it_does_not_have_are_one_line(demo_fp32: Path, options: dict, message: str) -> None:
    with pytest.raises(LCError, match=message.replace("(", r"\(")):
        Cascade.load(demo_fp32, backend="openvino", **options)


def test_graphs_are_checked_and_openvinos_errors_name_the_file(demo_fp32: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(demo_fp32, folder)
    model = onnx.load(folder / "stage1.onnx")
    next(node for node in model.graph.node if node.op_type == "Relu").op_type = "NotAnOp"
    onnx.save(model, folder / "stage1.onnx")
    manifest = json.loads((folder / "lc.json").read_text())
    manifest["files"]["stage1.onnx"] = sha256_file(folder / "stage1.onnx")
    (folder / "lc.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="stages 1-3: running RegionConv function bodies"), \
            pytest.raises(LCError) as error:
        Cascade.load(folder, backend="openvino")
    assert str(error.value).startswith(f"{folder}/stages 1-3: OpenVINO cannot compile it (")
    assert "NotAnOp" in str(error.value)


def test_lc_run_and_lc_bench_peers(demo_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(run.main, ["-o", str(tmp_path / "out"), "--backend", "openvino", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "openvino"
    assert run_cli(bench.main, [str(demo_fp32), "--backend", "openvino", "--peers", "--iters", "4", "--warmup", "1",
                                "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    peers = result["peers"]
    assert set(peers) == {"ort", "openvino", "torch", "ort-int8", "openvino-int8"} and peers["ort"]["precision"] == "fp32"
    assert "is not an INT8 dir; the int8 peers run an INT8 dir's dense.onnx" in peers["ort-int8"]["missing"]
    assert peers["torch"]["runs"] == 4  # the demo checkpoint is found by the sha256 lc.json records
    timed = {name: r["median_ms"] for name, r in peers.items() if "median_ms" in r}
    assert result["best_peer"] == min(timed, key=timed.get)
    assert result["speedup_vs_best_peer"] == pytest.approx(timed[result["best_peer"]] /
                                                           result["cascade"]["median_ms"], rel=0.01)
    assert run_cli(bench.main, [str(demo_fp32), "--peers", "--iters", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "dense, openvino " in out and "speedup vs the fastest dense peer" in out


def test_lc_bench_profile_reads_openvinos_counters(demo_fp32: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(bench.main, [str(demo_fp32), "--backend", "openvino", "--iters", "3", "--warmup", "1", "--profile",
                                "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)["profile"]
    ops = {r["op"]: r for r in profile["op_types"]}
    # the standard convs run as Convolution, the region convs' row GEMMs as FullyConnected
    assert ops["Convolution"]["kernels"] > 0 and ops["FullyConnected"]["kernels"] > 0
    assert profile["conv_gemm_ms"] > 0 and profile["runs"] == 3
    assert profile["conv_gemm_ms"] + profile["other_ms"] == pytest.approx(profile["kernel_ms"], abs=2e-3)



def test_lc_bench_compare_fp32_bf16_int8_on_openvino(demo_int8, capsys: pytest.CaptureFixture) -> None:
    """--compare on OpenVINO asks every precision by name (its default would be bf16), bf16 runs there only,
    and mIoU and label agreement with fp32 come with each row."""
    from layercascade.runtime.compare import precision_sources

    int8_dir, record, _ = demo_int8
    fp32_dir = Path(record["source"])
    assert precision_sources(int8_dir, ["fp32", "bf16", "int8"]) == {  # auto: the backend that has them all
        "fp32": (fp32_dir, {"backend": "openvino", "precision": "fp32"}),
        "bf16": (fp32_dir, {"backend": "openvino", "precision": "bf16"}),
        "int8": (int8_dir, {"backend": "openvino", "precision": "int8"})}
    with pytest.raises(LCError, match=r"--compare bf16: the ort backend has no bf16 \(backends that have it: openvino\)"):
        precision_sources(int8_dir, ["fp32", "bf16"], "ort")
    precisions = "fp32,bf16,int8" if bf16_native() else "fp32,int8"
    assert run_cli(bench.main, [str(int8_dir), "--compare", precisions, "--iters", "2",
                                "--warmup", "1", "--data", "synthetic", "--limit", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["precision"]: row for row in result["rows"]}
    assert result["backend"] == "openvino" and list(rows) == precisions.split(",") and rows["fp32"]["label_agreement"] == 100.0
    assert all(0 <= row["miou"] <= 100 and row["label_agreement"] > 90 for row in rows.values())


def bf16_native() -> bool:
    from layercascade.runtime.openvino.loader import cpu_capabilities

    return "BF16" in cpu_capabilities()


def test_layout_rewrites_give_the_same_numbers(demo_fp32: Path) -> None:
    """layout.py moves stage 1's Sub(mean) above its Transpose to NCHW and the lowering's zero-border Pads
    above their Transposes to rows; the joined, lowered cascade gives the same outputs either way."""
    from layercascade.export.lowering import lower_region_convs
    from layercascade.runtime.openvino.layout import openvino_layouts
    from layercascade.runtime.openvino.loader import compile_config, compile_graph

    with Cascade.load(demo_fp32, backend="openvino", precision="fp32") as cascade:
        graph = lower_region_convs(cascade.runner.joined_graph(False))
    rewritten = openvino_layouts(onnx.ModelProto.FromString(graph.SerializeToString()))
    onnx.checker.check_model(rewritten, full_check=True)

    def preprocess(model: onnx.ModelProto) -> list[str]:
        return [n.op_type for n in model.graph.node if n.name.startswith("stage1/preprocess/")]

    def padded_before_transpose(model: onnx.ModelProto) -> int:
        producers = {output: node for node in model.graph.node for output in node.output}
        return sum(n.op_type == "Transpose" and getattr(producers.get(n.input[0]), "op_type", None) == "Pad"
                   for n in model.graph.node)

    assert preprocess(graph) == ["Cast", "Transpose", "Sub"] and preprocess(rewritten) == ["Cast", "Sub", "Transpose"]
    assert padded_before_transpose(rewritten) == padded_before_transpose(graph) + 1  # stage 1's features to rows
    config = compile_config("fp32")
    plain, ours = compile_graph(graph, "plain", config), compile_graph(rewritten, "rewritten", config)
    for image in synthetic_images(3):
        feeds = {"image": image[None], "rho2": np.full(21, 0.985, np.float32), "rho3": np.full(21, 0.9, np.float32)}
        before, after = plain.infer(feeds), ours.infer(feeds)
        for name, value in before.items():
            np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_pad_before_transpose_rewrites_every_match() -> None:
    """Two Transpose → Pad chains (a big backbone's lowering has several): both swapped, same values."""
    from onnx import TensorProto, helper

    from layercascade.runtime.openvino.layout import pad_before_transpose

    pads = onnx.numpy_helper.from_array(np.array([0, 1, 2, 0, 0, 1, 2, 0], np.int64), "pads")
    nodes = [helper.make_node("Transpose", ["x"], ["t1"], name="t1", perm=[0, 2, 3, 1]),
             helper.make_node("Pad", ["t1", "pads"], ["y1"], name="p1"),
             helper.make_node("Relu", ["x"], ["r"], name="r"),
             helper.make_node("Transpose", ["r"], ["t2"], name="t2", perm=[0, 2, 3, 1]),
             helper.make_node("Pad", ["t2", "pads"], ["y2"], name="p2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 5, 8, 2]) for y in ("y1", "y2")],
                              [pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rewritten = pad_before_transpose(onnx.ModelProto.FromString(model.SerializeToString()))
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node] == ["Pad", "Transpose", "Relu", "Pad", "Transpose"]
    import onnxruntime

    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    before, after = (onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                     .run(None, {"x": x}) for m in (model, rewritten))
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_argmax_off_the_last_axis_gives_the_same_indices() -> None:
    """The Resize path's ArgMax over channels-last scores becomes Transpose → ArgMax(axis 1): same
    indices, ties to the first class included; other ArgMax stay."""
    from onnx import TensorProto, helper

    from layercascade.runtime.openvino.layout import argmax_off_last_axis

    nodes = [helper.make_node("ArgMax", ["x"], ["last"], name="last", axis=3, keepdims=0),
             helper.make_node("ArgMax", ["x"], ["negative"], name="negative", axis=-1, keepdims=0),
             helper.make_node("ArgMax", ["x"], ["middle"], name="middle", axis=1, keepdims=0),
             helper.make_node("ArgMax", ["x"], ["kept"], name="kept", axis=3, keepdims=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 6, 7])],
                              [helper.make_tensor_value_info(n.output[0], TensorProto.INT64, None) for n in nodes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rewritten = argmax_off_last_axis(onnx.ModelProto.FromString(model.SerializeToString()))
    assert [(n.op_type, attributes_of(n).get("axis")) for n in rewritten.graph.node] == [
        ("Transpose", None), ("ArgMax", 1), ("ArgMax", 1), ("ArgMax", 1), ("ArgMax", 3)]
    import onnxruntime

    x = np.random.default_rng(0).integers(0, 3, (2, 5, 6, 7)).astype(np.float32)  # many ties
    before, after = (onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                     .run(None, {"x": x}) for m in (model, rewritten))
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after[0], x.argmax(axis=3))


def attributes_of(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
