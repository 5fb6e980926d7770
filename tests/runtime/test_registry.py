"""The backend registry (runtime/registry.py): every backend declares what the registry requires, every place that
lists backends reads it, importing it loads no backend library, and ``--backend auto`` picks by it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from layercascade.cli import bench, run, serve, tune
from layercascade.errors import LCError, run_cli
from layercascade.runtime import bench as runtime_bench, doctor
from layercascade.runtime.backend import PRECISIONS, BackendCannotRun, BackendFallbackWarning, BackendSpec, StagedBackend
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import SAMPLES
from layercascade.runtime import registry
from layercascade.runtime.registry import (
    AUTO,
    BACKENDS,
    CHOICES,
    PRECISION_CHOICES,
    auto_backend,
    auto_candidates,
    backend_spec,
    profilers,
)

SPECS = {spec.name: spec for spec in BACKENDS}
# The parameters every loader's load() takes before the backend's own settings.
LOAD_PARAMETERS = ["source", "device", "lower", "threads"]


def backend_classes(spec: BackendSpec) -> list[type[StagedBackend]]:
    """The backend classes its subpackage defines (every module of it imported)."""
    package = importlib.import_module(spec.loader.rpartition(".")[0])
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
    found, pending = [], [StagedBackend]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.startswith(package.__name__ + "."):
                found.append(subclass)
    return found


def problems(spec: BackendSpec) -> list[str]:
    """What ``spec`` lacks of what the registry requires; empty when nothing."""
    found = []
    package = spec.loader.rpartition(".")[0]
    if package != f"layercascade.runtime.{spec.name}" or importlib.import_module(package).SPEC is not spec:
        found.append("declared as SPEC in runtime/<name>/__init__.py, its loader beside it")
    if not (spec.label and spec.modules and spec.install):
        found.append("a label, the packages it needs and how to install them")
    load = getattr(importlib.import_module(spec.loader), "load", None)
    if load is None:
        found.append("a load() in its loader")
    else:
        parameters = inspect.signature(load).parameters
        if len(parameters) < 4 or [p.kind for p in list(parameters.values())[:4]] != [
                inspect.Parameter.POSITIONAL_OR_KEYWORD] * 4:
            found.append(f"load({', '.join(LOAD_PARAMETERS)}, **options)")
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        untaken = [option for option in spec.options if not takes_any and option not in parameters]
        if untaken:
            found.append(f"options its load() takes (not {untaken})")
    unknown = set(spec.probes) - set(doctor.PROBES)
    if not spec.probes or unknown:
        found.append(f"lc-doctor probes that exist (not {sorted(unknown)})")
    if set(spec.precisions) - set(PRECISIONS) or ("precision" in spec.options) != bool(spec.precisions):
        found.append("precisions of PRECISIONS, taken through the precision option")
    if set(spec.auto) - {None, *spec.precisions} or (spec.auto and spec.claims is not None):
        found.append("auto precisions it has (a backend that claims its sources takes none)")
    if (spec.claims is None) == bool(spec.claimed):
        found.append("what a source it claims is (claimed), only with claims")
    profiled = [cls.__name__ for cls in backend_classes(spec) if cls.kernel_profile is not StagedBackend.kernel_profile]
    if not backend_classes(spec) or bool(spec.profiler) != bool(profiled):
        found.append("a backend class, and a profiler named exactly when it has a kernel_profile")
    if spec.peer is not None:
        module, _, function = spec.peer.partition(":")
        peer = getattr(importlib.import_module(module), function, None)
        if peer is None or len(inspect.signature(peer).parameters) != 3:
            found.append("a peer function(source, manifest, threads)")
    elif spec.peer_int8:
        found.append("a peer, to run INT8 dirs with")
    return found


@pytest.mark.parametrize("spec", BACKENDS, ids=lambda spec: spec.name)
def test_every_backend_declares_what_the_registry_requires(spec: BackendSpec) -> None:
    assert problems(spec) == []


@pytest.mark.parametrize(("broken", "lacking"), [
    (dataclasses.replace(SPECS["ort"], profiler=None), "a backend class, and a profiler named"),
    (dataclasses.replace(SPECS["trt"], profiler="trtexec"), "a backend class, and a profiler named"),
    (dataclasses.replace(SPECS["openvino"], probes=("openvino", "OpenVINO")), "lc-doctor probes that exist"),
    (dataclasses.replace(SPECS["ort"], options=(*SPECS["ort"].options, "warp_speed")), "options its load() takes"),
    (dataclasses.replace(SPECS["ort"], loader="layercascade.runtime.openvino.loader"), "declared as SPEC"),
    (dataclasses.replace(SPECS["openvino"], auto=(None, "fp16")), "auto precisions it has"),
    (dataclasses.replace(SPECS["torch"], claimed=""), "what a source it claims is"),
    (dataclasses.replace(SPECS["ort"], peer=None), "a peer, to run INT8 dirs with"),
])
def test_a_backend_registered_without_what_it_needs_is_caught(broken: BackendSpec, lacking: str) -> None:
    assert any(problem.startswith(lacking) for problem in problems(broken)), problems(broken)


def test_the_names_are_unique_and_auto_is_no_backend() -> None:
    names = [spec.name for spec in BACKENDS]
    assert len(set(names)) == len(names) and AUTO not in names and CHOICES == (AUTO, *names)
    assert backend_spec("ort") is SPECS["ort"]
    with pytest.raises(LCError, match=f"unknown backend 'onnx'; choose one of {', '.join(CHOICES)}"):
        backend_spec("onnx")


def test_importing_the_registry_and_the_commands_loads_no_backend_library() -> None:
    """The specs are cheap: the registry, Cascade and the commands' parsers import no runtime (nor onnx)."""
    code = ("import sys\n"
            "import layercascade.runtime.registry, layercascade.runtime.cascade\n"
            "from layercascade.cli import bench, doctor, run, serve, tune\n"
            "for command in (bench, doctor, run, serve, tune):\n"
            "    command.build_parser()\n"
            "print([m for m in ('onnxruntime', 'openvino', 'torch', 'tensorrt', 'cuda', 'onnx') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("spec", [spec for spec in BACKENDS if spec.name != "trt"], ids=lambda spec: spec.name)
def test_a_backend_whose_packages_are_missing_is_one_line_with_its_install(spec: BackendSpec) -> None:
    """In a process where none of its packages import, loading the demo on it says what to install (TensorRT's
    loader checks the engine dir first: tests/test_trt_runtime.py)."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({spec.modules!r}))\n"
            "from layercascade.errors import LCError\n"
            "from layercascade.runtime.cascade import Cascade\n"
            "try:\n"
            f"    Cascade.load(None, backend={spec.name!r})\n"
            "except LCError as error:\n"
            "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "which is not installed" in done.stdout and spec.install in done.stdout, done.stdout


# -- every place that lists backends reads the registry ---------------------------------------------------------
@pytest.mark.parametrize("command", [run, bench, tune, serve], ids=lambda module: module.__name__.split(".")[-1])
def test_the_commands_backend_and_precision_choices_are_the_registrys(command) -> None:
    actions = {action.dest: action for action in command.build_parser()._actions}
    assert tuple(actions["backend"].choices) == CHOICES and actions["backend"].default == AUTO
    assert tuple(actions["precision"].choices) == PRECISION_CHOICES
    assert set(PRECISION_CHOICES) == {p for spec in BACKENDS for p in spec.precisions}
    for spec in BACKENDS:
        assert f"{spec.name} ({spec.label})" in actions["backend"].help
        if spec.precisions:
            assert f"{spec.name} {'|'.join(spec.precisions)} ({spec.precision_note})" in actions["precision"].help


def healthy_probes() -> dict:
    probes = {name: {"ok": True, "detail": ""} for name in doctor.PROBES}
    probes["onnxruntime"]["providers"] = ["CPUExecutionProvider"]
    return probes


@pytest.mark.parametrize("spec", BACKENDS, ids=lambda spec: spec.name)
def test_lc_doctor_lists_every_backend_and_why_one_cannot_run(spec: BackendSpec) -> None:
    assert list(doctor.usable_backends(healthy_probes())) == [s.name for s in BACKENDS]
    assert doctor.usable_backends(healthy_probes())[spec.name]["devices"] == spec.usable_devices(healthy_probes())
    probes = healthy_probes()
    probes[spec.probes[-1]] = {"ok": False, "detail": "broken here"}
    assert doctor.usable_backends(probes)[spec.name] == {"ok": False, "devices": [],
                                                         "detail": f"{spec.probes[-1]}: broken here"}


def test_lc_bench_peers_and_profilers_are_the_registrys(demo_fp32: Path) -> None:
    assert runtime_bench.PEERS == tuple(spec.name for spec in BACKENDS if spec.peer)
    assert profilers() == {spec.name: spec.profiler for spec in BACKENDS if spec.profiler}
    cascade = Cascade.load(None, backend="torch")
    with pytest.raises(LCError) as refusal:
        runtime_bench.check_profilable(cascade)
    assert all(f"{reader} (--backend {name})" in str(refusal.value) for name, reader in profilers().items())


@pytest.mark.parametrize("spec", BACKENDS, ids=lambda spec: spec.name)
def test_cascade_load_checks_settings_by_the_spec(spec: BackendSpec) -> None:
    """Before any loader runs: a setting the backend's spec does not list is one line naming the backend."""
    with pytest.raises(LCError, match=f"^--warp-speed: not a setting of the {spec.label} backend"):
        Cascade.load(None, backend=spec.name, warp_speed=True)


# -- --backend auto -------------------------------------------------------------------------------------------
@pytest.fixture
def large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model dir weighs as a big backbone (50 GMACs per image) for --backend auto, so the small models of these
    tests take the paths of a model OpenVINO runs faster."""
    monkeypatch.setattr(registry, "model_gmacs", lambda source: 50.0)


@pytest.mark.parametrize(("device", "options", "expected"), [
    ("cpu", {}, ["openvino", "ort"]),
    ("cpu", {"precision": "bf16"}, ["openvino"]),
    ("cpu", {"precision": "int8"}, ["openvino", "ort"]),
    ("cpu", {"precision": "fp32"}, ["ort"]),  # the exact reference, as fast as OpenVINO's fp32
    ("cpu", {"precision": "fp16"}, ["ort"]),  # no CPU backend has it: the reference says so
    ("cpu", {"uint8_activations": False}, ["ort"]),
    ("cpu", {"performance_hint": "throughput"}, ["openvino"]),
    ("cuda", {}, ["ort"]),
])
def test_auto_candidates_for_a_model_dir(device: str, options: dict, expected: list[str], large: None) -> None:
    assert [spec.name for spec in auto_candidates(None, device, options)] == expected


def test_auto_runs_a_small_model_on_onnx_runtime(tmp_path: Path) -> None:
    """Below OpenVINO's auto_min_gmacs (6) its re-planning for every new image outweighs its kernels: the demo model
    (0.22 GMACs per image at 160²) runs on ONNX Runtime, the same weights at 1024² (9 GMACs) on OpenVINO first."""
    from layercascade.export.stages import export_model
    from layercascade.model.checkpoint import load_checkpoint

    assert registry.model_gmacs(None) == pytest.approx(0.2207, abs=1e-3)
    assert [spec.name for spec in auto_candidates(None)] == ["ort"]
    large = export_model(load_checkpoint(), tmp_path / "large", input_size=(1024, 1024))
    assert registry.model_gmacs(large) == pytest.approx(9.038, abs=1e-2)
    assert [spec.name for spec in auto_candidates(large)] == ["openvino", "ort"]
    assert registry.model_gmacs(tmp_path / "missing") == float("inf")  # the loader says what is wrong


def test_auto_candidates_for_engines_and_checkpoints(tmp_path: Path) -> None:
    from layercascade.model.checkpoint import DEMO_CHECKPOINT

    from layercascade.runtime.trt.engines import METADATA

    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / METADATA).write_text("{}")
    assert [spec.name for spec in auto_candidates(tmp_path / "engines")] == ["trt"]
    assert auto_backend(DEMO_CHECKPOINT, "cuda") == "torch"
    with pytest.raises(LCError, match=r"is a checkpoint \(lc-train\); run it with --backend torch \(or auto\), not "
                                      "--backend openvino"):
        Cascade.load(DEMO_CHECKPOINT, backend="openvino")


def test_auto_runs_a_model_dir_on_openvino_at_its_default_precision(demo_fp32: Path, demo_int8: tuple,
                                                                   large: None) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'layercascade[cpu]')")
    from layercascade.runtime.openvino.loader import cpu_capabilities

    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        with Cascade.load(demo_fp32) as fp32, Cascade.load(demo_int8[0]) as int8:
            assert (fp32.backend, fp32.precision) == ("openvino", "bf16" if "BF16" in cpu_capabilities() else "fp32")
            assert (int8.backend, int8.precision) == ("openvino", "int8")
        with Cascade.load(demo_fp32, precision="fp32") as reference, Cascade.load(demo_int8[0], backend="ort") as ort:
            assert (reference.backend, reference.precision) == ("ort", "fp32") and ort.precision == "int8"


def test_auto_without_openvino_runs_onnx_runtime_and_says_why(demo_fp32: Path, monkeypatch, large: None) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.warns(BackendFallbackWarning) as caught:
        cascade = Cascade.load(demo_fp32)
    assert (cascade.backend, cascade.precision) == ("ort", "fp32") and len(caught) == 1
    assert str(caught[0].message) == ("--backend auto: OpenVINO is not installed (pip install 'layercascade[cpu]'); "
                                      "running ONNX Runtime")
    assert auto_backend(demo_fp32) == "ort"


def cannot_compile(monkeypatch) -> None:
    """Make OpenVINO refuse every graph, as it refuses an op it has no conversion for."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'layercascade[cpu]')")
    from layercascade.runtime.openvino import backend

    def refuse(model, label: str, *args, **kwargs):
        raise BackendCannotRun(f"{label}: OpenVINO cannot compile it (No conversion rule found for operations: X)")

    monkeypatch.setattr(backend, "compile_graph", refuse)


def test_auto_passes_a_model_openvino_cannot_compile_to_onnx_runtime(demo_fp32: Path, monkeypatch,
                                                                     large: None) -> None:
    cannot_compile(monkeypatch)
    with pytest.warns(BackendFallbackWarning, match=r"^--backend auto: .*/stages 1-3: OpenVINO cannot compile it "
                                                    r"\(No conversion rule .*\); running ONNX Runtime$"):
        assert Cascade.load(demo_fp32).backend == "ort"
    with pytest.raises(BackendCannotRun, match="OpenVINO cannot compile it"):  # asked for by name: the error stands
        Cascade.load(demo_fp32, backend="openvino")


def test_lc_run_says_which_engine_ran_and_why_not_the_faster_one(tmp_path: Path, monkeypatch, large: None,
                                                                 capsys: pytest.CaptureFixture) -> None:
    image = sorted(SAMPLES.iterdir())[0]
    assert run_cli(run.main, [str(image), "-o", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    captured = capsys.readouterr()
    assert captured.err.count("warning") == 0
    assert captured.out.rstrip().endswith(f"({summary['backend']} {summary['precision']})")
    assert summary["backend"] == auto_backend(None)
    cannot_compile(monkeypatch)
    assert run_cli(run.main, [str(image), "-o", str(tmp_path / "b"), "--quiet"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: --backend auto: ") and lines[0].endswith(
        "; running ONNX Runtime")
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (summary["backend"], summary["precision"]) == ("ort", "fp32")

