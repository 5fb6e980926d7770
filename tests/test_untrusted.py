"""Model dirs and checkpoints are untrusted input: a name read from ``lc.json`` never leads a read or a write out
of the dir, garbage values are one line naming the file and the field (at export and at load), JSON is read
within bounds, and no command replaces a model dir, plot or repository it did not write.

The property tests mutate ``lc.json`` and a checkpoint's metadata at random and check that loading either
succeeds or fails with one :class:`LCError` line, never another exception.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from layercascade.errors import LCError, run_cli
from layercascade.export.graph import load_onnx
from layercascade.manifest import (
    MAX_JSON_DEPTH,
    check_file_name,
    read_cascade_manifest,
    read_json,
    read_manifest,
    sha256_file,
    writer_of,
)
from layercascade.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from layercascade.runtime.inputs import DEMO_MODEL

BAD_NAMES = ["../victim.txt", "/tmp/victim.txt", "sub/stage1.onnx", "..", ".", "", "a\\b.onnx", "x\x00y", 5, None,
             "x" * 300]


def model_copy(tmp_path: Path, edit: Callable[[Path, dict], None] = lambda folder, manifest: None,
               name: str = "model") -> Path:
    """A copy of the demo model dir, changed by ``edit(folder, manifest)``; the hashes of its own files are
    recomputed (so only the checks of names and values catch the change)."""
    folder = tmp_path / name
    shutil.copytree(DEMO_MODEL, folder)
    manifest = json.loads((folder / "lc.json").read_text())
    ours = set(manifest["files"])
    edit(folder, manifest)
    if isinstance(manifest.get("files"), dict):
        manifest["files"] = {name: sha256_file(folder / name) if name in ours and (folder / name).is_file()
                             else digest for name, digest in manifest["files"].items()}
    (folder / "lc.json").write_text(json.dumps(manifest))
    return folder


def victim(tmp_path: Path) -> Path:
    """A file of the user's beside the model dir and the outputs (a stand-in for ~/.bashrc)."""
    path = tmp_path / "victim.txt"
    path.write_text("the user's own file\n")
    return path


def listed_as(name: object) -> Callable[[Path, dict], None]:
    """An edit that lists the attacker's file under ``name`` in ``files`` and as stage 2's graph."""
    def edit(folder: Path, manifest: dict) -> None:
        if isinstance(name, str):  # (JSON's keys are strings)
            manifest["files"][name] = "0" * 64
        manifest["stages"][1]["file"] = name
    return edit


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message, message
    return message


# -- one rule for names -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_name_that_is_not_a_plain_file_name_is_refused(name: object, tmp_path: Path) -> None:
    victim(tmp_path)
    folder = model_copy(tmp_path, listed_as(name))
    with pytest.raises(LCError) as error:
        read_manifest(folder)
    assert "is not a plain file name inside the model directory" in one_line(error)
    with pytest.raises(LCError):
        check_file_name(name, "lc.json", "files")


def test_plain_names_pass() -> None:
    for name in ("stage1.onnx", "a b.onnx", ".hidden", "x" * 255, "é.onnx"):
        assert check_file_name(name, "lc.json", "files") == name


def test_a_graph_named_outside_files_is_refused(tmp_path: Path) -> None:
    def edit(folder: Path, manifest: dict) -> None:
        shutil.copy(folder / "dense.onnx", folder / "other.onnx")
        manifest["dense"]["file"] = "other.onnx"

    with pytest.raises(LCError, match=r"dense.file 'other.onnx' is not one of the model's files"):
        read_manifest(model_copy(tmp_path, edit))


def test_a_link_leading_out_of_the_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(DEMO_MODEL / "stage2.onnx", outside)

    def edit(folder: Path, manifest: dict) -> None:
        (folder / "stage2.onnx").unlink()
        (folder / "stage2.onnx").symlink_to(outside)

    with pytest.raises(LCError, match=r"stage2.onnx: is a link to .*elsewhere.onnx, outside the model directory"):
        read_manifest(model_copy(tmp_path, edit))

    def inside(folder: Path, manifest: dict) -> None:  # a link to a file inside the dir is a plain file of it
        (folder / "stage2.onnx").rename(folder / "real.onnx")
        (folder / "stage2.onnx").symlink_to("real.onnx")
        manifest["files"]["real.onnx"] = sha256_file(folder / "real.onnx")

    assert read_manifest(model_copy(tmp_path, inside, "linked"))["files"]["stage2.onnx"]


@pytest.mark.parametrize("name", ["../victim.txt", "/abs/victim.txt"])
def test_no_command_reads_or_writes_through_a_crafted_name(name: str, tmp_path: Path, capsys) -> None:
    """lc-tune copied the file a name led to over a file beside its -o; lc-calibrate wrote its graph outside its
    -o; an absolute name was a traceback after the whole measurement. Now each is one line before any work."""
    from layercascade.cli import build, calibrate, run, triton, tune

    target = victim(tmp_path)
    before = target.read_bytes()
    name = name if name.startswith("..") else str(target)
    folder = model_copy(tmp_path, listed_as(name))
    outputs = tmp_path / "outputs"
    commands = {
        "lc-run": (run.main, [str(DEMO_MODEL.parent / "samples"), "--model", str(folder), "-o", str(outputs / "run")]),
        "lc-tune": (tune.main, [str(folder), "--data", "synthetic", "--target-ms", "5", "--no-plot",
                                "-o", str(outputs / "tuned")]),
        "lc-calibrate": (calibrate.main, [str(folder), "-o", str(outputs / "int8"), "--limit", "1"]),
        "lc-triton": (triton.main, [str(folder), "-o", str(outputs / "repo")]),
        "lc-build --check": (build.main, [str(folder), "--check"]),
    }
    for command, (main, argv) in commands.items():
        assert run_cli(main, argv) == 1, command
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and "is not a plain file name inside the model directory" in lines[0], (command, lines)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) in (["model", "victim.txt"], ["model", "outputs", "victim.txt"])
    assert not [p for p in outputs.rglob("*") if not p.is_dir()]  # nothing written (lc-run made its empty -o)


def test_external_data_is_read_only_from_files_beside_the_graph(tmp_path: Path) -> None:
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])],
        [onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "w")]))
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    assert load_onnx(tmp_path / "m.onnx").graph.initializer[0].dims == [64, 64]  # beside it: read
    stored = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for location in ("../victim.txt", "/etc/hostname", "sub/w.bin"):
        for entry in stored.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(stored, tmp_path / "m.onnx")
        with pytest.raises(LCError) as error:
            load_onnx(tmp_path / "m.onnx")
        assert f"tensor 'w' keeps its data in {location!r}, which is not a file beside it" in one_line(error)


# -- values and bounds ------------------------------------------------------------------------------------------------
GARBAGE_MANIFESTS = {
    "no batch": (lambda f, m: m.pop("batch"), "lc.json: batch null is not"),
    "batch of a million": (lambda f, m: m.update(batch={"dynamic": False, "size": 10**6}), "lc.json: batch"),
    "batch a string": (lambda f, m: m.update(batch="one"), 'lc.json: batch "one" is not'),
    "input 40000²": (lambda f, m: m.update(input_size=[40000, 40000]),
                     "lc.json: input_size [40000, 40000] is not an input of at most 100,000,000 pixels"),
    "std 0": (lambda f, m: m.update(std=[58.4, 0, 57.4]), "lc.json: std [58.4, 0, 57.4] is not three finite numbers"),
    "std of two": (lambda f, m: m.update(std=[58.4, 57.1]), "lc.json: std [58.4, 57.1] is not three finite numbers"),
    "mean NaN": (lambda f, m: m.update(mean=[math.nan, 1, 1]), "lc.json: mean [NaN, 1, 1] is not three finite"),
    "no stage_gmacs": (lambda f, m: m.pop("stage_gmacs"), "lc.json: stage_gmacs null is not three"),
    "quantization a list": (lambda f, m: m.update(quantization=[1]), "lc.json: quantization [1] is not a record"),
    "two stages": (lambda f, m: m["stages"].pop(), "lc.json: a cascade lists three stage graphs"),
    "stages a dict": (lambda f, m: m.update(stages={"file": "stage1.onnx"}), "lc.json: stages is not a list"),
    "version 2.0": (lambda f, m: m.update(version=2.0),
                    "lc.json: manifest format version 2.0 is not a version number (an integer from 1)"),
    "version true": (lambda f, m: m.update(version=True), "lc.json: manifest format version true is not a version"),
    "version 4": (lambda f, m: m.update(version=4),
                  "lc.json: manifest format version 4 is newer than this layercascade reads (3)"),
    "digest not hex": (lambda f, m: m.update(files={**m["files"], "stage1.onnx": "zz"}),
                       "lc.json: files['stage1.onnx'] is not a sha256"),
    "default_rho 7": (lambda f, m: m.update(default_rho=7), "lc.json: default_rho 7 is not [rho2, rho3] (two "
                      "numbers in (0, 1]); fix it or re-export the model"),
    "default_rho_class of another model": (lambda f, m: m.update(default_rho_class={"road": 0.9}),
                                           'lc.json: default_rho_class {"road": 0.9} is not {class name: threshold} '
                                           "(classes of the model, thresholds in (0, 1]); fix it or re-export the "
                                           "model"),
}


@pytest.mark.parametrize("case", GARBAGE_MANIFESTS)
def test_a_garbage_manifest_is_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    edit, expected = GARBAGE_MANIFESTS[case]
    folder = model_copy(tmp_path, edit)
    if case == "digest not hex":  # model_copy rehashes the files that exist; undo it for this one
        manifest = json.loads((folder / "lc.json").read_text())
        manifest["files"]["stage1.onnx"] = "zz"
        (folder / "lc.json").write_text(json.dumps(manifest))
    with pytest.raises(LCError) as error:
        read_cascade_manifest(folder)
    assert one_line(error).startswith(str(folder)) and expected in str(error.value), str(error.value)


def test_a_run_on_a_dir_without_batch_is_one_line(tmp_path: Path, capsys) -> None:
    from layercascade.cli import run

    folder = model_copy(tmp_path, lambda f, m: m.pop("batch"))
    assert run_cli(run.main, ["--model", str(folder), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}/lc.json: batch null is not"), lines


def test_json_is_read_within_bounds(tmp_path: Path) -> None:
    path = tmp_path / "lc.json"
    path.write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python's recursion limit
    with pytest.raises(LCError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        read_json(path, "re-export the model")
    path.write_text(json.dumps({"a": [[[1]]]}))
    assert read_json(path, "", max_depth=4) == {"a": [[[1]]]}
    with pytest.raises(LCError, match="nested deeper than 3 levels"):
        read_json(path, "", max_depth=3)
    path.write_text(" " * 2_000 + "{}")
    with pytest.raises(LCError, match="2,002 bytes, over the 0 MiB layercascade reads"):
        read_json(path, "", max_bytes=1_000)
    os.mkfifo(tmp_path / "fifo.json")  # refused, not waited on
    with pytest.raises(LCError, match="fifo.json: a link or not a regular file"):
        read_json(tmp_path / "fifo.json", "")
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(LCError, match="not valid JSON"):
        read_json(path, "")


def test_a_deeply_nested_manifest_is_one_line(tmp_path: Path) -> None:
    folder = model_copy(tmp_path)
    (folder / "lc.json").write_text('{"format": "layercascade.model", "x": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(LCError) as error:
        read_manifest(folder)
    assert "nested deeper than" in one_line(error)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
FIELDS = ["format", "version", "kind", "classes", "palette", "mean", "std", "input_size", "stage_size",
          "default_rho", "default_rho_class", "stage_gmacs", "batch", "stages", "dense", "files", "source",
          "quantization", "tuning"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.just("<deleted>"), min_size=1, max_size=3),
       stage=st.integers(0, 2), stage_value=st.none() | JSON_VALUES)
def test_a_mutated_manifest_loads_or_is_one_line(changes: dict, stage: int, stage_value: object,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("fuzz") / "model"
    shutil.copytree(DEMO_MODEL, folder)
    manifest = json.loads((folder / "lc.json").read_text())
    for field, value in changes.items():
        if value == "<deleted>":
            manifest.pop(field, None)
        else:
            manifest[field] = value
    if stage_value is not None and isinstance(manifest.get("stages"), list) and len(manifest["stages"]) > stage:
        manifest["stages"][stage] = stage_value
    (folder / "lc.json").write_text(json.dumps(manifest))
    try:
        loaded = read_cascade_manifest(folder)
    except LCError as error:
        assert str(error) and "\n" not in str(error)
        return
    # What loads is what a run needs: plain names inside the dir, sizes and batch within bounds.
    assert all(Path(folder / name).resolve().parent == folder.resolve() for name in loaded["files"])
    assert len(loaded["stages"]) == 3 and loaded["input_size"][0] * loaded["input_size"][1] <= 100_000_000


# -- checkpoints ------------------------------------------------------------------------------------------------------
def saved_checkpoint(tmp_path: Path, **changes: object) -> Path:
    """The demo checkpoint's metadata with ``changes`` (a value of ``...`` deletes the key), its weights dropped
    (the metadata is checked before a network is built)."""
    data = torch.load(DEMO_CHECKPOINT, weights_only=True)
    data["state_dict"] = {}
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "checkpoint.pt"
    torch.save(data, path)
    return path


GARBAGE_CHECKPOINTS = {
    "std 0": ({"std": [58.4, 0.0, 57.4]}, "std [58.4, 0.0, 57.4] is not three finite numbers"),
    "mean NaN": ({"mean": [math.nan, 116.3, 103.5]}, "mean [NaN, 116.3, 103.5] is not three finite numbers"),
    "std of four": ({"std": [1.0, 1.0, 1.0, 1.0]}, "std [1.0, 1.0, 1.0, 1.0] is not three finite numbers"),
    "input 40000²": ({"input_size": [40000, 40000]}, "input_size [40000, 40000] is not an input of at most"),
    "default_rho 0": ({"default_rho": 0.0}, "default_rho 0.0 is not [rho2, rho3]"),
    "palette strings": ({"palette": [["a", "b", "c"]] * 21}, 'palette [["a", "b", "c"]'),
    "classes numbers": ({"classes": list(range(21))}, "classes [0, 1, 2"),
    "version 1.0": ({"version": 1.0}, "checkpoint format version 1.0 is not a version number"),
    "config of a huge head": ({"config": {"backbone": "tiny", "num_classes": 21, "head_channels": 10**9}},
                              "model config head_channels 1000000000 is not an integer from 1 to 8192"),
    "config of another backbone": ({"config": {"backbone": "vit"}}, "model config names backbone 'vit', not one of"),
    "training a list": ({"training": [1]}, "training is not a mapping"),
}


@pytest.mark.parametrize("case", GARBAGE_CHECKPOINTS)
def test_a_garbage_checkpoint_is_one_line(case: str, tmp_path: Path) -> None:
    changes, expected = GARBAGE_CHECKPOINTS[case]
    with pytest.raises(LCError) as error:
        load_checkpoint(saved_checkpoint(tmp_path, **changes))
    assert one_line(error).startswith(str(tmp_path)) or "model config" in str(error.value)
    assert expected in str(error.value), str(error.value)


def test_lc_export_of_a_garbage_checkpoint_writes_nothing(tmp_path: Path, capsys) -> None:
    from layercascade.cli import export

    checkpoint = saved_checkpoint(tmp_path, std=[58.4, 0.0, 57.4])
    assert run_cli(export.main, [str(checkpoint), "-o", str(tmp_path / "model")]) == 1
    assert "std [58.4, 0.0, 57.4] is not three finite numbers" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


CHECKPOINT_FIELDS = ["version", "config", "classes", "palette", "mean", "std", "input_size", "default_rho",
                     "training"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(CHECKPOINT_FIELDS), JSON_VALUES | st.just(...), min_size=1,
                               max_size=3))
def test_a_mutated_checkpoint_loads_or_is_one_line(changes: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = saved_checkpoint(tmp_path_factory.mktemp("fuzz"), **changes)
    try:
        checkpoint = load_checkpoint(path)
    except LCError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert len(checkpoint.std) == 3 and all(math.isfinite(v) and v > 0 for v in checkpoint.std)
    assert all(math.isfinite(v) for v in checkpoint.mean) and len(checkpoint.classes) == checkpoint.config.num_classes


# -- never replace what a command did not write -----------------------------------------------------------------------
def test_each_model_dir_writer_replaces_only_its_own(demo_fp32: Path, demo_int8, tmp_path: Path) -> None:
    from layercascade.export.stages import export_model
    from layercascade.runtime import tune

    int8_dir, _, _ = demo_int8
    assert writer_of(read_manifest(demo_fp32)) == "lc-export" and writer_of(read_manifest(int8_dir)) == "lc-calibrate"
    tuned = tune.write_tuned_dir(demo_fp32, tmp_path / "tuned", (0.9, 0.9), {})
    assert read_manifest(tuned)["writer"] == "lc-tune"
    tune.write_tuned_dir(demo_fp32, tuned, (0.95, 0.95), {})  # its own earlier output: replaced
    assert read_manifest(tuned)["default_rho"] == [0.95, 0.95]
    exported = shutil.copytree(demo_fp32, tmp_path / "exported")
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    with pytest.raises(LCError, match="holds a model dir written by lc-export, which lc-tune does not replace"):
        tune.write_tuned_dir(demo_fp32, exported, (0.9, 0.9), {})
    with pytest.raises(LCError, match="holds a model dir written by lc-tune, which lc-export does not replace"):
        export_model(load_checkpoint(), tuned)
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before


def test_lc_tune_refuses_an_existing_dir_before_measuring(demo_fp32: Path, tmp_path: Path, capsys) -> None:
    from layercascade.cli import tune as tune_cli

    exported = shutil.copytree(demo_fp32, tmp_path / "exported")
    assert run_cli(tune_cli.main, [str(demo_fp32), "--data", "synthetic", "--target-ms", "5", "--no-plot",
                                   "-o", str(exported)]) == 1
    assert "written by lc-export, which lc-tune does not replace" in capsys.readouterr().err


def test_plots_replace_only_their_own_command_s(tmp_path: Path) -> None:
    """lc-tune --plot replaced a user's file; lc-bench --plot too. Each replaces only a plot it wrote (PNG tag)."""
    from layercascade.runtime.compare import PLOT_SOFTWARE, check_plot_target

    photo = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(photo)
    for path in (photo, tmp_path / "notes.txt", tmp_path / "folder"):
        if path.suffix == ".txt":
            path.write_text("mine")
        elif not path.suffix:
            path.mkdir()
        with pytest.raises(LCError, match="exists and is not a plot lc-tune wrote"):
            check_plot_target(path, "lc-tune")
    with pytest.raises(LCError, match="does not exist"):
        check_plot_target(tmp_path / "missing" / "plot.png", "lc-bench")
    check_plot_target(tmp_path / "new.png", "lc-bench")  # nothing there: fine
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure = plt.figure()
    figure.savefig(tmp_path / "earlier.png", metadata={"Software": PLOT_SOFTWARE.format(command="lc-tune")})
    plt.close(figure)
    check_plot_target(tmp_path / "earlier.png", "lc-tune")  # an earlier lc-tune plot: may be replaced
    with pytest.raises(LCError, match="exists and is not a plot lc-bench wrote"):
        check_plot_target(tmp_path / "earlier.png", "lc-bench")


def test_lc_triton_onto_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    from layercascade.cli import triton

    (tmp_path / "repo").write_text("not a folder")
    assert run_cli(triton.main, ["-o", str(tmp_path / "repo" / "sub")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "repo: exists and is not a folder" in err[0], err


def test_model_dirs_are_readable_by_other_users(tmp_path: Path) -> None:
    from layercascade.runtime import tune

    umask = os.umask(0o022)
    try:
        written = tune.write_tuned_dir(DEMO_MODEL, tmp_path / "tuned", (0.9, 0.9), {})
    finally:
        os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in written.iterdir())



def test_lc_train_replaces_only_a_checkpoint(tmp_path: Path, capsys) -> None:
    """lc-train -o onto a user's file replaced it after the first epoch; now it is one line before training."""
    from layercascade.cli import train

    notes = tmp_path / "notes.pt"
    notes.write_text("the user's own file")
    for target, expected in ((notes, "exists and is not a layercascade checkpoint"),
                             (tmp_path, "exists and is not a checkpoint file"),
                             (notes / "model.pt", "notes.pt exists and is not a folder")):
        assert run_cli(train.main, ["-o", str(target), "--epochs", "1", "--train-limit", "2", "--val-limit", "2"]) == 1
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert notes.read_text() == "the user's own file"
