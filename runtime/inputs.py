"""Inputs and outputs of a run: the bundled demo model and sample images, naming outputs (expanding
files / folders / globs / live sources into a run's sources is ``runtime.sources``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

# What a run reads: a file (an image or a video), or a live source (a stream URL or a camera device) as
# the user spelled it.
Source = Path | str

# The model and the images lc-run segments and lc-bench times when given none.
DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"
SAMPLES = Path(__file__).resolve().parent / "samples"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def source_stem(source: Source) -> str:
    """The name a source's outputs start with: a file's stem; for a live source the last part of its URL's
    path (or its host, or "stream"), reduced to letters, digits, ``.``, ``_`` and ``-`` (``/dev/video0`` →
    ``video0``, ``rtsp://cam/live/front`` → ``front``)."""
    if isinstance(source, Path):
        return source.stem
    parts = urlsplit(source)
    name = Path(parts.path).stem or parts.hostname or ""
    return re.sub(r"[^\w.-]", "_", name, flags=re.ASCII).strip(".")[:100] or "stream"


def unique_stems(named: Sequence[tuple[str, Sequence[str]]], in_use: Iterable[str] = ()) -> list[str]:
    """A unique stem per (stem, output suffixes) pair: the stem, with "-2", "-3"... where it repeats.

    Each stem names the files ``stem + suffix`` (an image's and a video's suffixes differ, so ``x.jpg``
    and ``x.mp4`` both keep ``x``); a candidate is taken only if none of its names is taken yet (so input
    ``x_stages.png`` cannot overwrite the ``x_stages.png`` picture of ``x.png``) or in ``in_use`` (names of
    files that must not be replaced). Names compare case-insensitively, as on macOS and Windows file systems.
    """
    taken = {name.casefold() for name in in_use}
    stems: list[str] = []
    for stem, suffixes in named:
        number, candidate = 1, stem
        while any((candidate + suffix).casefold() in taken for suffix in suffixes):
            number += 1
            candidate = f"{stem}-{number}"
        taken.update((candidate + suffix).casefold() for suffix in suffixes)
        stems.append(candidate)
    return stems
