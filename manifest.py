"""``lc.json``: the manifest of an exported model directory, and writing files atomically.

Shared by the exporter and lc-calibrate (write model dirs), lc-build (engine dirs) and every
runtime backend (reads and verifies them); numpy-free and torch-free. What ``lc.json`` holds:
docs/export.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from layercascade.errors import fail

FORMAT = "layercascade.model"
# 2: ``default_rho`` is [ρ₂, ρ₃] (1: one number for both stages; still read, see check_cascade_fields).
VERSION = 2
MANIFEST = "lc.json"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load ``model_dir/lc.json``, check its version and (with ``verify``) every file's sha256."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not model_dir.is_dir():
        fail(f"{model_dir}: no such model directory (create one with lc-export CHECKPOINT -o DIR)")
    if not path.is_file():
        fail(f"{path}: missing; {model_dir} is not an exported layercascade model (run lc-export)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        fail(f"{path}: not valid JSON ({error}); re-export the model")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fail(f"{path}: not a layercascade model manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        fail(f"{path}: manifest format version {version!r} is newer than this layercascade reads ({VERSION}); "
             "upgrade layercascade")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        fail(f"{path}: has no 'files' (the sha256 of each file), as written by layercascade before 0.1; "
             "re-export the model (lc-export) so its files can be verified")
    for name, digest in files.items():
        file = model_dir / name
        if not file.is_file():
            fail(f"{file}: missing from the model directory (listed in {MANIFEST}); re-export the model")
        if verify and sha256_file(file) != digest:
            fail(f"{file}: sha256 does not match {MANIFEST}; the file was changed or damaged, re-export the model")
    return manifest


def read_cascade_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The verified ``lc.json`` of a cascade model dir (not a dense export), its fields checked
    (:func:`check_cascade_fields`)."""
    manifest = read_manifest(model_dir)
    if manifest.get("kind") != "cascade":
        fail(f"{model_dir}: holds a {manifest.get('kind')!r} model, not a cascade; export without --dense")
    stages = manifest.get("stages")
    if not (isinstance(stages, list) and len(stages) == 3 and
            all(isinstance(s, dict) and s.get("file") in manifest["files"] for s in stages)):
        fail(f"{Path(model_dir) / MANIFEST}: stages must list three stage graphs, each a file in 'files'; "
             "re-export the model")
    return check_cascade_fields(manifest, Path(model_dir) / MANIFEST)


def check_cascade_fields(manifest: dict[str, Any], source: str | os.PathLike,
                         advice: str = "fix it or re-export the model") -> dict[str, Any]:
    """``manifest`` if the fields a cascade runs by hold values it can run with, else one line naming
    ``source`` (the file they came from) and the field: ``default_rho`` [ρ₂, ρ₃] in (0, 1] (a version-1
    manifest's one number, meaning both, becomes that pair), ``input_size`` two positive integers,
    ``classes`` names (at most 255: 255 marks void pixels) and ``palette`` one RGB colour per class.
    The stage graphs themselves are checked against these by the backend that loads them
    (``export.graph.check_stage_graphs``)."""
    def wrong(field: str, what: str) -> NoReturn:
        fail(f"{source}: {field} {json.dumps(manifest.get(field))[:80]} is not {what}; {advice}")

    rho = manifest.get("default_rho")
    if _threshold(rho):
        manifest["default_rho"] = [rho, rho]
    elif not (isinstance(rho, list) and len(rho) == 2 and all(_threshold(r) for r in rho)):
        wrong("default_rho", "[rho2, rho3] (two numbers in (0, 1])")
    size = manifest.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(_positive_int(n) for n in size)):
        wrong("input_size", "[height, width] (two positive integers)")
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and 0 < len(classes) < 256 and all(isinstance(c, str) for c in classes)):
        wrong("classes", "a list of 1 to 255 class names")
    palette = manifest.get("palette")
    if not (isinstance(palette, list) and all(isinstance(c, list) and len(c) == 3 and
                                              all(_int_in(v, 0, 255) for v in c) for c in palette)):
        wrong("palette", "a list of [r, g, b] colours (integers 0..255)")
    if len(palette) != len(classes):
        fail(f"{source}: palette has {len(palette)} colours for {len(classes)} classes; {advice}")
    return manifest


def _threshold(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _positive_int(value: object) -> bool:
    return _int_in(value, 1, 1 << 30)


def model_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the sha256 of every file of the model dir: names one exported model."""
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()


def temporary_path(path: Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its extension (writers pick formats by it).

    A fresh name instead of mkstemp: the writer creates the file itself, so it gets the usual
    permissions (mkstemp's are 0600).
    """
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")


def write_atomic(path: str | os.PathLike[str], write_fn: Callable[[Path], object]) -> None:
    """Create ``path`` through ``write_fn(temporary_path)``, then move it into place in one step.

    The temporary file sits beside ``path`` (same file system, so ``os.replace`` is atomic)
    and keeps its extension, so writers that pick a format from the name still work. If
    ``write_fn`` fails or the run is interrupted, the temporary file is removed and an
    existing ``path`` is left untouched: readers never see a half-written file.
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        write_fn(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_model_dir_target(target: Path) -> None:
    """Fail (one line, nothing touched) unless ``target`` can become a model directory: missing, an
    empty folder or an earlier model directory, under parents that are folders."""
    blocking = next((p for p in [target, *target.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        fail(f"{blocking}: exists and is not a folder; choose another -o (nothing was written)")
    if target.is_dir() and not (target / MANIFEST).is_file() and any(target.iterdir()):
        fail(f"{target}: exists and is not a layercascade model directory; choose another -o")


def write_model_dir(target: str | os.PathLike, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a model directory atomically.

    ``write(tmp_dir)`` writes the files and returns the manifest (without ``files``); the
    sha256 of every file is added, and the folder replaces ``target`` only when complete. A
    ``target`` that cannot become a model directory fails before anything is written.
    """
    target = Path(target).resolve()
    check_model_dir_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        manifest = write(staging)
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        manifest = {"format": FORMAT, "version": VERSION, **manifest,
                    "files": {name: sha256_file(staging / name) for name in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        check_model_dir_target(target)  # again: something may have appeared there while writing
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target`` (a sibling), replacing a folder there: the old one is
    renamed aside first and removed only once the new one is in place."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
