"""lc-triton: each config.pbtxt parses with the model-config schema tritonclient ships, and the
repository's models compute what Cascade computes when fed the inputs the config declares. (No
Triton server runs here: the configs are checked against Triton's schema, the models on the
runtimes Triton's backends wrap.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from layercascade.cli import triton as triton_cli
from layercascade.errors import LCError, run_cli
from layercascade.model.data.images import read_rgb
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import DEMO_MODEL, SAMPLES
from layercascade.serve.triton import MARKER, write_repository
from layercascade.tests.fake_tensorrt import fake_engine_dir


def triton_schema():
    """tritonclient's model_config_pb2 (the tests that parse configs skip without it)."""
    return pytest.importorskip("tritonclient.grpc.model_config_pb2",
                               reason="tritonclient is not installed (pip install tritonclient)")


def parse_config(folder: Path):
    """``config.pbtxt`` parsed with Triton's ModelConfig schema (unknown fields or bad values raise)."""
    from google.protobuf import text_format

    return text_format.Parse((folder / "config.pbtxt").read_text(), triton_schema().ModelConfig())


def declared_shape(tensor, max_batch_size: int, batch: int) -> list[int]:
    """The shape a client sends for a config tensor (the batch dimension first when Triton batches)."""
    dims = [batch if d == -1 else d for d in tensor.dims]
    return [batch, *dims] if max_batch_size > 0 else dims


def run_model(folder: Path, platform: str,
              feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, stage_counts, confidence) of the repository's model in ``folder`` on the runtime Triton's
    ``platform`` backend wraps: ONNX Runtime, or OpenVINO's CPU plugin in fp32."""
    if platform == "onnxruntime":
        import onnxruntime

        labels, counts, confidence = onnxruntime.InferenceSession(str(folder / "1" / "model.onnx")).run(None, feeds)
        return labels, counts, confidence
    import openvino

    assert (folder / "1" / "model.bin").is_file()
    compiled = openvino.Core().compile_model(str(folder / "1" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    answer = compiled(feeds)
    return tuple(answer[compiled.output(name)] for name in ("labels", "stage_counts", "confidence"))


def images_at(size: tuple[int, int], count: int) -> np.ndarray:
    from layercascade.model.data.images import resize_image

    samples = [read_rgb(path) for path in sorted(SAMPLES.iterdir())]
    return np.stack([resize_image(samples[k % len(samples)], size) for k in range(count)])


def test_demo_model_for_onnxruntime(tmp_path) -> None:
    import onnxruntime

    [folder] = write_repository(None, tmp_path / "repo")
    config = parse_config(folder)
    assert config.name == "demo" and config.backend == "onnxruntime" and config.max_batch_size == 0
    assert [i.name for i in config.input] == ["image", "rho2", "rho3"]
    assert [o.name for o in config.output] == ["labels", "stage_counts", "confidence"]
    assert config.instance_group[0].kind == triton_schema().ModelInstanceGroup.KIND_CPU
    session = onnxruntime.InferenceSession(str(folder / "1" / config.default_model_filename))
    assert [i.name for i in session.get_inputs()] == ["image", "rho2", "rho3"]
    assert all(node.domain in ("", "ai.onnx") for node in onnx.load(folder / "1" / "model.onnx").graph.node)
    with Cascade.load(None, backend="ort") as cascade:  # the exact fp32 reference
        image = images_at(cascade.input_size, 1)
        assert list(image.shape) == declared_shape(config.input[0], 0, 1)
        for rho, rho_class in (((0.9, 0.9), None), ((0.985, 0.985), None), ((1.0, 1.0), None), ((0.9, 0.97), None),
                               ((0.9, 0.97), {"background": 1.0, "person": 0.5})):
            rho2, rho3 = cascade.thresholds(rho, rho_class)  # one threshold per class and stage
            labels, counts, confidence = session.run(None, {"image": image, "rho2": rho2, "rho3": rho3})
            expected = cascade.run_batch(image, rho, rho_class=rho_class)
            np.testing.assert_array_equal(labels, expected.labels)
            np.testing.assert_array_equal(counts, expected.stage_counts)
            np.testing.assert_allclose(confidence, expected.confidence, atol=1e-6)
    written = json.loads((folder / MARKER).read_text())
    assert written["platform"] == "onnxruntime" and written["source"] == str(DEMO_MODEL.resolve())


@pytest.mark.parametrize("platform", ["onnxruntime", "openvino"])
def test_dynamic_batching_takes_a_threshold_per_image(dynamic_model, tmp_path, platform) -> None:
    """Requests batched by Triton each keep their own thresholds: a batch of three at three (ρ₂, ρ₃) gives
    each image what the cascade gives it alone at its thresholds."""
    _, model = dynamic_model
    [folder] = write_repository(model, tmp_path / "repo", platform=platform, max_batch=3, instances=2)
    config = parse_config(folder)
    assert config.max_batch_size == 3 and config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert config.instance_group[0].count == 2
    assert [list(t.dims) for t in config.input] == [[64, 64, 3], [21], [21]]  # one threshold per class
    settings = [((0.9, 0.97), {0: 1.0}), ((0.985, 0.985), None), ((0.9, 0.97), None)]  # class 0 never stops early
    with Cascade.load(model, backend="ort") as cascade:
        images = images_at(cascade.input_size, 3)
        assert list(images.shape) == declared_shape(config.input[0], 3, 3)
        rho2, rho3 = (np.stack(rows) for rows in zip(*(cascade.thresholds(*s) for s in settings), strict=True))
        expected = [cascade.run_batch(images[k:k + 1], rho, rho_class=rho_class)
                    for k, (rho, rho_class) in enumerate(settings)]
    assert config.backend == platform
    labels, counts, confidence = run_model(folder, platform, {"image": images, "rho2": rho2, "rho3": rho3})
    for k in range(3):
        np.testing.assert_array_equal(labels[k], expected[k].labels[0])
        np.testing.assert_array_equal(counts[k], expected[k].stage_counts[0])
        np.testing.assert_allclose(confidence[k], expected[k].confidence[0], atol=1e-4)
    assert len({tuple(c) for c in counts}) > 1  # the thresholds really differed per image


@pytest.mark.parametrize("platform", ["onnxruntime", "openvino"])
def test_a_dynamic_size_model_takes_every_size(dynamic_size_model, tmp_path, platform) -> None:
    """A --dynamic-size export: the image's and the labels' height and width are -1 in the config (the marker
    records the bounds), and the repository's model runs at two sizes, a batch each, as the cascade does."""
    [folder] = write_repository(dynamic_size_model, tmp_path / "repo", platform=platform)
    config = parse_config(folder)
    assert config.max_batch_size == 3
    assert {t.name: list(t.dims) for t in config.input} == {"image": [-1, -1, 3], "rho2": [21], "rho3": [21]}
    assert {t.name: list(t.dims) for t in config.output} == {"labels": [-1, -1], "stage_counts": [3],
                                                             "confidence": [-1, -1]}
    assert json.loads((folder / MARKER).read_text())["dynamic_size"] == {"min": [16, 16], "max": [96, 128],
                                                                       "multiple": 8}
    with Cascade.load(dynamic_size_model, backend="ort") as cascade:
        for count, size in ((2, (48, 88)), (1, (96, 40))):
            images = images_at(size, count)
            assert list(images.shape) == declared_shape(config.input[0], 3, count)[:1] + [*size, 3]
            rho = np.full((count, 21), 0.97, np.float32)
            labels, counts, confidence = run_model(folder, platform, {"image": images, "rho2": rho, "rho3": rho})
            expected = cascade.run_batch(images, 0.97)
            assert labels.shape == (count, *size)
            np.testing.assert_array_equal(labels, expected.labels)
            np.testing.assert_array_equal(counts, expected.stage_counts)
            np.testing.assert_allclose(confidence, expected.confidence, atol=1e-4)


def test_engine_dir_becomes_an_ensemble(tmp_path) -> None:
    engines = fake_engine_dir(tmp_path / "engines")
    folders = write_repository(engines, tmp_path / "repo", name="lc")
    assert [f.name for f in folders] == ["lc_stage1", "lc_stage2", "lc_stage3", "lc"]
    ensemble = parse_config(folders[-1])
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 0
    available = {t.name for t in ensemble.input}
    assert available == {"image", "rho2", "rho3"}  # stage 1's rho is ρ₂, stage 2's ρ₃
    # What each ensemble tensor is (type, dims): a step's input must be what feeds it, as Triton checks.
    kinds = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step, folder in zip(ensemble.ensemble_scheduling.step, folders[:3], strict=True):
        stage = parse_config(folder)
        assert step.model_name == stage.name == folder.name and stage.platform == "tensorrt_plan"
        assert stage.instance_group[0].kind == triton_schema().ModelInstanceGroup.KIND_GPU
        assert set(step.input_map) == {t.name for t in stage.input}
        if "rho" in step.input_map:
            assert step.input_map["rho"] == {"lc_stage1": "rho2", "lc_stage2": "rho3"}[stage.name]
        assert set(step.input_map.values()) <= available  # every input made by the ensemble or a step before
        for tensor in stage.input:
            assert kinds[step.input_map[tensor.name]] == (tensor.data_type, list(tensor.dims)), tensor.name
        kinds |= {step.output_map[t.name]: (t.data_type, list(t.dims)) for t in stage.output}
        available |= set(step.output_map.values())
        engine = json.loads((engines / "engines.json").read_text())["engines"][folder.name.removeprefix("lc_")]
        assert (folder / "1" / "model.plan").read_bytes() == (engines / engine["file"]).read_bytes()
    assert {t.name for t in ensemble.output} == {"labels", "stage_counts", "confidence"} <= available
    assert all(kinds[t.name] == (t.data_type, list(t.dims)) for t in ensemble.output)


def test_a_dynamic_size_engine_dir_has_variable_dims(dynamic_size_model, tmp_path) -> None:
    """The ensemble of a --dynamic-size export's engines: -1 for the batch and every height and width (image,
    labels and the stage tensors between the plans), its other dims as built."""
    engines = fake_engine_dir(tmp_path / "engines", dynamic_size_model)
    folders = write_repository(engines, tmp_path / "repo", name="lc")
    ensemble = parse_config(folders[-1])
    assert {t.name: list(t.dims) for t in ensemble.input} == {"image": [-1, -1, -1, 3], "rho2": [21], "rho3": [21]}
    assert {t.name: list(t.dims) for t in ensemble.output} == {"labels": [-1, -1, -1], "stage_counts": [-1, 3],
                                                               "confidence": [-1, -1, -1]}
    stage2 = parse_config(folders[1])
    assert {t.name: list(t.dims) for t in stage2.input} == {"feat1": [-1, 32, -1, -1], "mask2": [-1, 1, -1, -1],
                                                            "rho": [21]}
    assert json.loads((folders[-1] / MARKER).read_text())["size_profile"] == {"min": [16, 16], "opt": [64, 64],
                                                                             "max": [96, 128]}


def test_other_models_are_left_alone_and_ours_replaced(tmp_path) -> None:
    repo = tmp_path / "repo"
    (repo / "someone_else" / "1").mkdir(parents=True)
    write_repository(None, repo)
    (repo / "demo" / "stale").write_text("from before")
    write_repository(None, repo)
    assert not (repo / "demo" / "stale").exists() and (repo / "someone_else" / "1").is_dir()
    with pytest.raises(LCError, match="someone_else: exists and was not written by lc-triton"):
        write_repository(None, repo, name="someone_else")
    assert sorted(p.name for p in repo.iterdir()) == ["demo", "someone_else"]  # no staging folder left


@pytest.mark.parametrize(("arguments", "message"), [
    (["--platform", "tensorrt"], "a model dir runs on --platform onnxruntime or openvino"),
    (["--max-batch", "4"], "exported for a fixed batch of 1; Triton's batching needs lc-export --dynamic-batch 4"),
])
def test_one_line_errors(tmp_path, capsys, arguments, message) -> None:
    assert run_cli(triton_cli.main, ["-o", str(tmp_path / "repo"), *arguments]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_engine_dir_on_another_platform(tmp_path, capsys) -> None:
    engines = fake_engine_dir(tmp_path / "engines")
    assert run_cli(triton_cli.main, [str(engines), "-o", str(tmp_path / "repo"), "--platform", "openvino"]) == 1
    assert "an engine dir (lc-build) runs on --platform tensorrt" in capsys.readouterr().err


def test_a_dense_only_dir_is_refused(tmp_path, capsys) -> None:
    from layercascade.manifest import read_manifest, write_model_dir

    manifest = {k: v for k, v in read_manifest(DEMO_MODEL).items() if k not in ("format", "version", "files",
                                                                                  "stages")}

    def write(folder: Path) -> dict:
        shutil.copy(DEMO_MODEL / "dense.onnx", folder / "dense.onnx")
        return manifest

    dense = write_model_dir(tmp_path / "dense", write, "lc-export")
    assert run_cli(triton_cli.main, [str(dense), "-o", str(tmp_path / "repo")]) == 1
    assert "holds only the dense network" in capsys.readouterr().err
