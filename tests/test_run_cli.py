"""lc-run with a fake cascade: input expansion, output files, summary, failures; and the pictures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layercascade.cli import run
from layercascade.manifest import sha256_file, write_atomic
from layercascade.model.data import VOC_PALETTE, read_rgb
from layercascade.runtime.inputs import SAMPLES, unique_stems
from layercascade.runtime.sources import expand_inputs
from layercascade.runtime.visualize import STAGE_COLOURS, label_image, overlay, stage_picture
from layercascade.tests.fake_cascade import FakeCascade, fake_labels, leftovers, run_lc


def noise(shape: tuple[int, ...], seed: int = 0, high: int = 256, dtype: type = np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def write_formats(folder: Path) -> dict[str, tuple[int, int]]:
    """One image per format and mode, each of an odd size; returns {file name: (H, W)}."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "rgb.png": Image.fromarray(noise((33, 47, 3), 1)),
        "rgba.png": Image.fromarray(noise((17, 29, 4), 2)),
        "gray.png": Image.fromarray(noise((40, 23), 3)),
        "deep.png": Image.fromarray(noise((19, 31), 4, high=65536, dtype=np.uint16)),
        "bitmap.bmp": Image.fromarray(noise((41, 25, 3), 5)),
        "scan.tiff": Image.fromarray(noise((30, 30, 3), 6)),
        "photo.jpg": Image.fromarray(noise((37, 51, 3), 7)),
    }
    assert images["deep.png"].mode == "I;16" and images["rgba.png"].mode == "RGBA"
    for name, image in images.items():
        image.save(folder / name)
    return {name: (image.height, image.width) for name, image in images.items()}


def test_outputs_for_every_format(tmp_path: Path, fake: type[FakeCascade], capsys: pytest.CaptureFixture) -> None:
    sizes = write_formats(tmp_path / "in")
    out = tmp_path / "out"
    assert run_lc([*(tmp_path / "in" / name for name in sizes), "-o", out, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    for name, (height, width) in sizes.items():
        stem = Path(name).stem
        with Image.open(out / f"{stem}.png") as labels:
            assert labels.mode == "P" and labels.size == (width, height)
            expected = fake_labels(read_rgb(tmp_path / "in" / name))
            np.testing.assert_array_equal(np.asarray(labels), expected)
        with Image.open(out / f"{stem}_overlay.jpg") as picture:
            assert picture.format == "JPEG" and picture.mode == "RGB" and picture.size == (width, height)
        with Image.open(out / f"{stem}_stages.png") as picture:
            assert picture.mode == "RGB" and picture.width == width and picture.height > height
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(sizes) and summary["failed"] == []
    assert [r["size"] for r in summary["results"]] == [list(s) for s in sizes.values()]
    assert leftovers(out) == []


def test_summary_content(tmp_path: Path, fake: type[FakeCascade]) -> None:
    Image.fromarray(noise((16, 16, 3), 1)).save(tmp_path / "small.png")
    Image.fromarray(np.full((24, 40, 3), 250, np.uint8)).save(tmp_path / "bright.png")  # all stage 3
    out = tmp_path / "out"
    assert run_lc([tmp_path / "small.png", tmp_path / "bright.png", "-o", out, "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"images", "videos", "frames", "dropped", "decode_errors", "failed", "interrupted",
                            "stopped", "mean_ms", "stage_fractions", "backend", "precision", "model", "rho",
                            "rho_class", "outputs", "results", "earlier_outputs"}
    assert summary["videos"] == summary["frames"] == summary["dropped"] == summary["decode_errors"] == 0
    assert summary["interrupted"] is False and summary["stopped"] is None and summary["earlier_outputs"] == {}
    assert summary["backend"] == "fake" and summary["precision"] == "fp32"
    assert summary["model"] == "demo" and summary["rho"] == 0.985 and summary["rho_class"] == {}
    assert summary["mean_ms"] == 2.5 and fake.instances[0].rhos == [None, None]
    small, bright = summary["results"]
    names = ["small.png", "small_overlay.jpg", "small_stages.png"]
    assert small == {"input": str(tmp_path / "small.png"), "size": [16, 16],
                     "stage_fractions": small["stage_fractions"], "ms": 2.5, "outputs": names,
                     "sha256": {name: sha256_file(out / name) for name in names}}
    assert sum(small["stage_fractions"]) == pytest.approx(1.0) and bright["stage_fractions"] == [0, 0, 1]
    # Weighted by image pixels: 256 of the small image's, 960 of the bright one's.
    expected = (np.array(small["stage_fractions"]) * 256 + np.array([0, 0, 1]) * 960) / 1216
    np.testing.assert_allclose(summary["stage_fractions"], expected, atol=1e-6)


def test_directory_glob_and_duplicates(tmp_path: Path, fake: type[FakeCascade]) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "sub/c.png"):
        Image.fromarray(noise((20, 20, 3))).save(folder / name, format="PNG" if name.endswith("png") else "JPEG")
    (folder / "notes.txt").write_text("not an image")
    assert expand_inputs([str(folder)]) == [folder / "a.JPG", folder / "b.png"]
    assert expand_inputs([str(folder / "**" / "*.png")]) == [folder / "b.png", folder / "sub" / "c.png"]
    # Order kept, the same file twice (also spelled differently) read once.
    assert expand_inputs([str(folder / "b.png"), str(folder), f"{folder}/sub/../b.png"]) == [
        folder / "b.png", folder / "a.JPG"]

    out = tmp_path / "out"
    assert run_lc([folder, str(folder / "*" / "*.png"), "-o", out, "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "a_stages.png", "b.png", "b_stages.png",
                                                         "c.png", "c_stages.png"]
    twin = tmp_path / "other" / "b.png"
    twin.parent.mkdir()
    Image.fromarray(noise((12, 14, 3))).save(twin)
    assert run_lc([folder / "b.png", twin, "-o", out, "--quiet"]) == 0
    with Image.open(out / "b-2.png") as labels:
        assert labels.size == (14, 12)
    outputs = [r["outputs"] for r in json.loads((out / "summary.json").read_text())["results"]]
    assert outputs[1] == ["b-2.png", "b-2_overlay.jpg", "b-2_stages.png"]


def test_output_stems_never_collide() -> None:
    suffixes = (".png", "_overlay.jpg", "_stages.png")
    stems = ["a", "a", "A", "a_stages", "a-2", "b_overlay", "b"]
    assert unique_stems([(stem, suffixes) for stem in stems]) == ["a", "a-2", "A-3", "a_stages-2", "a-2-2",
                                                                  "b_overlay", "b"]
    # Files already in the output folder that no run wrote are never replaced.
    assert unique_stems([("c", suffixes), ("d", suffixes)], in_use=["C.png", "d_stages.png"]) == ["c-2", "d-2"]
    # An image's and a video's outputs differ, so both keep the stem; two videos do not.
    videos = ("_overlay.mp4", "_labels.mkv", "_frames.jsonl")
    assert unique_stems([("x", suffixes), ("x", videos), ("X", videos)], in_use=["y_frames.jsonl"]) == ["x", "x", "X-2"]
    assert unique_stems([("y", videos)], in_use=["y_frames.jsonl"]) == ["y-2"]


def test_corrupt_image_is_skipped(tmp_path: Path, fake: type[FakeCascade], capsys: pytest.CaptureFixture) -> None:
    write_formats(tmp_path)
    (tmp_path / "garbage.png").write_bytes(b"this is not an image")
    whole = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    inputs = [tmp_path / n for n in ("rgb.png", "garbage.png", "gray.png", "truncated.png", "photo.jpg")]
    assert run_lc([*inputs, "-o", out, "--quiet"]) == 1
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"warning: {tmp_path / 'garbage.png'}: cannot read image")
    assert warnings[1].startswith(f"warning: {tmp_path / 'truncated.png'}: ")
    assert {p.stem.split("_")[0] for p in out.iterdir()} == {"rgb", "gray", "photo", "summary"}
    assert leftovers(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3
    assert [f["input"] for f in summary["failed"]] == [str(inputs[1]), str(inputs[3])]
    assert summary["failed"][0]["error"].startswith("cannot read image")


def test_strict_stops_at_first_failure(tmp_path: Path, fake: type[FakeCascade], capsys: pytest.CaptureFixture) -> None:
    write_formats(tmp_path)
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    assert run_lc([tmp_path / "rgb.png", tmp_path / "garbage.png", tmp_path / "gray.png", "-o", out,
                   "--quiet", "--strict"]) == 1
    assert "garbage.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["rgb.png", "rgb_overlay.jpg", "rgb_stages.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and len(summary["failed"]) == 1


@pytest.mark.parametrize("item, message", [("nope.png", "no such file or folder"),
                                           ("*.nothing", "pattern matches no image or video files"),
                                           ("empty", "folder has no image or video files")])
def test_missing_input_is_one_line_error(tmp_path: Path, fake: type[FakeCascade], capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch, item: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert run_lc([item, "-o", "out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {item}: {message}") and err.count("\n") == 1
    assert fake.instances == []  # inputs are checked before the model loads
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(tmp_path: Path, fake: type[FakeCascade], capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "taken").write_text("")
    Image.fromarray(noise((9, 9, 3))).save(tmp_path / "a.png")
    assert run_lc([tmp_path / "a.png", "-o", tmp_path / "taken"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'taken'}: exists and is not a folder")


def test_json_and_options_reach_the_cascade(tmp_path: Path, fake: type[FakeCascade],
                                            capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(noise((21, 13, 3))).save(tmp_path / "a.png")
    Image.fromarray(noise((8, 8, 3))).save(tmp_path / "b.png")
    out = tmp_path / "out"
    # Options between the inputs: intermixed parsing keeps both images.
    assert run_lc([tmp_path / "a.png", "-o", out, "--engine", "models/lc", "--backend", "ort", "--device", "cuda",
                   "--rho", "0.9", "--rho-class", "person=1,car=0.9", "--json", tmp_path / "b.png"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --json turns the progress bar off
    summary = json.loads(captured.out)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["rho"] == 0.9 and summary["model"] == "models/lc" and summary["images"] == 2
    assert summary["rho_class"] == {"car": 0.9, "person": 1.0}  # by name, in class order
    assert fake.instances[0].load_args == ("models/lc", "ort", "cuda") and fake.instances[0].rhos == [(0.9, 0.9), (0.9, 0.9)]
    assert fake.instances[0].rho_classes == [{15: 1.0, 7: 0.9}] * 2  # checked once, by class index
    assert fake.instances[0].closed  # lc-run releases the backend when done


def test_progress_bar_and_closing_line(tmp_path: Path, fake: type[FakeCascade], capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(noise((10, 10, 3))).save(tmp_path / "a.png")
    assert run_lc([tmp_path / "a.png", "-o", tmp_path / "out"]) == 0
    captured = capsys.readouterr()
    assert "lc-run" in captured.err and "1/1" in captured.err
    assert captured.out.startswith(f"1 image(s) -> {tmp_path / 'out'}") and "stages 1/2/3" in captured.out


def test_default_inputs_are_the_bundled_samples(tmp_path: Path, fake: type[FakeCascade]) -> None:
    samples = sorted(SAMPLES.iterdir())
    assert len(samples) == 4 and sum(p.stat().st_size for p in samples) < 600_000
    assert len({p.suffix for p in samples}) == 4
    out = tmp_path / "out"
    assert run_lc(["-o", out, "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and fake.instances[0].load_args == (None, "auto", "cpu")


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "abc"])
def test_rho_is_validated(value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main(["-o", "out", "--rho", value])
    assert exit_info.value.code == 2
    assert run.build_parser().parse_args(["-o", "out", "--rho", "1"]).rho == (1.0, 1.0)


def test_help_explains_every_option(capsys: pytest.CaptureFixture) -> None:
    parser = run.build_parser()
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and len(action.help) > 10, f"{action.dest} has no help"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--engine", "--backend", "--rho", "--device", "--output", "--json", "--strict", "--quiet", "INPUT"):
        assert option in text


def test_write_atomic_leaves_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "picture.png"
    write_atomic(target, lambda path: path.write_text("old"))

    def broken(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, broken)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]
    # The temporary name keeps the extension, so Pillow picks the format from it.
    write_atomic(target, Image.new("RGB", (3, 2)).save)
    with Image.open(target) as image:
        assert image.format == "PNG" and image.size == (3, 2)


def test_label_image_is_a_palette_png() -> None:
    labels = np.array([[0, 1, 2], [15, 20, 255]], np.uint8)
    picture = label_image(labels, VOC_PALETTE)
    assert picture.mode == "P" and picture.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(picture), labels)
    rgb = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(rgb[0], VOC_PALETTE[[0, 1, 2]])
    assert tuple(rgb[1, 2]) == (255, 255, 255)  # void


def test_overlay_blends_and_keeps_void() -> None:
    image = noise((11, 7, 3))
    labels = np.full((11, 7), 15, np.uint8)
    labels[0] = 255
    blended = overlay(image, labels, VOC_PALETTE, alpha=0.5)
    assert blended.mode == "RGB" and blended.size == (7, 11)
    result = np.asarray(blended).astype(int)
    np.testing.assert_array_equal(result[0], image[0])
    expected = np.rint((image[1:].astype(float) + VOC_PALETTE[15]) / 2)
    assert np.abs(result[1:] - expected).max() <= 1
    np.testing.assert_array_equal(np.asarray(overlay(image, labels, VOC_PALETTE, alpha=0.0)), image)
    with pytest.raises(ValueError):
        overlay(image, labels[:5], VOC_PALETTE)


@pytest.mark.parametrize("height, width", [(96, 240), (45, 37)])
def test_stage_picture_colours_each_stage(height: int, width: int) -> None:
    image = np.full((height, width, 3), 200, np.uint8)
    stage_map = np.ones((-(-height // 8), -(-width // 8)), np.uint8)
    columns = stage_map.shape[1]
    stage_map[:, columns // 3: 2 * columns // 3] = 2
    stage_map[:, 2 * columns // 3:] = 3
    picture = stage_picture(image, stage_map)
    assert picture.mode == "RGB" and picture.width == width and picture.height > height
    pixels = np.asarray(picture)
    # Sample the middle of each band (nearest upsampling: map column c covers image columns ~8c..8c+7).
    colours = [tuple(pixels[height // 2, int((i + 0.5) * width / 3)]) for i in range(3)]
    assert len(set(colours)) == 3
    assert colours[0][0] == colours[0][1] == colours[0][2]  # stage 1 is grey
    legend = pixels[height:]
    for colour in STAGE_COLOURS:  # every stage's swatch is in the legend
        assert (legend == colour).all(axis=2).any()


def test_the_image_policy_reaches_the_cascade(tmp_path: Path, fake: type[FakeCascade], capsys) -> None:
    """--resize, --tile and --overlap are Cascade's resize, tile and overlap; --tile alone means native resolution
    with the model's own tile, and --tile with --resize fit is one line before anything runs."""
    Image.fromarray(noise((40, 50, 3), 4)).save(tmp_path / "a.png")
    cases = {(): (None, None, None), ("--resize", "stretch"): ("stretch", None, None),
             ("--tile",): ("none", None, None), ("--tile", "96x128", "--overlap", "16"): ("none", (96, 128), 16)}
    for flags, policy in cases.items():
        assert run_lc([tmp_path / "a.png", "-o", tmp_path / "out", "--quiet", *flags]) == 0
        assert fake.instances[-1].policies == [policy], flags
    assert run_lc([tmp_path / "a.png", "-o", tmp_path / "out2", "--resize", "fit", "--tile", "96x96"]) == 1
    assert "--tile runs images at their own resolution: it goes with --resize none, not fit" in capsys.readouterr().err
