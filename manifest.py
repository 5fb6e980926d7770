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
from typing import Any

from layercascade.errors import fail

FORMAT = "layercascade.model"
VERSION = 1
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
    for name, digest in manifest.get("files", {}).items():
        file = model_dir / name
        if not file.is_file():
            fail(f"{file}: missing from the model directory (listed in {MANIFEST}); re-export the model")
        if verify and sha256_file(file) != digest:
            fail(f"{file}: sha256 does not match {MANIFEST}; the file was changed or damaged, re-export the model")
    return manifest


def read_cascade_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The verified ``lc.json`` of a cascade model dir (not a dense export)."""
    manifest = read_manifest(model_dir)
    if manifest.get("kind") != "cascade":
        fail(f"{model_dir}: holds a {manifest.get('kind')!r} model, not a cascade; export without --dense")
    return manifest


def model_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the sha256 of every file of the model dir: names one exported model."""
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()


def write_atomic(path: str | os.PathLike[str], write_fn: Callable[[Path], object]) -> None:
    """Create ``path`` through ``write_fn(temporary_path)``, then move it into place in one step.

    The temporary file sits beside ``path`` (same file system, so ``os.replace`` is atomic)
    and keeps its extension, so writers that pick a format from the name still work. If
    ``write_fn`` fails or the run is interrupted, the temporary file is removed and an
    existing ``path`` is left untouched: readers never see a half-written file.
    """
    path = Path(path)
    # A fresh name instead of mkstemp: the writer creates the file itself, so it gets the
    # usual permissions (mkstemp's are 0600).
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
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
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
