"""Inputs and outputs of a run: the bundled demo model and sample images, expanding files / folders /
globs, naming outputs."""

from __future__ import annotations

import glob
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


def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Files, folders and glob patterns → the image files they name, in order, without duplicates.

    A file named explicitly is taken whatever its extension (a bad one is reported when it
    is read); a folder gives its image files (sorted, not recursive) and a glob pattern
    (``**`` recurses) the image files it matches. An item that gives no file is an
    :class:`~layercascade.errors.LCError` naming it.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        for path in _expand(item):
            key = path.resolve()  # the same file spelled two ways is read once
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths


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


def output_stems(paths: Sequence[Path], variants: Iterable[str] = ("",)) -> list[str]:
    """A unique output stem per input path: the file stem, with "-2", "-3"... where it repeats.

    Each stem names the files ``stem + variant + extension``; a candidate is taken only if
    none of its names is taken yet (so input ``x_stages.png`` cannot overwrite the
    ``x_stages`` picture of ``x.png``). Names compare case-insensitively, as on macOS and
    Windows file systems.
    """
    variants = tuple(variants)
    taken: set[str] = set()
    stems: list[str] = []
    for path in paths:
        stem, number = path.stem, 1
        candidate = stem
        while any((candidate + variant).casefold() in taken for variant in variants):
            number += 1
            candidate = f"{stem}-{number}"
        taken.update((candidate + variant).casefold() for variant in variants)
        stems.append(candidate)
    return stems
