"""``lc.json``: the manifest of an exported model directory, and writing files atomically.

Shared by the exporter and lc-calibrate (write model dirs), lc-build (engine dirs) and every
runtime backend (reads and verifies them); numpy-free and torch-free. What ``lc.json`` holds:
docs/export.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from layercascade.errors import LCError, fail

FORMAT = "layercascade.model"
# 3: stage 3 outputs ``confidence``, the stage graphs' ``rho`` holds one threshold per class, and a tuned dir may
# hold ``default_rho_class``. A version-2 dir (exported before both) is still read: it has no ``confidence`` and runs
# without (see contract.OPTIONAL_OUTPUTS), and its ``rho`` of shape [1] runs uniform thresholds.
# 2: ``default_rho`` is [ρ₂, ρ₃] (1: one number for both stages; still read, see check_cascade_fields).
VERSION = 3
MANIFEST = "lc.json"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load ``model_dir/lc.json``, check its version, its file names (:func:`check_file_name`) and (with
    ``verify``) every file's sha256.

    The manifest is untrusted input: it is read within :data:`MAX_MANIFEST_BYTES` and
    :data:`MAX_JSON_DEPTH`, and every file name it gives (``files``, each stage's ``file``, ``dense``'s)
    must be a plain file name listed in ``files`` and lying inside ``model_dir``, so nothing read from it
    can make a command read or write outside the dir."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not model_dir.is_dir():
        fail(f"{model_dir}: no such model directory (create one with lc-export CHECKPOINT -o DIR)")
    if not path.is_file():
        fail(f"{path}: missing; {model_dir} is not an exported layercascade model (run lc-export)")
    manifest = read_json(path, "re-export the model")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fail(f"{path}: not a layercascade model manifest")
    check_version(manifest.get("version"), VERSION, path, "manifest format")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        fail(f"{path}: has no 'files' (the sha256 of each file), as written by layercascade before 0.1; "
             "re-export the model (lc-export) so its files can be verified")
    for name, digest in files.items():
        file = model_dir / check_file_name(name, path, "files")
        if not is_sha256(digest):
            fail(f"{path}: files[{name!r}] is not a sha256 (64 hex digits); re-export the model")
        if not file.is_file():
            fail(f"{file}: missing from the model directory (listed in {MANIFEST}); re-export the model")
        if file.is_symlink() and file.resolve().parent != model_dir.resolve():
            fail(f"{file}: is a link to {file.resolve()}, outside the model directory; copy the file into it "
                 "or re-export the model")
        if verify and sha256_file(file) != digest:
            fail(f"{file}: sha256 does not match {MANIFEST}; the file was changed or damaged, re-export the model")
    stages = manifest.get("stages", [])
    if not isinstance(stages, list):
        fail(f"{path}: stages is not a list of stage graphs; re-export the model")
    entries = {f"stages[{k}]": stage for k, stage in enumerate(stages)}
    if "dense" in manifest:
        entries["dense"] = manifest["dense"]
    for field, entry in entries.items():
        name = entry.get("file") if isinstance(entry, dict) else None
        if check_file_name(name, path, f"{field}.file") not in files:
            fail(f"{path}: {field}.file {name!r} is not one of the model's files; re-export the model")
    return manifest


def read_cascade_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The verified ``lc.json`` of a cascade model dir (not a dense export), its fields checked
    (:func:`check_cascade_fields`)."""
    manifest = read_manifest(model_dir)
    source = Path(model_dir) / MANIFEST
    if manifest.get("kind") != "cascade":
        fail(f"{model_dir}: holds a {json.dumps(manifest.get('kind'))[:40]} model, not a cascade; export without "
             "--dense")
    if len(manifest.get("stages", [])) != 3 or "dense" not in manifest:
        fail(f"{source}: a cascade lists three stage graphs under 'stages' and the dense one under 'dense'; "
             "re-export the model")
    return check_cascade_fields(manifest, source)


def is_plain_file_name(name: object) -> bool:
    """Whether ``name`` names a file in a folder itself: a string with no folder part (no ``/`` or ``\\``),
    not ``.``/``..``, printable (no NUL), at most 255 bytes. The one rule for the names read from files a
    command did not write (a model dir's lc.json, an output folder's summary.json)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and name.isprintable() and len(os.fsencode(name)) <= 255)


def is_sha256(digest: object) -> bool:
    return isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest) is not None


def check_file_name(name: object, source: str | os.PathLike, field: str) -> str:
    """``name`` if it is a plain file name (:func:`is_plain_file_name`), else one line naming ``source`` and
    ``field``: no name read from a model dir's metadata leads out of the dir."""
    if not is_plain_file_name(name):
        fail(f"{source}: {field} {json.dumps(name)[:80]} is not a plain file name inside the model directory; "
             "re-export the model")
    return name


# Bounds on the JSON files a command reads from a model dir or an output folder (lc.json, engines.json,
# summary.json): ours are kilobytes; a crafted one must not cost memory or a RecursionError.
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 32


def read_json(path: Path, advice: str, max_bytes: int = MAX_MANIFEST_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in the regular file ``path``, or one line naming the file and ``advice``: not readable, a
    link or not a regular file (:func:`open_regular`), over ``max_bytes``, not JSON, or nested deeper than
    ``max_depth``."""
    try:
        data = read_regular(path, max_bytes)
    except OSError as error:
        fail(f"{path}: cannot be read ({error.strerror or error}); {advice}")
    except LCError as error:
        fail(f"{path}: {error}; {advice}")
    try:
        value = json.loads(data)
    except RecursionError:
        fail(f"{path}: nested deeper than {max_depth} levels, not a file layercascade writes; {advice}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        fail(f"{path}: not valid JSON ({error}); {advice}")
    if json_depth(value, max_depth) > max_depth:
        fail(f"{path}: nested deeper than {max_depth} levels, not a file layercascade writes; {advice}")
    return value


# Opening a file a command did not write never follows a link, nor blocks on a FIFO (where the OS has these).
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, refused (:class:`LCError`) unless it is a regular file: a link is not
    followed, a FIFO not waited on. OSError if it cannot be opened (missing, a link where the OS refuses to
    follow it)."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        fail("a link or not a regular file")
    handle = os.fdopen(os.open(path, _READ_FLAGS), "rb")
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped since the lstat
        handle.close()
        fail("a link or not a regular file")
    return handle


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), refused over ``limit`` bytes."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if max(size, len(data)) > limit:  # the data too: the file may grow while it is read
        fail(f"{max(size, len(data)):,} bytes, over the {limit >> 20} MiB layercascade reads")
    return data


def json_depth(value: Any, limit: int) -> int:
    """How deep ``value``'s lists and dicts nest (a scalar is 0, ``[1]`` is 1), counted up to ``limit`` + 1."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [item for v in containers for item in (v.values() if isinstance(v, dict) else v)]
    return depth


def check_version(version: object, supported: int, source: str | os.PathLike, what: str) -> int:
    """``version`` if it is a format version this layercascade reads (an integer from 1 to ``supported``),
    else one line: newer (upgrade layercascade) or not a version at all (the file is damaged)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        fail(f"{source}: {what} version {json.dumps(version)[:40]} is not a version number (an integer from 1); "
             "the file is damaged or not layercascade's")
    if version > supported:
        fail(f"{source}: {what} version {version} is newer than this layercascade reads ({supported}); "
             "upgrade layercascade")
    return version


def check_model_fields(manifest: dict[str, Any], source: str | os.PathLike,
                       advice: str = "fix it or re-export the model") -> dict[str, Any]:
    """``manifest`` if the fields a model takes from its checkpoint hold values it can run with, else one line
    naming ``source`` (the file they came from), the field and ``advice``: ``default_rho`` [ρ₂, ρ₃] in (0, 1]
    (a version-1 manifest's one number, meaning both, becomes that pair), ``input_size`` two positive integers
    of at most :data:`MAX_PIXELS` pixels, ``classes`` names (at most 255: 255 marks void pixels), ``palette``
    one RGB colour per class, ``mean`` and ``std`` three finite numbers each (``std`` positive). Checked at
    export (of the checkpoint's values) and at load (of ``lc.json``'s)."""
    def wrong(field: str, what: str) -> NoReturn:
        field_is_not(manifest, field, what, source, advice)

    rho = manifest.get("default_rho")
    if _threshold(rho):
        manifest["default_rho"] = [rho, rho]
    elif not (isinstance(rho, list) and len(rho) == 2 and all(_threshold(r) for r in rho)):
        wrong("default_rho", "[rho2, rho3] (two numbers in (0, 1])")
    size = manifest.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(_int_in(n, 1, MAX_PIXELS) for n in size)):
        wrong("input_size", "[height, width] (two positive integers)")
    if size[0] * size[1] > MAX_PIXELS:
        wrong("input_size", f"an input of at most {MAX_PIXELS:,} pixels")
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and 0 < len(classes) < 256 and all(isinstance(c, str) for c in classes)):
        wrong("classes", "a list of 1 to 255 class names")
    palette = manifest.get("palette")
    if not (isinstance(palette, list) and all(isinstance(c, list) and len(c) == 3 and
                                              all(_int_in(v, 0, 255) for v in c) for c in palette)):
        wrong("palette", "a list of [r, g, b] colours (integers 0..255)")
    if len(palette) != len(classes):
        fail(f"{source}: palette has {len(palette)} colours for {len(classes)} classes; {advice}")
    for field, low in (("mean", -math.inf), ("std", 0.0)):
        values = manifest.get(field)
        if not (isinstance(values, list) and len(values) == 3 and all(_number(v) and v > low for v in values)):
            wrong(field, "three finite numbers, one per RGB channel" + (", each above 0" if low == 0 else ""))
    return manifest


def field_is_not(manifest: dict[str, Any], field: str, what: str, source: str | os.PathLike, advice: str) -> NoReturn:
    """One line: ``source``'s ``field`` (its value, cut short) is not ``what``, and ``advice``."""
    fail(f"{source}: {field} {json.dumps(manifest.get(field))[:80]} is not {what}; {advice}")


def check_cascade_fields(manifest: dict[str, Any], source: str | os.PathLike,
                         advice: str = "fix it or re-export the model") -> dict[str, Any]:
    """``manifest`` if every field a cascade runs by holds a value it can run with (:func:`check_model_fields`,
    and what the export adds: ``batch``, ``stage_size``, ``stage_gmacs``), else one line naming ``source``
    and the field. The stage graphs themselves are checked against these by the backend that loads them
    (``export.graph.check_stage_graphs``)."""
    def wrong(field: str, what: str) -> NoReturn:
        field_is_not(manifest, field, what, source, advice)

    check_model_fields(manifest, source, advice)
    batch = manifest.get("batch")
    dynamic = isinstance(batch, dict) and batch.get("dynamic") is True
    if not (isinstance(batch, dict) and isinstance(batch.get("dynamic"), bool)
            and (batch.get("max") is None or _int_in(batch.get("max"), 1, MAX_BATCH) if dynamic
                 else _int_in(batch.get("size"), 1, MAX_BATCH))):
        wrong("batch", f'{{"dynamic": false, "size": N}} or {{"dynamic": true, "max": N or null}} (N from 1 to '
                       f"{MAX_BATCH})")
    size = manifest.get("stage_size")
    if not (isinstance(size, list) and len(size) == 2 and all(_int_in(n, 1, MAX_PIXELS) for n in size)):
        wrong("stage_size", "[height, width] (two positive integers)")
    gmacs = manifest.get("stage_gmacs")
    if not (isinstance(gmacs, list) and len(gmacs) == 3 and all(
            isinstance(g, dict) and all(_number(g.get(part)) and g[part] >= 0 for part in ("backbone", "head"))
            for g in gmacs)):
        wrong("stage_gmacs", 'three {"backbone": GMACs, "head": GMACs} (finite numbers, 0 or more)')
    if "dynamic_size" in manifest:  # lc-export --dynamic-size: the image sizes the graphs take
        sizes = manifest["dynamic_size"]
        if not (isinstance(sizes, dict) and sizes.get("multiple") == 8
                and all(isinstance(sizes.get(k), list) and len(sizes[k]) == 2
                        and all(_int_in(n, 8, MAX_PIXELS) and n % 8 == 0 for n in sizes[k]) for k in ("min", "max"))
                and all(low <= high for low, high in zip(sizes["min"], sizes["max"]))
                and sizes["max"][0] * sizes["max"][1] <= MAX_PIXELS):
            wrong("dynamic_size", '{"min": [H, W], "max": [H, W], "multiple": 8} (multiples of 8, min <= max, '
                                  f"at most {MAX_PIXELS:,} pixels)")
    per_class = manifest.get("default_rho_class", {})  # lc-tune --tune-class: class name → ρ_c
    if not (isinstance(per_class, dict) and all(name in manifest["classes"] and _threshold(value)
                                                 for name, value in per_class.items())):
        wrong("default_rho_class", "{class name: threshold} (classes of the model, thresholds in (0, 1])")
    for record in ("source", "quantization", "tuning", "engines"):  # what other commands add: read by some
        if record in manifest and not isinstance(manifest[record], dict):
            wrong(record, "a record (a JSON object)")
    return manifest


# The largest model input a model dir may declare, and the largest image read by default (lc-run's
# --max-pixels, model.data.images.MAX_PIXELS): 100 MP.
MAX_PIXELS = 100_000_000
# The largest batch a model dir may declare: far above any batch that fits a machine's memory at
# the smallest input, small enough that a crafted lc.json cannot make a run allocate without bound.
MAX_BATCH = 4096


def _threshold(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def model_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the sha256 of every file of the model dir: names one exported model."""
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()


def temporary_path(path: Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its extension (writers pick formats by it), short
    whatever ``path``'s length: a final name that fits the file system is never refused for its temporary one.

    A fresh name instead of mkstemp: the writer creates the file itself, so it gets the usual
    permissions (mkstemp's are 0600).
    """
    return path.with_name(f".lc-{secrets.token_hex(6)}.tmp{path.suffix[:16]}")


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


# The commands that write model dirs. Each replaces only a model dir it wrote itself (lc.json's ``writer``),
# never another command's: lc-tune -o onto an export, or lc-export -o onto an INT8 dir, is refused.
WRITERS = ("lc-export", "lc-calibrate", "lc-tune", "lc-build")


def writer_of(manifest: dict[str, Any]) -> str:
    """The command that wrote a model dir: its ``writer``, or for a dir from before that field, what its
    records say (a ``tuning`` record: lc-tune; ``quantization``: lc-calibrate; ``engines``: lc-build)."""
    if manifest.get("writer") in WRITERS:
        return manifest["writer"]
    for key, writer in (("tuning", "lc-tune"), ("quantization", "lc-calibrate"), ("engines", "lc-build")):
        if key in manifest:
            return writer
    return "lc-export"


def check_folder_target(target: Path, advice: str = "choose another -o") -> None:
    """Fail (one line) when ``target`` or one of its parents exists and is not a folder."""
    blocking = next((p for p in [target, *target.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        fail(f"{blocking}: exists and is not a folder; {advice} (nothing was written)")


def check_model_dir_target(target: Path, writer: str) -> None:
    """Fail (one line, nothing touched) unless ``target`` can become a model directory written by ``writer``
    (one of :data:`WRITERS`): missing, an empty folder or a model directory ``writer`` wrote before, under
    parents that are folders."""
    check_folder_target(target)
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / MANIFEST).is_file():
        fail(f"{target}: exists and is not a layercascade model directory; choose another -o")
    try:
        earlier = read_json(target / MANIFEST, "")
    except LCError:
        earlier = None
    if not isinstance(earlier, dict) or earlier.get("format") != FORMAT:
        fail(f"{target}: holds an lc.json that is not a layercascade manifest; choose another -o")
    if writer_of(earlier) != writer:
        fail(f"{target}: holds a model dir written by {writer_of(earlier)}, which {writer} does not replace; "
             "choose another -o (or remove that folder first)")


def write_model_dir(target: str | os.PathLike, write: Callable[[Path], dict[str, Any]], writer: str) -> Path:
    """Build a model directory atomically, as the command ``writer`` (one of :data:`WRITERS`).

    ``write(tmp_dir)`` writes the files and returns the manifest (without ``files``); the
    sha256 of every file is added, and the folder replaces ``target`` only when complete. A
    ``target`` that cannot become a model directory of ``writer`` fails before anything is written.
    """
    if writer not in WRITERS:
        raise ValueError(f"unknown model dir writer {writer!r}")
    target = Path(target).resolve()
    check_model_dir_target(target, writer)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"{target.parent}: cannot create the folder ({error.strerror or error}); choose another -o")
    staging = staging_folder(target)
    try:
        manifest = write(staging)
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        manifest = {"format": FORMAT, "version": VERSION, **manifest, "writer": writer,
                    "files": {name: sha256_file(staging / name) for name in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        check_model_dir_target(target, writer)  # again: something may have appeared there while writing
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def staging_folder(target: Path) -> Path:
    """A new empty hidden folder beside ``target`` to build it in. Made with ``mkdir`` (not ``mkdtemp``, whose
    folders are 0700) so that the folder renamed into place has the usual permissions: a model dir is read by
    other users too (a service account)."""
    while True:
        staging = temporary_path(target)
        try:
            staging.mkdir()
            return staging
        except FileExistsError:  # a name drawn twice: draw again
            continue


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target`` (a sibling), replacing a folder there: the old one is
    renamed aside first and removed only once the new one is in place."""
    if target.exists():
        old = temporary_path(target)  # a fresh name: nothing of the user's beside target is touched
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
