"""Inputs and outputs of a run: the bundled demo model and sample images, expanding files / folders /
globs, naming outputs."""

from __future__ import annotations

import functools
import glob
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from layercascade.errors import fail

# The model and the images lc-run segments and lc-bench times when given none.
DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"
SAMPLES = Path(__file__).resolve().parent / "samples"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_GLOB_CHARACTERS = frozenset("*?[")


def is_image_file(path: Path) -> bool:
    """A regular file with an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def expand_inputs(items: Sequence[str], output: Path | None = None) -> list[Path]:
    """Files, folders and glob patterns → the image files they name, in order, without duplicates.

    A file named explicitly is taken whatever its extension (a bad one is reported when it
    is read); a folder gives its image files (sorted, not recursive) and a glob pattern
    (``**`` recurses) the image files it matches. An item that gives no file is an
    :class:`~layercascade.errors.LCError` naming it.

    ``output``: the folder the run writes to. Its files are never inputs, so no output can
    replace an input and no run reads an earlier run's outputs: a file or folder named
    explicitly inside it is refused, and a pattern's (or a folder's links') matches inside it
    are skipped (one warning line says how many). Folders are compared by device and inode.
    """
    out = None if output is None else _identity(output)  # a folder not there yet holds nothing
    # Each folder is looked up once (its ancestors' identities), however many files it holds.
    within = functools.cache(lambda folder: any(_identity(f) == out for f in (folder, *folder.parents)))
    paths: list[Path] = []
    seen: set[Path] = set()
    skipped = 0
    for item in items:
        found = _expand(item)
        if out is not None:
            # Where the link itself would be replaced, or where it points.
            kept = [path for path in found if not (within(path.parent.resolve()) or within(path.resolve().parent))]
            if Path(item).is_dir() and within(Path(item).resolve()):
                fail(f"{item}: is the output folder {output} or inside it; outputs written beside the inputs "
                     "could replace them and be read back as inputs: pass another -o")
            if Path(item).is_file() and not kept:
                fail(f"{item}: is inside the output folder {output}; an output could replace it: pass another -o")
            if not kept:
                fail(f"{item}: matches only files inside the output folder {output}")
            skipped += len(found) - len(kept)
            found = kept
        for path in found:
            key = path.resolve()  # the same file spelled two ways is read once
            if key not in seen:
                seen.add(key)
                paths.append(path)
    if skipped:
        print(f"warning: skipped {skipped} image file(s) inside the output folder {output} "
              "(lc-run never reads outputs back as inputs)", file=sys.stderr)
    return paths


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing path: the same folder however it is spelled (letter case on
    case-insensitive file systems, links, bind mounts)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _expand(item: str) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        try:
            found = sorted(p for p in path.iterdir() if is_image_file(p))
        except OSError as error:
            fail(f"{item}: cannot list folder ({error.strerror})")
        if not found:
            fail(f"{item}: folder has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return found
    if path.exists():
        if not path.is_file():
            fail(f"{item}: not a file or folder")
        return [path]
    if _GLOB_CHARACTERS.isdisjoint(item):
        fail(f"{item}: no such file or folder")
    found = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if is_image_file(p))
    if not found:
        fail(f"{item}: pattern matches no image files")
    return found


def output_stems(paths: Sequence[Path], suffixes: Iterable[str] = (".png",), in_use: Iterable[str] = ()) -> list[str]:
    """A unique output stem per input path: the file stem, with "-2", "-3"... where it repeats.

    Each stem names the files ``stem + suffix``; a candidate is taken only if none of its names
    is taken yet (so input ``x_stages.png`` cannot overwrite the ``x_stages.png`` picture of
    ``x.png``) or in ``in_use`` (names of files that must not be replaced). Names compare
    case-insensitively, as on macOS and Windows file systems.
    """
    suffixes = tuple(suffixes)
    taken = {name.casefold() for name in in_use}
    stems: list[str] = []
    for path in paths:
        stem, number = path.stem, 1
        candidate = stem
        while any((candidate + suffix).casefold() in taken for suffix in suffixes):
            number += 1
            candidate = f"{stem}-{number}"
        taken.update((candidate + suffix).casefold() for suffix in suffixes)
        stems.append(candidate)
    return stems
