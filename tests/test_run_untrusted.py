"""lc-run treats its output folder and its inputs as untrusted: an output file the file system refuses (a
name too long, a folder in its way) fails that image only; a folder that takes no files is one line before
the model loads; a summary.json copied from elsewhere claims only files whose content it recorded; a
summary too big, too deep or a link, and a summary that cannot be written, are one line. Each test
reproduces an attack on the code before these guarantees (docs/run.md, "Guarantees")."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from layercascade.cli import run
from layercascade.errors import LCError
from layercascade.runtime import segment
from layercascade.runtime.segment import SUMMARY_MAX_BYTES, earlier_outputs
from layercascade.tests.fake_cascade import FakeCascade, run_lc

PICTURES = ("", "_overlay.jpg", "_stages.png")


def picture(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 16, 3), np.uint8)).save(path)
    return path


def outputs_of(*stems: str) -> list[str]:
    return [stem + (variant or ".png") for stem in stems for variant in PICTURES]


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


class ReadOnlyFolder:
    """``folder`` as on a read-only file system while ``on``: creating, replacing and removing files in it
    raise ``code`` (tests run as root, whom a chmod does not stop)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
        self.folder, self.code, self.on = folder, code, True
        real_open, real_replace, real_unlink = builtins.open, os.replace, os.unlink

        def guarded_open(file, mode="r", *args, **kwargs):
            if any(flag in mode for flag in "wxa+"):
                self.check(file)
            return real_open(file, mode, *args, **kwargs)

        def guarded_replace(source, target, **kwargs):
            self.check(target)
            return real_replace(source, target, **kwargs)

        def guarded_unlink(path, **kwargs):
            self.check(path)
            return real_unlink(path, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)  # pathlib's writers
        monkeypatch.setattr(os, "replace", guarded_replace)
        monkeypatch.setattr(os, "unlink", guarded_unlink)

    def check(self, path: object) -> None:
        if self.on and isinstance(path, (str, os.PathLike)) and Path(path).parent == self.folder:
            raise OSError(self.code, os.strerror(self.code), str(path))


# -- a per-image output failure fails that image only -------------------------------------------------

def test_an_output_name_too_long_fails_that_image_only(tmp_path: Path, fake: type[FakeCascade],
                                                       capsys: pytest.CaptureFixture) -> None:
    """A valid input name whose output name is over NAME_MAX aborted lc-run with a traceback, no summary.json
    and the images after it never done (and a 240-byte stem, whose outputs fit, failed for its temporary names)."""
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("the test's names are sized for a 255-byte NAME_MAX")
    fits, too_long = "f" * 240, "t" * 250  # "_overlay.jpg" makes 252 and 262 bytes
    inputs = [picture(tmp_path / "in" / f"{stem}.png", k) for k, stem in enumerate(("a", fits, too_long, "z"))]
    out = tmp_path / "out"
    assert run_lc([*inputs, "-o", out, "--quiet"]) == 1
    reason = (f"{out / (too_long + '_overlay.jpg')}: cannot write (file name too long: 262 bytes, over the 255 this "
              "file system takes; shorten the input's name)")
    assert capsys.readouterr().err == f"warning: {inputs[2]}: {reason}\n"
    summary = summary_of(out)
    assert summary["failed"] == [{"input": str(inputs[2]), "error": reason}] and summary["stopped"] is None
    assert [record["input"] for record in summary["results"]] == [str(inputs[k]) for k in (0, 1, 3)]
    assert names(out) == sorted([*outputs_of("a", fits, "z"), "summary.json"])  # nothing of the failed image


def test_a_folder_at_an_output_name_fails_that_image_only(tmp_path: Path, fake: type[FakeCascade],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A folder made at an output's name during the run (after the names were chosen) stopped the run."""
    inputs = [picture(tmp_path / "in" / f"{stem}.png", k) for k, stem in enumerate("abc")]
    out = tmp_path / "out"
    call = FakeCascade.__call__

    def a_folder_appears(self: FakeCascade, image: np.ndarray, rho: float | None = None, **policy):
        if len(self.rhos) == 1:  # while b is segmented
            (out / "b_stages.png").mkdir()
            (out / "b_stages.png" / "notes.txt").write_text("the user's")
        return call(self, image, rho, **policy)

    monkeypatch.setattr(FakeCascade, "__call__", a_folder_appears)
    assert run_lc([*inputs, "-o", out, "--quiet"]) == 1
    reason = f"{out / 'b_stages.png'}: cannot write (Is a directory)"
    assert capsys.readouterr().err == f"warning: {inputs[1]}: {reason}\n"
    summary = summary_of(out)
    assert summary["failed"] == [{"input": str(inputs[1]), "error": reason}] and summary["images"] == 2
    assert names(out) == sorted([*outputs_of("a", "c"), "b_stages.png", "summary.json"])
    assert (out / "b_stages.png" / "notes.txt").read_text() == "the user's"


# -- an output folder that takes no files ---------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes in a read-only folder")
def test_a_read_only_output_folder_is_one_line(tmp_path: Path, fake: type[FakeCascade],
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert run_lc([picture(tmp_path / "a.png"), "-o", out]) == 1
    finally:
        out.chmod(0o755)
    assert capsys.readouterr().err == (f"error: {out}: cannot write in the output folder (Permission denied); "
                                       "pass another -o\n")
    assert fake.instances == [] and names(out) == []


def test_a_read_only_file_system_is_one_line_before_the_model_loads(tmp_path: Path, fake: type[FakeCascade],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """A read-only output folder gave a traceback: removing the temporary file raised a second error."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    inputs = [picture(tmp_path / "a.png")]
    ReadOnlyFolder(monkeypatch, out, errno.EROFS)
    assert run_lc([*inputs, "-o", out]) == 1
    assert capsys.readouterr().err == (f"error: {out}: cannot write in the output folder (Read-only file system); "
                                       "pass another -o\n")
    assert fake.instances == [] and names(out) == ["notes.txt"]


def test_a_folder_that_stops_taking_files_mid_run_stops_it_in_one_line(tmp_path: Path, fake: type[FakeCascade],
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """EACCES from the folder (not one file): the run stops; the summary cannot be written either: one line."""
    inputs = [picture(tmp_path / "in" / f"{stem}.png", k) for k, stem in enumerate("abc")]
    out = tmp_path / "out"
    out.mkdir()
    folder = ReadOnlyFolder(monkeypatch, out, errno.EACCES)
    folder.on = False
    call = FakeCascade.__call__

    def made_read_only(self: FakeCascade, image: np.ndarray, rho: float | None = None, **policy):
        folder.on = len(self.rhos) == 1  # from b on
        return call(self, image, rho, **policy)

    monkeypatch.setattr(FakeCascade, "__call__", made_read_only)
    assert run_lc([*inputs, "-o", out, "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"error: {out / 'summary.json'}: cannot write (Permission denied): the 1 image(s) done are not listed in a "
        f"summary; the run had stopped: {out / 'b.png'}: cannot write (Permission denied)\n")
    assert names(out) == outputs_of("a")


def test_a_summary_that_cannot_be_written_is_one_line(tmp_path: Path, fake: type[FakeCascade],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    write_new = segment.write_new

    def disk_full_at_the_summary(path: Path, data: bytes) -> None:
        if path.suffix == ".json":
            path.write_bytes(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        write_new(path, data)

    monkeypatch.setattr(segment, "write_new", disk_full_at_the_summary)
    out = tmp_path / "out"
    assert run_lc([picture(tmp_path / "a.png"), "-o", out]) == 1
    assert capsys.readouterr().err.endswith(
        f"error: {out / 'summary.json'}: cannot write (No space left on device): the 1 image(s) done are not listed "
        "in a summary\n")
    assert names(out) == outputs_of("a")  # no half-written summary


def test_a_summary_too_big_to_read_back_is_a_warning(tmp_path: Path, fake: type[FakeCascade],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """A run writes its summary whatever its size, and says when a later run would refuse it."""
    monkeypatch.setattr(run, "SUMMARY_MAX_BYTES", 1000)
    out = tmp_path / "out"
    assert run_lc([picture(tmp_path / "a.png"), picture(tmp_path / "b.png"), "-o", out, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {out / 'summary.json'} is over the ") and err.count("\n") == 1
    assert "a later run into this folder is refused; give each ~100,000 images their own -o" in err
    assert summary_of(out)["images"] == 2


# -- summary.json claims only files of the content it recorded --------------------------------------------

@pytest.mark.parametrize("hashes", ["of other files", "none (an older lc-run's)"])
def test_a_summary_copied_from_elsewhere_claims_none_of_the_users_files(tmp_path: Path, fake: type[FakeCascade],
                                                                        hashes: str) -> None:
    """A summary.json copied into a folder made lc-run replace the user's files it named."""
    inputs = [picture(tmp_path / "in" / f"{stem}.jpg", k) for k, stem in enumerate("xy")]
    assert run_lc([*inputs, "-o", tmp_path / "elsewhere", "--quiet"]) == 0
    summary = summary_of(tmp_path / "elsewhere")
    summary["earlier_outputs"] = {"z.png": summary["results"][0]["sha256"]["x.png"]}
    if hashes.startswith("none"):
        for record in summary["results"]:
            del record["sha256"]
        summary["earlier_outputs"] = ["z.png"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary))
    users = {name: f"the user's {name}".encode() for name in ("x.png", "y_overlay.jpg", "z.png")}
    for name, data in users.items():
        (out / name).write_bytes(data)
    assert run_lc([*inputs, "-o", out, "--quiet"]) == 0
    assert {name: (out / name).read_bytes() for name in users} == users
    assert [record["outputs"] for record in summary_of(out)["results"]] == [outputs_of("x-2"), outputs_of("y-2")]


def test_earlier_outputs_are_replaced_while_their_content_is_what_was_written(tmp_path: Path,
                                                                              fake: type[FakeCascade]) -> None:
    """Reruns keep their names, in the folder and in a copy of it; a file the user changed since is kept."""
    inputs = [picture(tmp_path / "in" / f"{stem}.jpg", k) for k, stem in enumerate("xy")]
    out = tmp_path / "out"
    assert run_lc([*inputs, "-o", out, "--quiet"]) == 0
    shutil.copytree(out, tmp_path / "copy")
    (out / "y_stages.png").write_bytes(b"edited by the user")
    assert run_lc([*inputs, "-o", out, "--quiet"]) == 0
    assert (out / "y_stages.png").read_bytes() == b"edited by the user"
    summary = summary_of(out)
    assert [record["outputs"] for record in summary["results"]] == [outputs_of("x"), outputs_of("y-2")]
    # y's other two files are still what a run wrote: claimed, so a later run may replace them.
    assert sorted(summary["earlier_outputs"]) == ["y.png", "y_overlay.jpg"]
    assert run_lc([*inputs, "-o", tmp_path / "copy", "--quiet"]) == 0
    assert names(tmp_path / "copy") == sorted([*outputs_of("x", "y"), "summary.json"])


BAD_SUMMARIES = {
    "too big": (lambda path: path.write_bytes(b"") or os.truncate(path, SUMMARY_MAX_BYTES + 1),  # sparse
                f"({SUMMARY_MAX_BYTES + 1:,} bytes, over the 64 MiB layercascade reads)"),
    "too deep": (lambda path: path.write_text("[" * 100_000 + "]" * 100_000), "(nested too deep)"),
    "a link": (lambda path: path.symlink_to(path.parent.parent / "elsewhere" / "summary.json"),
               "(a link or not a regular file)"),
    "a FIFO": (lambda path: os.mkfifo(path), "(a link or not a regular file)"),
}


@pytest.mark.parametrize("case", BAD_SUMMARIES)
def test_a_summary_too_big_too_deep_or_not_a_file_is_one_line(tmp_path: Path, fake: type[FakeCascade],
                                                              capsys: pytest.CaptureFixture, case: str) -> None:
    """A deep one was a RecursionError; a link was followed (to a summary elsewhere, naming files here), a
    FIFO waited on."""
    image = picture(tmp_path / "in" / "x.jpg")
    assert run_lc([image, "-o", tmp_path / "elsewhere", "--quiet"]) == 0
    out = tmp_path / "out"
    out.mkdir()
    write, reason = BAD_SUMMARIES[case]
    write(out / "summary.json")
    assert run_lc([image, "-o", out]) == 1
    assert capsys.readouterr().err == (f"error: {out / 'summary.json'}: exists and is not an lc-run summary, which "
                                       f"this run would replace {reason}: move it or pass another -o\n")
    assert len(fake.instances) == 1 and names(out) == ["summary.json"]  # refused before the model loads


# -- property: whatever summary.json holds -------------------------------------------------------------------

CONTENT = {"a.png": b"written by lc-run", "b.png": b"the user's own"}
DIGEST = {name: hashlib.sha256(data).hexdigest() for name, data in CONTENT.items()}


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy, odds: int = 5) -> st.SearchStrategy:
    """``usual``, and one time in ``odds`` ``odd``."""
    return st.integers(1, odds).flatmap(lambda k: odd if k == 1 else usual)


# Names of the folder's files (mostly: so that claims happen), else names aimed beside the folder, at links,
# folders and FIFOs, absolute ones, names no file has.
NAMES = mostly(st.sampled_from(sorted(CONTENT)), st.sampled_from([
    "link.png", "dir.png", "fifo.png", "missing.png", "summary.json", "../outside.png", "dir.png/../a.png", "./a.png",
    "<absolute>", "/etc/hostname", ".", "..", "", "a.png\x00", "a.png/", "\udc80.png"]) | st.text(max_size=6), odds=8)
DIGESTS = mostly(st.sampled_from([*DIGEST.values(), "0" * 64]), st.one_of(
    st.just(DIGEST["a.png"].upper()), st.text(max_size=4), st.integers(), st.none(),
    st.lists(st.just(DIGEST["a.png"]))))
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
                        | NAMES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                            st.sampled_from(["results", "outputs", "sha256", "earlier_outputs"]) | NAMES, inner,
                            max_size=3), max_leaves=8)
HASHES = mostly(st.lists(st.tuples(NAMES, DIGESTS), min_size=1, max_size=3).map(dict), ANY_JSON)
RECORD = mostly(st.fixed_dictionaries({"outputs": st.lists(NAMES, max_size=3)}, optional={"sha256": HASHES}),
                ANY_JSON)
# Mostly summaries of lc-run's shape with wrong parts drawn in, now and then any JSON at all.
SUMMARIES = mostly(st.fixed_dictionaries(
    {"results": mostly(st.lists(RECORD, min_size=1, max_size=3), ANY_JSON)},
    optional={"earlier_outputs": mostly(HASHES, st.lists(NAMES, max_size=3))}), ANY_JSON)


def recorded_pairs(summary: object) -> set[tuple[str, str]]:
    """Every (name, digest) the summary's hash maps hold, read without trusting its shape."""
    maps = [summary.get("earlier_outputs")] if isinstance(summary, dict) else []
    if isinstance(summary, dict) and isinstance(summary.get("results"), list):
        maps += [record.get("sha256") for record in summary["results"] if isinstance(record, dict)]
    return {(name, digest) for found in maps if isinstance(found, dict) for name, digest in found.items()
            if isinstance(digest, str)}


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(summary=SUMMARIES, depth=st.sampled_from([0] * 6 + [2, 100_000]))
@example(summary={"results": [{"outputs": ["a.png"], "sha256": {"a.png": DIGEST["a.png"], "b.png": "0" * 64}}],
                  "earlier_outputs": {"../outside.png": DIGEST["a.png"], "link.png": DIGEST["a.png"]}}, depth=0)
@example(summary={"results": [], "earlier_outputs": {"<absolute>": DIGEST["a.png"]}}, depth=0)
def test_a_summary_claims_only_files_in_the_folder_of_the_content_it_records(tmp_path: Path, summary: object,
                                                                          depth: int) -> None:
    """Whatever summary.json holds (random JSON, wrong types, names with '/', '..', absolute, NUL, deep
    nesting): earlier_outputs is one LCError line naming it, or claims exactly the regular files of the folder
    whose content has a sha256 the summary records for that name, and reads nothing outside the folder."""
    out = tmp_path / "out"
    if not out.exists():  # once per test: the examples only read the folder (checked below)
        out.mkdir()
        for name, data in CONTENT.items():
            (out / name).write_bytes(data)
        (tmp_path / "outside.png").write_bytes(CONTENT["a.png"])
        (out / "link.png").symlink_to(out / "a.png")
        (out / "dir.png").mkdir()
        os.mkfifo(out / "fifo.png")
    text = "[" * depth + json.dumps(summary).replace("<absolute>", str(out / "a.png")) + "]" * depth
    (out / "summary.json").write_text(text, errors="surrogatepass")
    try:
        claimed = earlier_outputs(out)
    except LCError as error:
        assert str(error).startswith(f"{out / 'summary.json'}: ") and "\n" not in str(error)
        claimed = None
    assert {name: (out / name).read_bytes() for name in CONTENT} == CONTENT
    assert (out / "link.png").is_symlink() and (out / "dir.png").is_dir()
    if claimed is None:
        return
    assert depth == 0
    expected = {name: digest for name, digest in recorded_pairs(summary) if DIGEST.get(name) == digest}
    assert claimed == expected  # so only a.png or b.png, and only at their recorded content
