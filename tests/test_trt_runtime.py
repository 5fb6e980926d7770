"""The TensorRT backend: engine metadata checks, buffer plan and backend choice without TensorRT,
and (marked ``trt``) real engines: build, run, parity with ONNX Runtime, CUDA-graph replay."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from layercascade.cli import run
from layercascade.errors import LCError, run_cli
from layercascade.manifest import read_manifest
from layercascade.runtime.cascade import DEMO_MODEL, Cascade
from layercascade.runtime.timing import forced_masks
from layercascade.runtime.trt.engines import (
    METADATA,
    OLDEST,
    VERSION,
    BatchRange,
    BuiltEngine,
    check_environment,
    check_sources,
    plan_buffers,
    SizeRange,
    engine_sizes,
    read_metadata,
    size_range,
    stage_bindings,
    write_engine_dir,
)
from layercascade.tests.fake_tensorrt import (
    BUILT,
    DRIVER_VERSION,
    GPU,
    TENSORRT_VERSION,
    SimulatedCuda,
    fake_engine_dir,
    install_fake_tensorrt,
    simulated_tensorrt,
)
from layercascade.tests.helpers import synthetic_images


# This machine as the loader describes it to check_environment: what the engines were built with, and a driver.
HERE = {**BUILT, "driver_cuda": "13.0"}


def metadata(**changes) -> dict:
    return {"version_compatible": False, "engines": {}, **BUILT, **changes}


# -- metadata against this machine --------------------------------------------------------------
def test_matching_environment_passes() -> None:
    assert check_environment(metadata(), HERE) == []


def test_other_tensorrt_version() -> None:
    with pytest.raises(LCError, match=r"built with TensorRT 11\.4\.0\.106, this is TensorRT 11\.5\.0\.1; rebuild"):
        check_environment(metadata(), {**HERE, "tensorrt": "11.5.0.1"})
    compatible = metadata(version_compatible=True)
    assert check_environment(compatible, {**HERE, "tensorrt": "11.5.0.1"}) == []  # later release, same major
    for other in ("11.3.0.1", "12.0.0.1"):
        with pytest.raises(LCError, match="version-compatible"):
            check_environment(compatible, {**HERE, "tensorrt": other})


def test_other_gpu() -> None:
    with pytest.raises(LCError, match=r"compute capability 9\.0.*NVIDIA A100.*8\.0"):
        check_environment(metadata(), {**HERE, "gpu": {"name": "NVIDIA A100", "compute_capability": "8.0"}})
    # Same architecture, another model: TensorRT runs it; we say the tactics were timed elsewhere.
    warnings = check_environment(metadata(), {**HERE, "gpu": {"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"}})
    assert len(warnings) == 1 and "NVIDIA H100 PCIe" in warnings[0]


def test_stale_plugin_hash() -> None:
    with pytest.raises(LCError, match="another region-conv plugin"):
        check_environment(metadata(), {**HERE, "plugin_sha256": "cd" * 32})


def test_driver_older_than_the_plugin_ptx() -> None:
    """The plugin's PTX needs a driver of at least the CUDA version lc-build recorded (12.8 here);
    engines without the plugin need none."""
    for driver in ("12.8", "12.10", "13.0"):
        assert check_environment(metadata(), {**HERE, "driver_cuda": driver}) == []
    with pytest.raises(LCError, match=r"PTX for CUDA 12\.8 drivers, this driver supports CUDA 12\.4: update the NVIDIA "
                                      r"driver, or rebuild them here with lc-build"):
        check_environment(metadata(), {**HERE, "driver_cuda": "12.4"})
    assert check_environment(metadata(plugin_sha256=None, ptx_cuda=None), {**HERE, "driver_cuda": "11.8"}) == []


# -- engine dirs (fake plans: everything before deserialization) --------------------------------
@pytest.fixture
def engine_dir(tmp_path) -> Path:
    return fake_engine_dir(tmp_path / "engines")


def test_read_metadata(engine_dir) -> None:
    assert read_metadata(engine_dir)["precision"] == "fp16"


def test_missing_metadata(engine_dir) -> None:
    (engine_dir / METADATA).unlink()
    with pytest.raises(LCError, match="engines.json: missing.*rebuild"):
        read_metadata(engine_dir)


@pytest.mark.parametrize("text", ["{ not json", '{"format": "something else"}', "[]",
                                  f'{{"format": "layercascade.engines", "version": {VERSION}}}',
                                  "[" * 100 + "]" * 100])
def test_corrupt_metadata(engine_dir, text) -> None:
    (engine_dir / METADATA).write_text(text)
    with pytest.raises(LCError, match="corrupt engine metadata|not valid JSON|nested deeper") as error:
        read_metadata(engine_dir)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("batch", [{"min": 1, "opt": 1, "max": 10**9}, {"min": 2, "opt": 1, "max": 4},
                                   {"min": 1, "opt": 1}, {"min": True, "opt": 1, "max": 1}, [1, 1, 1]])
def test_an_untrusted_batch_range_is_refused(engine_dir, batch) -> None:
    """engines.json's batch sizes the runtime's buffers: integers 1 … 4096, min <= opt <= max, or one line."""
    record = json.loads((engine_dir / METADATA).read_text())
    (engine_dir / METADATA).write_text(json.dumps({**record, "batch": batch}))
    with pytest.raises(LCError, match="corrupt engine metadata"):
        read_metadata(engine_dir)


@pytest.mark.parametrize("name", ["../stage1.engine", "/tmp/stage1.engine", "sub/stage1.engine"])
def test_an_engine_file_named_outside_the_dir_is_refused(engine_dir, name) -> None:
    record = json.loads((engine_dir / METADATA).read_text())
    record["engines"]["stage1"]["file"] = name
    (engine_dir / METADATA).write_text(json.dumps(record))
    with pytest.raises(LCError, match="an engine's file .* is not a plain file name"):
        read_metadata(engine_dir)


def test_an_engine_engines_json_does_not_hash_is_never_loaded(engine_dir) -> None:
    """lc.json names stage2.engine, engines.json drops its record (so no hash covers it): refused before TensorRT
    is even imported, not deserialized unchecked."""
    from layercascade.runtime.trt import loader

    record = json.loads((engine_dir / METADATA).read_text())
    del record["engines"]["stage2"]
    (engine_dir / METADATA).write_text(json.dumps(record))
    (engine_dir / "stage2.engine").write_bytes(b"not an engine")
    with pytest.raises(LCError, match=r"lc.json: its engines .* are not the ones engines.json hashed"):
        loader.load(engine_dir)


@pytest.mark.parametrize("ptx_cuda", [12.8, "x", "12"])
def test_a_malformed_ptx_cuda_is_corrupt_metadata(engine_dir, ptx_cuda) -> None:
    record = json.loads((engine_dir / METADATA).read_text())
    record["ptx_cuda"] = ptx_cuda
    (engine_dir / METADATA).write_text(json.dumps(record))
    with pytest.raises(LCError, match="corrupt engine metadata"):
        read_metadata(engine_dir)


@pytest.mark.parametrize("version, message", [(OLDEST - 1, "from an older lc-build .* rebuild the engines"),
                                              (VERSION + 1, "newer than this layercascade reads")])
def test_metadata_of_another_version(engine_dir, version, message) -> None:
    record = json.loads((engine_dir / METADATA).read_text())
    (engine_dir / METADATA).write_text(json.dumps({**record, "version": version}))
    with pytest.raises(LCError, match=message):
        read_metadata(engine_dir)


def test_damaged_engine(engine_dir) -> None:
    with open(engine_dir / "stage2.engine", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(LCError, match="stage2.engine: sha256 does not match"):
        read_metadata(engine_dir)


def test_source_onnx_changed(tmp_path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    engines = read_metadata(fake_engine_dir(tmp_path / "engines", model))
    check_sources(engines, read_manifest(model, verify=False))
    check_sources(engines, None)  # the model dir is gone: engines shipped on their own
    manifest = json.loads((model / "lc.json").read_text())
    manifest["files"]["stage3.onnx"] = "0" * 64  # as after a re-export with other weights
    with pytest.raises(LCError, match="stale: stage3.onnx"):
        check_sources(engines, manifest)


# -- buffer plan --------------------------------------------------------------------------------
def test_buffer_plan() -> None:
    stages = read_manifest(DEMO_MODEL)["stages"]
    plan = plan_buffers(stages, max_batch=1)
    assert set(plan) == {"image", "rho2", "rho3", "feat1", "scores1", "mask2", "feat2", "scores2", "mask3", "labels",
                         "stage_counts", "confidence", "forced_mask2", "forced_mask3"}  # each tensor once, ρ once a stage
    assert plan["confidence"].shape == (1, 20, 20) and plan["confidence"].dtype == np.float32
    assert plan["image"].shape == (1, 160, 160, 3) and plan["image"].nbytes == 160 * 160 * 3
    assert plan["feat1"].bytes_for(1) == 32 * 20 * 20 * 4 and plan["stage_counts"].dtype == np.int64
    assert plan["rho2"].shape == plan["rho3"].shape == (21,) and plan["rho3"].bytes_for(1) == 21 * 4  # one per class
    eager, forced = stage_bindings(stages, forced=False), stage_bindings(stages, forced=True)
    assert eager[0]["rho"] == forced[0]["rho"] == "rho2" and eager[1]["rho"] == forced[1]["rho"] == "rho3"
    assert eager[1]["mask2"] == "mask2" and eager[2]["mask3"] == "mask3"
    assert forced[0]["mask2"] == "mask2"  # stage 1 still writes its own mask
    assert forced[1]["mask2"] == "forced_mask2" and forced[2]["mask3"] == "forced_mask3"
    assert forced[2]["mask2"] == "forced_mask2" and forced[1]["mask3"] == "mask3"


# -- choosing and loading the backend without TensorRT ------------------------------------------
def test_auto_picks_trt_for_engines_only(engine_dir, monkeypatch) -> None:
    assert Cascade.load(None).backend in ("openvino", "ort")  # a model dir: the CPU backends (auto's own tests)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(LCError, match="the TensorRT backend needs TensorRT"):
        Cascade.load(engine_dir)


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_engine_dir_with_another_backend(engine_dir, backend) -> None:
    with pytest.raises(LCError, match=f"holds TensorRT engines.*--backend {backend}"):
        Cascade.load(engine_dir, backend=backend)


def test_trt_backend_errors_before_tensorrt(engine_dir, tmp_path) -> None:
    with pytest.raises(LCError, match="engines are fp16.*--precision fp32"):
        Cascade.load(engine_dir, backend="trt", precision="fp32")
    with pytest.raises(LCError, match="lc-build"):
        Cascade.load(None, backend="trt")
    with pytest.raises(LCError, match="no such engine directory"):
        Cascade.load(tmp_path / "missing", backend="trt")
    with pytest.raises(LCError, match="holds no lc-build engines"):
        Cascade.load(DEMO_MODEL, backend="trt")


def test_lc_run_engine_without_tensorrt(engine_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "out"
    code = run_cli(run.main, ["--engine", str(engine_dir), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: the TensorRT backend needs TensorRT") and "\n" not in err
    assert not out.exists() or list(out.iterdir()) == []


# -- the backend on a simulated GPU ------------------------------------------------------------
def simulate_gpu(monkeypatch) -> SimulatedCuda:
    """Install the simulated TensorRT / CUDA (and a plugin registration recorder) for one test."""
    from layercascade.runtime.trt import loader

    cuda = SimulatedCuda()
    trt = simulated_tensorrt(cuda)
    install_fake_tensorrt(monkeypatch, trt, cuda)
    monkeypatch.setattr(loader, "register_plugins", lambda: trt.registered.append(True))
    return cuda


def simulated_engine_dir(target: Path, model_dir: Path, batch: BatchRange, shapes=None) -> Path:
    """An engine dir whose "plans" name the graphs lc-build would hand TensorRT's parser, built for ``batch`` and
    (a dynamic-size export) the image sizes ``shapes`` (lc-build --shapes; None: its default)."""
    from layercascade.plugins.trt_plugin import plugin_source_sha256
    from layercascade.runtime.trt.build import tensorrt_graph
    from layercascade.runtime.trt.check import data_dependent_shapes

    target.mkdir()
    settings = {**BUILT, "plugin_sha256": plugin_source_sha256(), "precision": "fp32", "batch": batch,
                "size": size_range(read_manifest(model_dir), shapes), "version_compatible": False}

    def build(graph) -> BuiltEngine:
        parsed, model = target / graph.onnx, tensorrt_graph(graph, model_dir, "fp32")
        parsed.write_bytes(model.SerializeToString())
        return BuiltEngine(str(parsed).encode(), "00" * 32, data_dependent_shapes(model))

    return write_engine_dir(target / "engines", model_dir, read_manifest(model_dir), build, settings)


@pytest.fixture
def simulated_gpu(tmp_path, monkeypatch) -> tuple[Path, SimulatedCuda]:
    cuda = simulate_gpu(monkeypatch)
    return simulated_engine_dir(tmp_path / "demo", DEMO_MODEL, BatchRange(1, 1, 1)), cuda


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_backend_on_simulated_gpu(simulated_gpu, cuda_graph) -> None:
    """Buffers, bindings, copies, ρ on the device, forced masks, graph capture/replay and the dense
    runner, against ONNX Runtime running the same graphs (so results must be identical)."""
    engine_dir, cuda = simulated_gpu
    engines = Cascade.load(engine_dir, cuda_graph=cuda_graph)
    reference = Cascade.load(None, backend="ort", lower=False)
    assert engines.backend == "trt"
    images = synthetic_images(3)
    # Repeats and changes of ρ₂ and ρ₃ together and apart: each reaches its own stage's engine.
    for rho in (0.985, 0.985, 0.7, (0.7, 0.985), (0.985, 0.7), (1.0, 0.7), 1.0):
        for image in images:
            ours, theirs = engines.run_batch(image[None], rho), reference.run_batch(image[None], rho)
            for field in ("labels", "mask2", "mask3", "stage_counts"):
                assert np.array_equal(getattr(ours, field), getattr(theirs, field)), (field, rho)
            np.testing.assert_allclose(ours.confidence, theirs.confidence, atol=1e-6)  # a host buffer of stage 3
    # Per-class thresholds: one vector per stage on the device, copied when a class's threshold changes.
    for rho_class in ({"background": 1.0}, {"background": 1.0}, {"background": 0.5, "person": 1.0}, {}):
        ours, theirs = (c.run_batch(images[:1], 0.9, rho_class=rho_class) for c in (engines, reference))
        for field in ("labels", "mask2", "mask3", "stage_counts"):
            assert np.array_equal(getattr(ours, field), getattr(theirs, field)), (field, rho_class)
        np.testing.assert_allclose(ours.confidence, theirs.confidence, atol=1e-6)
    masks = forced_masks((1, 1, 20, 20), (0.5, 0.2))
    ours, theirs = engines.run_batch(images[:1], None, masks), reference.run_batch(images[:1], None, masks)
    assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.stage_counts, theirs.stage_counts)
    np.testing.assert_allclose(ours.confidence, theirs.confidence, atol=1e-6)
    assert set(ours.timings) == {"stage1", "stage2", "stage3", "total"}
    backend = engines.runner
    if cuda_graph:
        # Stages 1–2 replay as graphs; stage 3 (NonZero: data-dependent shapes) runs eagerly.
        assert backend.captured_stages == [True, True, False] and cuda.launches == 2 * (7 * 3 + 4 + 1)
    else:
        assert cuda.launches == 0
    dense = backend.dense_runner(engines.manifest).infer({"image": images[:1]})["labels"]
    expected = reference.runner.dense_runner(reference.manifest).infer({"image": images[:1]})["labels"]
    assert np.array_equal(dense, expected)
    with pytest.raises(LCError, match="at most 1 images per run, got 2; rebuild with lc-build --max-batch 2"):
        backend.run(images[:2], (0.985, 0.985))
    with pytest.raises(LCError, match="the engines take 160x160 images, got 168x160"):
        backend.run(np.zeros((1, 168, 160, 3), np.uint8), (0.985, 0.985))
    staged = backend.run_stages(images[:1], (0.9, 0.985))  # lc-bench --per-stage: the stages timed apart
    assert set(staged.timings) == {"stage1", "stage2", "stage3", "total"}
    assert np.array_equal(staged.labels, reference.run_batch(images[:1], (0.9, 0.985)).labels)
    machine = backend.machine()  # lc-bench's machine line names the GPU and TensorRT, not ONNX Runtime
    assert machine.startswith(f"{GPU['name']} (compute capability 9.0), host ")
    assert machine.endswith(f"TensorRT {TENSORRT_VERSION}")
    with engines:
        pass
    with pytest.raises(LCError, match="this cascade was closed"):
        engines.run_batch(images[:1])


def test_stages_with_data_dependent_shapes_are_never_captured(simulated_gpu) -> None:
    """lc-build records stage 3 (NonZero) as data-dependent: --cuda-graph captures stages 1–2 once per
    batch and never tries stage 3, which runs eagerly between the replays."""
    engine_dir, cuda = simulated_gpu
    assert [record["data_dependent_shapes"] for record in read_metadata(engine_dir)["engines"].values()] == \
        [False, False, True, True]  # stage1–3, dense
    engines = Cascade.load(engine_dir, cuda_graph=True)
    reference = Cascade.load(None, backend="ort", lower=False)
    for image in synthetic_images(2):
        ours, theirs = engines.run_batch(image[None], 0.985), reference.run_batch(image[None], 0.985)
        assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.stage_counts, theirs.stage_counts)
    assert cuda.captured == ["stage1", "stage2"] and engines.runner.captured_stages == [True, True, False]


@pytest.mark.parametrize("invalidate", [False, True], ids=["enqueue-refused", "capture-invalidated"])
def test_a_stage_that_fails_to_capture_runs_eagerly_on_a_fresh_context(simulated_gpu, invalidate) -> None:
    """A stage not recorded as data-dependent that TensorRT still cannot capture (here stage 3 with its
    record cleared): TensorRT refuses the enqueue, or enqueues and the driver invalidates the capture so
    the copies after it fail. The capture ends (the stream stays usable), the stage gets a fresh
    execution context (the stand-in breaks one whose capture was invalidated), results stay right."""
    engine_dir, cuda = simulated_gpu
    record = json.loads((engine_dir / METADATA).read_text())
    record["engines"]["stage3"]["data_dependent_shapes"] = False
    (engine_dir / METADATA).write_text(json.dumps(record))
    cuda.invalidate_captures = invalidate
    engines = Cascade.load(engine_dir, cuda_graph=True)
    reference = Cascade.load(None, backend="ort", lower=False)
    image = synthetic_images(1)
    for _ in range(2):
        ours, theirs = engines.run_batch(image, 0.985), reference.run_batch(image, 0.985)
        assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.stage_counts, theirs.stage_counts)
    assert cuda.captured == ["stage1", "stage2", "stage3"] and engines.runner.captured_stages == [True, True, False]
    assert cuda.capture is None and not cuda.invalidated


def test_environment_checked_before_deserializing(simulated_gpu, monkeypatch) -> None:
    """Another TensorRT, one below the floor, a driver older than the plugin's PTX: one line each, before
    the plugin is registered or an engine deserialized."""
    engine_dir, cuda = simulated_gpu
    tensorrt = sys.modules["tensorrt"]
    monkeypatch.setattr(tensorrt, "__version__", "11.5.0.1")
    with pytest.raises(LCError, match="built with TensorRT 11.4.0.106, this is TensorRT 11.5.0.1"):
        Cascade.load(engine_dir)
    monkeypatch.setattr(tensorrt, "__version__", "10.9.0.34")
    with pytest.raises(LCError, match=r"needs TensorRT ≥ 10\.10, found TensorRT 10\.9\.0\.34: older ONNX parsers"):
        Cascade.load(engine_dir)
    monkeypatch.setattr(tensorrt, "__version__", TENSORRT_VERSION)
    cuda.driver_version = 12040
    with pytest.raises(LCError, match=r"PTX for CUDA 12\.8 drivers, this driver supports CUDA 12\.4") as error:
        Cascade.load(engine_dir)
    assert "\n" not in str(error.value) and tensorrt.registered == []
    cuda.driver_version = DRIVER_VERSION
    assert Cascade.load(engine_dir).backend == "trt" and tensorrt.registered == [True]


def test_dynamic_batch_on_simulated_gpu(dynamic_model, tmp_path, monkeypatch) -> None:
    """A --dynamic-batch export: buffers for the largest batch, smaller batches in them."""
    from layercascade.tests.helpers import DYNAMIC_MAX, DYNAMIC_SIZE, random_images

    _, model_dir = dynamic_model
    assert DYNAMIC_MAX == 3 and DYNAMIC_SIZE == (64, 64)
    simulate_gpu(monkeypatch)
    engine_dir = simulated_engine_dir(tmp_path / "sim", model_dir, BatchRange(1, 3, 3))
    engines = Cascade.load(engine_dir, cuda_graph=True)
    reference = Cascade.load(model_dir, backend="ort", lower=False)
    assert engines.batch_size is None and engines.runner.plan["feat1"].shape[0] == 3
    for count in (3, 1, 2, 3):
        images = random_images(count, (64, 64), seed=count)
        ours, theirs = engines.run_batch(images), reference.run_batch(images)
        assert ours.labels.shape == (count, 64, 64)
        assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.stage_counts, theirs.stage_counts)
    assert set(engines.runner.graphs) == {(1, None, False), (2, None, False), (3, None, False)}


def test_dynamic_size_buffer_plan_and_profiles(dynamic_size_model) -> None:
    """Buffers hold the largest batch at the largest size of the profile; a run's tensors are their leading part,
    the stage tensors at an eighth of the image; the engines' sizes are checked against lc.json."""
    manifest = read_manifest(dynamic_size_model)
    sizes = size_range(manifest, None)
    assert sizes == SizeRange((16, 16), (64, 64), (96, 128))  # the export's bounds, its nominal size as opt
    plan = plan_buffers(manifest["stages"], 3, sizes.max)
    assert plan["image"].shape == (3, 96, 128, 3) and plan["feat1"].shape == (3, 32, 12, 16)
    assert plan["labels"].shape_for(2, (40, 24)) == (2, 40, 24) and plan["mask2"].shape_for(1, (40, 24)) == (1, 1, 5, 3)
    assert plan["forced_mask3"].bytes_for(2, (16, 96)) == 2 * 2 * 12 * 4
    assert plan["rho2"].bytes_for(3, (16, 96)) == 21 * 4  # one threshold per class, whatever the batch
    metadata = {"size": sizes.record()}
    assert engine_sizes(metadata, manifest, Path("e")) == sizes
    for record in (None, {**sizes.record(), "max": [96, 96]}, {**sizes.record(), "opt": [8, 8]}):
        with pytest.raises(LCError, match="engines.json and lc.json disagree about the image sizes; rebuild"):
            engine_sizes({"size": record}, manifest, Path("e"))
    assert engine_sizes({"size": None}, read_manifest(DEMO_MODEL), Path("e")) is None


def test_dynamic_size_on_simulated_gpu(dynamic_size_model, tmp_path, monkeypatch) -> None:
    """A --dynamic-size export's engines run images of every size of their profile, at batches 1–3, in buffers
    sized once for the largest: labels, masks and counts equal ONNX Runtime's on the same graphs, eager and with
    a CUDA graph per (batch, size); the dense engine too. Sizes outside the profile: one line."""
    from layercascade.runtime.trt import runner as trt_runner
    from layercascade.tests.helpers import random_images

    simulate_gpu(monkeypatch)
    monkeypatch.setattr(trt_runner, "MAX_CAPTURED", 3)
    engine_dir = simulated_engine_dir(tmp_path / "sim", dynamic_size_model, BatchRange(1, 3, 3))
    engines = Cascade.load(engine_dir, cuda_graph=True)
    reference = Cascade.load(dynamic_size_model, backend="ort", lower=False)
    backend = engines.runner
    assert backend.plan["image"].shape == (3, 96, 128, 3) and backend.sizes.max == (96, 128)
    runs = [(1, (64, 64)), (2, (16, 96)), (3, (96, 40)), (1, (72, 128)), (2, (16, 96)), (1, (64, 64))]
    for count, size in runs:
        images = random_images(count, size, seed=count + size[1])
        for rho in (0.9, 0.985):
            ours, theirs = engines.run_batch(images, rho), reference.run_batch(images, rho)
            assert ours.labels.shape == (count, *size)
            for field in ("labels", "mask2", "mask3", "stage_counts"):
                assert np.array_equal(getattr(ours, field), getattr(theirs, field)), (field, count, size)
    # One capture per (batch, size), the three most recently used kept (MAX_CAPTURED here).
    assert list(backend.graphs) == [(1, (72, 128), False), (2, (16, 96), False), (1, (64, 64), False)]
    images = random_images(2, (40, 24))
    masks = forced_masks((2, 1, 5, 3), (0.5, 0.2))
    ours, theirs = engines.run_batch(images, None, masks), reference.run_batch(images, None, masks)
    assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.stage_counts, theirs.stage_counts)
    dense = backend.dense_runner(engines.manifest)
    expected = reference.runner.dense_runner(reference.manifest)
    for size in ((24, 88), (96, 128)):
        images = random_images(1, size)
        assert np.array_equal(dense.infer({"image": images})["labels"], expected.infer({"image": images})["labels"])
    for size in ((104, 64), (60, 64), (8, 64)):
        with pytest.raises(LCError, match=r"the engines take images from 16x16 to 96x128 \(multiples of 8\), got "
                                          rf"{size[0]}x{size[1]}; rebuild them with lc-build --shapes") as error:
            backend.run(random_images(1, size), (0.985, 0.985))
        assert "\n" not in str(error.value)


def test_engines_built_for_fewer_sizes_narrow_what_the_cascade_takes(dynamic_size_model, tmp_path,
                                                                     monkeypatch) -> None:
    """lc-build --shapes 16x16:32x48:48x64: the engine dir's lc.json takes the profile as its sizes (the cascade
    pads and tiles to them, fit aims at opt), and engines.json records it per input."""
    simulate_gpu(monkeypatch)
    engine_dir = simulated_engine_dir(tmp_path / "sim", dynamic_size_model, BatchRange(1, 3, 3),
                                      ((16, 16), (32, 48), (48, 64)))
    manifest = read_manifest(engine_dir)
    assert manifest["dynamic_size"] == {"min": [16, 16], "max": [48, 64], "multiple": 8}
    assert manifest["input_size"] == [32, 48] and manifest["stage_size"] == [4, 6]
    record = read_metadata(engine_dir)
    assert record["size"] == {"min": [16, 16], "opt": [32, 48], "max": [48, 64]}
    image = record["engines"]["stage1"]["inputs"][0]
    assert image["profile"] == {"min": [1, 16, 16, 3], "opt": [3, 32, 48, 3], "max": [3, 48, 64, 3]}
    feat1 = record["engines"]["stage2"]["inputs"][0]
    assert feat1["profile"] == {"min": [1, 32, 2, 2], "opt": [3, 32, 4, 6], "max": [3, 32, 6, 8]}
    engines = Cascade.load(engine_dir)
    assert engines.takes((48, 64)) and not engines.takes((56, 64)) and engines.input_size == (32, 48)
    assert engines.runner.plan["image"].shape == (3, 48, 64, 3)
    from layercascade.tests.helpers import random_images

    assert engines(random_images(1, (70, 90))[0]).labels.shape == (70, 90)


def test_an_engine_dir_of_a_version_1_manifest_runs_its_one_rho(simulated_gpu) -> None:
    """lc-build before per-stage thresholds wrote lc.json version 1, ``default_rho`` one number: it is
    both stages' threshold, and a pair still reaches each stage's engine."""
    engine_dir, _ = simulated_gpu
    manifest = json.loads((engine_dir / "lc.json").read_text())
    (engine_dir / "lc.json").write_text(json.dumps({**manifest, "version": 1, "default_rho": 0.9}))
    engines, reference = Cascade.load(engine_dir), Cascade.load(None, backend="ort", lower=False)
    assert engines.default_rho == (0.9, 0.9)
    image = synthetic_images(1)
    for rho in (None, (0.985, 0.9)):
        ours, theirs = engines.run_batch(image, rho), reference.run_batch(image, 0.9 if rho is None else rho)
        assert np.array_equal(ours.mask3, theirs.mask3) and np.array_equal(ours.labels, theirs.labels)


# -- real TensorRT ------------------------------------------------------------------------------
def _trt_skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as error:
        return f"TensorRT is not installed ({error})"
    try:
        from cuda.bindings import runtime
    except ImportError as error:
        return f"cuda-python is not installed ({error})"
    error, count = runtime.cudaGetDeviceCount()
    if int(error) != 0 or count == 0:
        return "no CUDA GPU"
    return None


TRT_SKIP = _trt_skip_reason()
needs_trt = pytest.mark.skipif(TRT_SKIP is not None, reason=f"needs TensorRT and a GPU: {TRT_SKIP}")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    from layercascade.runtime.trt.build import BuildOptions, build_engines

    root = tmp_path_factory.mktemp("trt")
    cache = root / "timing.cache"
    return {precision: build_engines(DEMO_MODEL, root / precision, BuildOptions(precision, timing_cache=cache),
                                     progress=False) for precision in ("fp32", "fp16")}


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_matches_onnxruntime(built, precision) -> None:
    engines = Cascade.load(built[precision])
    assert engines.backend == "trt" and read_metadata(built[precision])["precision"] == precision
    reference = Cascade.load(None, backend="ort")
    equal = total = 0
    for image in synthetic_images(16):
        ours, theirs = engines.run_batch(image[None]), reference.run_batch(image[None])
        equal += int((ours.labels == theirs.labels).sum())
        total += ours.labels.size
        # Only pixels whose confidence sits on ρ may change stage.
        assert np.abs(ours.stage_counts - theirs.stage_counts).sum() <= 0.01 * theirs.stage_counts.sum()
    assert equal / total >= 0.999, f"{precision} engines agree with ONNX Runtime on {equal / total:.5f} of pixels"


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_trt_cuda_graph_replay_equals_eager(built) -> None:
    eager = Cascade.load(built["fp16"])
    graphed = Cascade.load(built["fp16"], cuda_graph=True)
    images = synthetic_images(4)
    for rho in (0.985, 0.9, 1.0):
        for image in images:  # replays after the first capture
            a, b = eager.run_batch(image[None], rho), graphed.run_batch(image[None], rho)
            assert np.array_equal(a.labels, b.labels) and np.array_equal(a.stage_counts, b.stage_counts)
            assert np.array_equal(a.mask2, b.mask2) and np.array_equal(a.mask3, b.mask3)


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_trt_dynamic_size_matches_onnxruntime(dynamic_size_model, tmp_path) -> None:
    """Engines of a --dynamic-size export (profile 16x16 … 96x128, batch 1–3): images of several sizes and batches,
    eager and replayed from CUDA graphs, agree with ONNX Runtime."""
    from layercascade.runtime.trt.build import BuildOptions, build_engines
    from layercascade.tests.helpers import random_images

    target = build_engines(dynamic_size_model, tmp_path / "engines", BuildOptions("fp32", max_batch=3), progress=False)
    reference = Cascade.load(dynamic_size_model, backend="ort")
    for cuda_graph in (False, True):
        engines = Cascade.load(target, cuda_graph=cuda_graph)
        for count, size in ((1, (64, 64)), (3, (16, 96)), (2, (96, 128)), (1, (64, 64))):
            images = random_images(count, size, seed=count)
            ours, theirs = engines.run_batch(images, 0.97), reference.run_batch(images, 0.97)
            assert ours.labels.shape == (count, *size) and np.mean(ours.labels == theirs.labels) >= 0.999


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_trt_forced_masks_and_dense(built) -> None:
    engines, reference = Cascade.load(built["fp32"]), Cascade.load(None, backend="ort")
    image = synthetic_images(1)
    masks = forced_masks((1, 1, 20, 20), (0.5, 0.25))
    ours, theirs = engines.run_batch(image, None, masks), reference.run_batch(image, None, masks)
    assert np.mean(ours.labels == theirs.labels) >= 0.999
    assert np.array_equal(ours.stage_counts, theirs.stage_counts)
    dense = engines.runner.dense_runner(engines.manifest).infer({"image": image})["labels"]
    dense_reference = reference.runner.dense_runner(reference.manifest).infer({"image": image})["labels"]
    assert np.mean(dense == dense_reference) >= 0.999

