"""A user's data is never lost: outputs never replace inputs or other files, images are refused from
their header before they take gigabytes, pictures are drawn at a bounded size, interrupted runs leave
whole outputs and a summary, model dirs are checked against their graphs, EXIF orientation is applied,
and the API says what it takes. Each test reproduces a failure seen before these guarantees."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from layercascade.cli import build, run
from layercascade.errors import LCError, run_cli
from layercascade.manifest import sha256_file
from layercascade.model.data import VOC_PALETTE, images, read_rgb
from layercascade.runtime import segment
from layercascade.runtime.inputs import DEMO_MODEL, IMAGE_EXTENSIONS, SAMPLES
from layercascade.runtime.segment import interrupts_deferred, picture_size, render
from layercascade.tests.fake_cascade import FakeCascade, fake_labels, leftovers, run_lc
from layercascade.tests.helpers import png_claiming


def gradient(height: int, width: int) -> np.ndarray:
    """An image whose fake labels change along both axes, so a turned label map shows."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 255 // max(height - 1, 1), cols * 255 // max(width - 1, 1), (rows + cols) % 256],
                    axis=2).astype(np.uint8)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- outputs never replace inputs -------------------------------------------------------------------

def test_an_input_inside_the_output_folder_is_refused(tmp_path: Path, fake: type[FakeCascade],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """`lc-run photo.png -o .` used to replace the photo by its label map; `lc-run DIR -o DIR` too."""
    Image.fromarray(gradient(20, 30)).save(tmp_path / "photo.png")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert run_lc(["photo.png", "-o", "."]) == 1
    assert capsys.readouterr().err == ("error: photo.png: is inside the output folder .; an output could replace it: "
                                       "pass another -o\n")
    assert run_lc([tmp_path, "-o", tmp_path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: is the output folder {tmp_path} or inside it") and err.count("\n") == 1
    assert snapshot(tmp_path) == before and fake.instances == []  # refused before the model is loaded


def test_a_recursive_glob_never_reads_the_outputs_back(tmp_path: Path, fake: type[FakeCascade],
                                                       capsys: pytest.CaptureFixture) -> None:
    """With -o inside the input tree, the tree grew 4 → 10 → 22 images over three runs."""
    for name in ("a.png", "sub/b.jpg", "sub/deep/c.png", "d.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient(12, 16)).save(tmp_path / name)
    inputs = snapshot(tmp_path)
    out = tmp_path / "sub" / "out"
    for attempt in range(3):
        assert run_lc([f"{tmp_path}/**/*", "-o", out, "--quiet"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["images"] == 4 and {Path(r["input"]).name for r in summary["results"]} == {
            "a.png", "b.jpg", "c.png", "d.bmp"}
        assert len(list(out.iterdir())) == 4 * 3 + 1
        err = capsys.readouterr().err
        assert err == ("" if attempt == 0 else f"warning: skipped 12 image file(s) inside the output folder {out} "
                       "(lc-run never reads outputs back as inputs)\n")
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("sub/out/")} == inputs


def test_files_in_the_output_folder_that_no_run_wrote_are_kept(tmp_path: Path, fake: type[FakeCascade]) -> None:
    """Only an earlier run's outputs (listed in its summary.json) are replaced; a user's own x.png is not."""
    Image.fromarray(gradient(10, 10)).save(tmp_path / "x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"the user's own file")
    assert run_lc([tmp_path / "x.jpg", "-o", out, "--quiet"]) == 0
    assert (out / "x.png").read_bytes() == b"the user's own file"
    assert json.loads((out / "summary.json").read_text())["results"][0]["outputs"] == [
        "x-2.png", "x-2_overlay.jpg", "x-2_stages.png"]
    assert run_lc([tmp_path / "x.jpg", "-o", out, "--quiet"]) == 0  # a rerun replaces its own outputs
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "x-2.png", "x-2_overlay.jpg", "x-2_stages.png",
                                                    "x.png"]


def test_a_summary_json_that_is_not_ours_is_refused(tmp_path: Path, fake: type[FakeCascade],
                                                     capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(gradient(10, 10)).save(tmp_path / "x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"my experiment": "notes"}')
    assert run_lc([tmp_path / "x.jpg", "-o", out]) == 1
    assert capsys.readouterr().err == (f"error: {out / 'summary.json'}: exists and is not an lc-run summary, which "
                                       "this run would replace (no 'results' list): move it or pass another -o\n")
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"] and fake.instances == []


def test_every_earlier_runs_outputs_stay_replaceable(tmp_path: Path, fake: type[FakeCascade]) -> None:
    """Runs of a, then b, then a again: a's outputs are replaced, not duplicated as a-2."""
    for name in ("a.jpg", "b.bmp"):
        Image.fromarray(gradient(10, 12)).save(tmp_path / name)
    out = tmp_path / "out"
    for name in ("a.jpg", "b.bmp", "a.jpg"):
        assert run_lc([tmp_path / name, "-o", out, "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg", "a_stages.png", "b.png",
                                                    "b_overlay.jpg", "b_stages.png", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["earlier_outputs"] == {
        name: sha256_file(out / name) for name in ("b.png", "b_overlay.jpg", "b_stages.png")}


def test_a_write_failure_stops_the_run_and_still_writes_the_summary(tmp_path: Path, fake: type[FakeCascade],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    paths = write_inputs(tmp_path / "in", 3)
    write_new = segment.write_new
    written: list[str] = []

    def disk_full_at_the_fourth_picture(path: Path, data: bytes) -> None:
        written.append(str(path))
        if len(written) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_new(path, data)

    monkeypatch.setattr(segment, "write_new", disk_full_at_the_fourth_picture)
    out = tmp_path / "out"
    assert run_lc([*paths, "-o", out, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'im1.png'}: cannot write (No space left on device) (stopped: 1 image(s)")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and summary["stopped"].endswith("cannot write (No space left on device)")
    assert complete_sets(out) == {"im0": 3} and leftovers(out) == []
    monkeypatch.setattr(segment, "write_new", write_new)
    assert run_lc([*paths, "-o", out, "--quiet"]) == 0
    assert complete_sets(out) == {"im0": 3, "im1": 3, "im2": 3}  # im0's outputs replaced, not duplicated


def test_ctrl_c_during_the_renames_keeps_the_image(tmp_path: Path, fake: type[FakeCascade],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C between two renames of an image's files: held off until the image is whole and listed."""
    paths = write_inputs(tmp_path / "in", 3)
    replace = os.replace
    calls: list[str] = []

    def interrupted_after_the_first_rename(source, target):
        replace(source, target)
        calls.append(str(target))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(segment.os, "replace", interrupted_after_the_first_rename)
    out = tmp_path / "out"
    assert run_lc([*paths, "-o", out, "--quiet"]) == 130
    assert complete_sets(out) == {"im0": 3} and leftovers(out) == []
    assert json.loads((out / "summary.json").read_text())["images"] == 1


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO])
def test_a_failed_rename_leaves_no_part_of_the_image(tmp_path: Path, fake: type[FakeCascade],
                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                     code: int) -> None:
    """The first image's second rename is refused: that file's (EACCES) fails the image and the run goes on; a
    disk's (EIO) stops the run. Either way no part of the image stays."""
    paths = write_inputs(tmp_path / "in", 2)
    replace = os.replace
    calls: list[str] = []

    def refused_second_rename(source, target):
        calls.append(str(target))
        if len(calls) == 2:
            raise OSError(code, os.strerror(code))
        replace(source, target)

    monkeypatch.setattr(segment.os, "replace", refused_second_rename)
    out = tmp_path / "out"
    assert run_lc([*paths, "-o", out, "--quiet"]) == 1
    reason = f"{out / 'im0_overlay.jpg'}: cannot write ({os.strerror(code)})"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [{"input": str(paths[0]), "error": reason}] and leftovers(out) == []
    if code == errno.EACCES:
        assert capsys.readouterr().err == f"warning: {paths[0]}: {reason}\n"
        assert complete_sets(out) == {"im1": 3} and summary["images"] == 1 and summary["stopped"] is None
    else:
        assert capsys.readouterr().err.startswith(f"error: {reason} (stopped: 0 image(s) done")
        assert complete_sets(out) == {} and summary["images"] == 0 and summary["stopped"] == reason


def test_an_earlier_output_that_became_a_folder_is_left_alone(tmp_path: Path, fake: type[FakeCascade]) -> None:
    Image.fromarray(gradient(10, 10)).save(tmp_path / "x.jpg")
    out = tmp_path / "out"
    assert run_lc([tmp_path / "x.jpg", "-o", out, "--quiet"]) == 0
    (out / "x_stages.png").unlink()
    (out / "x_stages.png").mkdir()
    assert run_lc([tmp_path / "x.jpg", "-o", out, "--quiet"]) == 0
    assert (out / "x_stages.png").is_dir() and (out / "x-2_stages.png").is_file()


# -- bounded memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "height"), [(13000, 13000), (60000, 60000)])
def test_huge_images_are_refused_from_the_header(tmp_path: Path, width: int, height: int) -> None:
    """A 13000² all-zero PNG (under Pillow's own bomb limit) peaked at 9.4 GB; Pillow's warning was printed raw."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
        with pytest.raises(LCError) as error:
            read_rgb(path)
    message = str(error.value)
    claimed = f"{width}×{height}" if width * height < 2 * 10**8 else f"{width * height:,}"  # Pillow's own refusal
    assert message.startswith(f"{path}: image of {claimed} pixels is over the limit of 100,000,000")
    assert "--max-pixels N" in message and "\n" not in message


def test_the_pixel_limit_is_a_setting(tmp_path: Path, fake: type[FakeCascade], capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(gradient(30, 40)).save(tmp_path / "small.png")
    assert read_rgb(tmp_path / "small.png", max_pixels=1200).shape == (30, 40, 3)
    assert run_lc([tmp_path / "small.png", "-o", tmp_path / "out", "--quiet", "--max-pixels", "1199"]) == 1
    assert "image of 40×30 pixels is over the limit of 1,199" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["-o", "x", "--max-pixels", "0"])


def test_pictures_are_drawn_at_a_bounded_size_and_the_label_map_at_the_image_size() -> None:
    """The overlay and stage picture of a 12000² image took 6.5 GB on top of reading and inference."""
    image = gradient(1500, 2000)
    result = FakeCascade(None, "fake", "cpu")(image)
    pictures = render(image, result, VOC_PALETTE, max_pixels=300_000)
    assert pictures[""].size == (2000, 1500)
    np.testing.assert_array_equal(np.asarray(pictures[""]), fake_labels(image))
    width, height = pictures["_overlay"].size
    assert width * height <= 300_000 and abs(width / height - 4 / 3) < 0.01
    assert pictures["_stages"].width == width and pictures["_stages"].height > height  # plus the legend
    small = render(image[:300, :400], FakeCascade(None, "fake", "cpu")(image[:300, :400]), VOC_PALETTE, 300_000)
    assert small["_overlay"].size == (400, 300)  # within the bound: drawn as it is
    assert picture_size((1, 100_000_000), 16_000_000) == (1, 16_384)  # a side is bounded too


# -- interrupts ---------------------------------------------------------------------------------------

def write_inputs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"im{k}.png" for k in range(count)]
    for k, path in enumerate(paths):
        Image.fromarray(gradient(16 + k, 20)).save(path)
    return paths


def complete_sets(out: Path) -> dict[str, int]:
    """Output files per stem: every stem has all three or none."""
    counts: dict[str, int] = {}
    for path in out.iterdir():
        if path.name != "summary.json":
            stem = path.name.split("_")[0].split(".")[0]
            counts[stem] = counts.get(stem, 0) + 1
    return counts


def test_an_interrupt_between_images_writes_the_summary(tmp_path: Path, fake: type[FakeCascade],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """SIGINT mid-run left no summary.json: nothing recorded which images finished."""
    paths = write_inputs(tmp_path / "in", 4)
    call = FakeCascade.__call__

    def third_call_interrupted(self: FakeCascade, image: np.ndarray, rho: float | None = None, **policy):
        if len(self.rhos) == 2:
            raise KeyboardInterrupt
        return call(self, image, rho, **policy)

    monkeypatch.setattr(FakeCascade, "__call__", third_call_interrupted)
    out = tmp_path / "out"
    assert run_lc([*paths, "-o", out, "--quiet"]) == 130
    assert capsys.readouterr().err == f"interrupted: 2 of 4 image(s) done, listed in {out / 'summary.json'}\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["images"] == 2
    assert [r["input"] for r in summary["results"]] == [str(p) for p in paths[:2]]
    assert complete_sets(out) == {"im0": 3, "im1": 3} and leftovers(out) == []


def test_an_interrupt_while_writing_leaves_no_part_of_that_image(tmp_path: Path, fake: type[FakeCascade],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The image in flight kept 2 of its 3 files."""
    paths = write_inputs(tmp_path / "in", 3)
    save = Image.Image.save
    saved: list[str] = []

    def interrupted_at_the_fifth_picture(self: Image.Image, fp, *args, **kwargs):
        saved.append(str(fp))
        if len(saved) == 5:  # the second picture of the second image
            raise KeyboardInterrupt
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", interrupted_at_the_fifth_picture)
    out = tmp_path / "out"
    assert run_lc([*paths, "-o", out, "--quiet"]) == 130
    assert complete_sets(out) == {"im0": 3} and leftovers(out) == []
    assert json.loads((out / "summary.json").read_text())["images"] == 1


def test_an_interrupt_waits_for_the_renames() -> None:
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached = True
    assert reached and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_on_a_real_run(tmp_path: Path) -> None:
    """lc-run in a process of its own with the demo model, SIGINT once outputs appear: exit 130, whole
    outputs only, and a summary that lists exactly the images whose outputs are there."""
    folder = tmp_path / "in"
    folder.mkdir()
    samples = sorted(SAMPLES.iterdir())
    for k in range(400):
        shutil.copy(samples[k % len(samples)], folder / f"im{k:03d}{samples[k % len(samples)].suffix}")
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", "from layercascade.cli.run import cli; cli()", str(folder), "-o",
                                str(out), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(p.suffix == ".jpg" and not p.name.startswith(".") for p in out.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 0 < summary["images"] < 400
    written = {name for record in summary["results"] for name in record["outputs"]}
    assert {p.name for p in out.iterdir()} == written | {"summary.json"}


# -- model dirs checked against their graphs ------------------------------------------------------------

def tampered(tmp_path: Path, edit: Callable[[Path, dict], None], rehash: bool = True) -> Path:
    """A copy of the demo model dir changed by ``edit(folder, manifest)``, its hashes recomputed (so
    only the checks of the contents can catch it)."""
    folder = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, folder)
    manifest = json.loads((folder / "lc.json").read_text())
    edit(folder, manifest)
    if rehash and "files" in manifest:
        manifest["files"] = {name: sha256_file(folder / name) for name in manifest["files"]}
    (folder / "lc.json").write_text(json.dumps(manifest))
    return folder


def without_output(name: str) -> Callable[[Path, dict], None]:
    def edit(folder: Path, manifest: dict) -> None:
        model = onnx.load(folder / "stage2.onnx")
        kept = [o for o in model.graph.output if o.name != name]
        del model.graph.output[:]
        model.graph.output.extend(kept)
        onnx.save(model, folder / "stage2.onnx")
    return edit


def with_unknown_op(folder: Path, manifest: dict) -> None:
    model = onnx.load(folder / "stage1.onnx")
    next(node for node in model.graph.node if node.op_type == "Relu").op_type = "NotAnOp"
    onnx.save(model, folder / "stage1.onnx")


TAMPERED = {
    "no files": (lambda f, m: m.pop("files"), "lc.json: has no 'files'"),
    "input_size edited": (lambda f, m: m.update(input_size=[161, 161]),
                          "lc.json: input_size [161, 161] does not match stage1.onnx's image uint8 [1, 160, 160, 3]; "
                          "fix input_size or re-export the model"),
    "input_size a string": (lambda f, m: m.update(input_size="160x160"),
                            'lc.json: input_size "160x160" is not [height, width] (two positive integers)'),
    "classes and palette cut": (lambda f, m: m.update(classes=m["classes"][:3], palette=m["palette"][:3]),
                                "lc.json: 3 classes (and palette colours), but stage1.onnx's scores1 has 21 channels"),
    "palette cut": (lambda f, m: m.update(palette=m["palette"][:3]), "lc.json: palette has 3 colours for 21 classes"),
    "default_rho 7": (lambda f, m: m.update(default_rho=7), "lc.json: default_rho 7 is not [rho2, rho3] (two numbers "
                      "in (0, 1])"),
    "default_rho one of two": (lambda f, m: m.update(default_rho=[0.9]), "lc.json: default_rho [0.9] is not [rho2, "
                               "rho3]"),
    "default_rho [0.9, 2]": (lambda f, m: m.update(default_rho=[0.9, 2]), "lc.json: default_rho [0.9, 2] is not"),
    "format version 4": (lambda f, m: m.update(version=4), "lc.json: manifest format version 4 is newer than this "
                         "layercascade reads (3); upgrade layercascade"),
    "contract output missing": (without_output("mask3"), "stage2.onnx: its outputs are not the stage contract's "
                                "['feat2', 'scores2', 'mask3'] (missing ['mask3'], extra [])"),
    "op ONNX Runtime lacks": (with_unknown_op, "stage1.onnx: ONNX Runtime cannot load it ("),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_model_dir_is_one_line_naming_file_and_field(case: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    edit, expected = TAMPERED[case]
    folder = tampered(tmp_path, edit)
    image = tmp_path / "image.png"
    Image.fromarray(gradient(40, 50)).save(image)
    assert run_cli(run.main, [str(image), "-o", str(tmp_path / "out"), "--model", str(folder), "--quiet"]) == 1
    lines = capsys.readouterr().err.splitlines()
    if case == "op ONNX Runtime lacks":  # ONNX Runtime's first line whole, where it names the op
        assert lines[0].startswith("warning: stages 1-3: running RegionConv function bodies")  # the lowering's
        lines = lines[1:]
        assert "No Op registered for NotAnOp with domain_version of 18)" in lines[0]
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}/") and expected in lines[0], lines


def test_lc_export_refuses_what_loading_would(tiny_model: tuple, tmp_path: Path) -> None:
    """A checkpoint whose palette is one colour short exported fine, and then every run refused it."""
    import dataclasses

    from layercascade.export.stages import export_model

    checkpoint = dataclasses.replace(tiny_model[0], palette=tiny_model[0].palette[:20])
    with pytest.raises(LCError, match="palette has 20 colours for 21 classes; fix it in the checkpoint"):
        export_model(checkpoint, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_stage_from_another_export_is_caught_although_its_hash_was_recomputed(
        tiny_model: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """stage3.onnx of an export at another size, with its hash recomputed, gave 12 % wrong labels silently."""
    folder = tampered(tmp_path, lambda f, m: shutil.copy(tiny_model[1] / "stage3.onnx", f / "stage3.onnx"))
    image = tmp_path / "image.png"
    Image.fromarray(gradient(40, 50)).save(image)
    assert run_cli(run.main, [str(image), "-o", str(tmp_path / "out"), "--model", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder}/stage3.onnx: input feat2 is float32 [1, ") and err.count("\n") == 1
    assert f"{folder}/lc.json lists float32 [1, 64, 20, 20]; the file does not belong to this model dir" in err
    # lc-build checks the same before it needs TensorRT
    assert run_cli(build.main, [str(folder), "--precision", "fp32", "-o", str(tmp_path / "engines")]) == 1
    assert "stage3.onnx: input feat2 is float32" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()


# -- EXIF orientation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", [6, 8])
def test_phone_photos_are_segmented_as_viewers_show_them(orientation: int, tmp_path: Path,
                                                         fake: type[FakeCascade]) -> None:
    """A photo with EXIF orientation 6 or 8 got its label map and overlay turned 90° against the photo."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo = tmp_path / "phone.jpg"
    Image.fromarray(gradient(30, 50)).save(photo, exif=exif, quality=95)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))
    assert shown.shape == (50, 30, 3)
    for flags, expected in (([], shown), (["--no-exif-transpose"], np.asarray(Image.open(photo).convert("RGB")))):
        out = tmp_path / f"out{len(flags)}"
        assert run_lc([photo, "-o", out, "--quiet", *flags]) == 0
        with Image.open(out / "phone.png") as labels:
            np.testing.assert_array_equal(np.asarray(labels), fake_labels(expected))
        for picture in ("phone_overlay.jpg", "phone_stages.png"):
            with Image.open(out / picture) as image:
                assert image.width == expected.shape[1]


# -- the API ------------------------------------------------------------------------------------------

def test_cascade_takes_arrays_and_pil_images_and_says_what_else() -> None:
    """`cascade(np.zeros((0, 0, 3)))` raised Pillow's ValueError; a PIL image or a list an AttributeError."""
    from layercascade.runtime.cascade import Cascade

    image = gradient(90, 120)
    with Cascade.load() as cascade:
        expected = cascade(image).labels
        np.testing.assert_array_equal(cascade(Image.fromarray(image)).labels, expected)
        np.testing.assert_array_equal(cascade(Image.fromarray(image).convert("RGBA")).labels, expected)
        assert cascade(Image.fromarray(image).convert("L")).labels.shape == (90, 120)
        bad = {"the image is empty (0×0 pixels)": np.zeros((0, 0, 3), np.uint8),
               "the image is empty (4×0 pixels)": Image.new("RGB", (0, 4)),
               "or a PIL image, got list": image.tolist(),
               "or a PIL image, got NoneType": None,
               "expected an (H, W, 3) uint8 RGB image, got float32 (4, 4, 3)": np.zeros((4, 4, 3), np.float32),
               "expected an (H, W, 3) uint8 RGB image, got uint8 (4, 4)": np.zeros((4, 4), np.uint8),
               "cannot convert a PIL image of mode La to RGB": Image.new("La", (4, 4))}
        for message, value in bad.items():
            with pytest.raises(LCError) as error:
                cascade(value)
            assert message in str(error.value)


# -- properties ---------------------------------------------------------------------------------------

# EXIF orientation → the turn that shows the photo upright (the EXIF 2.3 standard's table).
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F")
FORMATS = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "JPEG": ".jpg", "WEBP": ".webp"}


def whole_image_rgb(img: Image.Image) -> np.ndarray:
    """The reference conversion: the whole image at once, as Pillow converts it (wide integers scaled
    from 16 bits, floats clipped)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.clip(np.rint(np.asarray(img).astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        return np.repeat(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray((img.convert("RGBA") if img.mode == "P" else img).convert("RGB"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), height=st.integers(1, 40), width=st.integers(1, 40),
       file_format=st.sampled_from(sorted(FORMATS)), orientation=st.integers(1, 8), seed=st.integers(0, 2**16),
       band=st.sampled_from([1, 7, 1 << 20]))
def test_the_image_loader_reads_every_mode_size_and_format(tmp_path: Path, mode: str, height: int, width: int,
                                                           file_format: str, orientation: int, seed: int,
                                                           band: int) -> None:
    """Any image Pillow writes reads back as the photo viewers show (EXIF applied), (H, W, 3) uint8, equal to
    converting the whole image at once, whatever the band size the loader converts by."""
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).convert(mode)
    if mode in ("I;16", "I", "F"):
        picture = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(
            {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]), mode if mode != "I;16" else None)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"{mode.replace(';', '')}-{height}x{width}-{orientation}{FORMATS[file_format]}"
    plain = path.with_name("plain" + path.suffix)  # the same pixels without EXIF: the stored order
    try:
        picture.save(path, format=file_format, exif=exif)
        picture.save(plain, format=file_format)
    except (OSError, KeyError, ValueError, TypeError):
        assume(False)  # a mode the format cannot hold
    with Image.open(path) as stored, Image.open(plain) as pixels:
        kept = stored.getexif().get(0x0112) == orientation  # BMP keeps no EXIF
        turned = pixels.transpose(TRANSPOSE[orientation]) if kept and orientation in TRANSPOSE else pixels
        expected = whole_image_rgb(turned)
    previous, images._BAND_PIXELS = images._BAND_PIXELS, band
    try:
        got = read_rgb(path)
    finally:
        images._BAND_PIXELS = previous
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


NAME_CHARACTERS = st.sampled_from(list("abAB_-. 0é"))
EXTENSIONS = sorted(IMAGE_EXTENSIONS | {".PNG", ".Jpg"})


@st.composite
def layouts(draw: st.DrawFn) -> dict:
    """Files in a root folder and two subfolders, names and extensions drawn to collide (case, _stages,
    -2 suffixes), an output folder among them or new, and the inputs named as a folder, a glob or files."""
    stems = st.one_of(st.sampled_from(["a", "A", "b"]),  # mostly a few names, so that they collide
                      st.lists(NAME_CHARACTERS, min_size=1, max_size=6).map("".join).filter(lambda n: n.strip(". ") == n))
    suffix = st.sampled_from(["", "_stages", "_overlay", "-2"])
    files = draw(st.lists(st.tuples(st.sampled_from(["", "sub", "sub/deep"]), stems, suffix,
                                    st.sampled_from(EXTENSIONS)), min_size=1, max_size=8))
    return {"files": [f"{folder}/{stem}{tail}{ext}".lstrip("/") for folder, stem, tail, ext in files],
            "out": draw(st.sampled_from(["out", "", "sub", "sub/deep", "sub/out"])),
            "inputs": draw(st.sampled_from(["root", "glob", "files", "sub"]))}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts())
@example(layout={"files": ["a.jpg", "sub/a.png", "sub/A_stages.png"], "out": "sub", "inputs": "root"})
@example(layout={"files": ["a.png", "sub/b.jpg"], "out": "sub/out", "inputs": "glob"})
def test_lc_run_never_overwrites_an_input_nor_loses_an_output(tmp_path_factory: pytest.TempPathFactory,
                                                            fake: type[FakeCascade], layout: dict) -> None:
    """Twice in a row, with random names and layouts: every file there before is unchanged, every image
    done has its three outputs (decodable, its size), nothing is half-written, the second run reads the
    same inputs as the first."""
    root = tmp_path_factory.mktemp("layout")
    for k, name in enumerate(layout["files"]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or k % 2:  # names that fold to one file on this file system overwrite: fine
            Image.fromarray(gradient(5 + k, 7)).save(path, format=Image.registered_extensions()[path.suffix.lower()])
    before = snapshot(root)
    out = root / layout["out"]
    inputs = {"root": [root], "glob": [f"{root}/**/*"], "files": [root / n for n in dict.fromkeys(layout["files"])],
              "sub": [root / "sub"] if (root / "sub").is_dir() else [root]}[layout["inputs"]]
    done = []
    for attempt in range(2):
        code = run_lc([*inputs, "-o", out, "--quiet"])
        if code == 1 and not (out / "summary.json").exists():  # refused: an input inside OUT, nothing written
            assert snapshot(root) == before
            return
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        done.append(sorted(r["input"] for r in summary["results"]))
        for record in summary["results"]:
            labels, overlay, stages = (out / name for name in record["outputs"])
            with Image.open(labels) as picture:
                assert picture.size == tuple(reversed(record["size"])) and picture.mode == "P"
            with Image.open(overlay) as picture, Image.open(stages) as shaded:
                assert picture.size == tuple(reversed(record["size"])) and shaded.width == picture.width
        assert leftovers(out) == [] or all(not n.endswith(".tmp" + Path(n).suffix) for n in leftovers(out))
        assert len({n.casefold() for r in summary["results"] for n in r["outputs"]}) == 3 * summary["images"]
        after = snapshot(root)
        assert all(after[name] == data for name, data in before.items()), "a file there before was changed"
    assert done[0] == done[1]
