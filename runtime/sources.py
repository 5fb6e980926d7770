"""The sources of a run: files, folders, glob patterns and live sources (stream URLs, cameras) expanded into
the images and videos lc-run segments, in order, never a file inside the output folder.

Kept apart from ``runtime.inputs``, which the backends import for the demo model: this module reads
``runtime.video``, whose imports reach the backends."""

from __future__ import annotations

import functools
import glob
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from layercascade.errors import fail
from layercascade.runtime.inputs import IMAGE_EXTENSIONS, Source

_GLOB_CHARACTERS = frozenset("*?[")


def is_media_file(path: Path) -> bool:
    """A regular file lc-run takes from a folder or a pattern: an image or video extension (case-insensitive),
    or content that is a video's whatever the name (a camera's ``.bin``, a file without a suffix)."""
    from layercascade.runtime import video  # here: runtime.video imports runtime.segment, which imports this

    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in video.VIDEO_EXTENSIONS:
        return path.is_file()
    return path.is_file() and video.looks_like_video(path)


def is_video(source: Source) -> bool:
    """Whether lc-run segments ``source`` as a video: a live source, a file with a video extension, or a file
    without an image extension whose content is a video's. Images keep their path (a bad one is reported
    as an unreadable image)."""
    from layercascade.runtime import video

    if isinstance(source, str):
        return True
    suffix = source.suffix.lower()
    return suffix in video.VIDEO_EXTENSIONS or (suffix not in IMAGE_EXTENSIONS and video.looks_like_video(source))


def expand_inputs(items: Sequence[str], output: Path | None = None) -> list[Source]:
    """Files, folders, glob patterns and live sources → the sources they name, in order, without duplicates.

    A file named explicitly is taken whatever its extension (a bad one is reported when it
    is read); a folder gives its image and video files (sorted, not recursive: :func:`is_media_file`)
    and a glob pattern (``**`` recurses) those it matches. A stream URL (``rtsp://``, ``udp://``...) or a
    camera (``/dev/video0``) is kept as the string given (live sources: :func:`is_video`). An item that gives
    no file is an :class:`~layercascade.errors.LCError` naming it.

    ``output``: the folder the run writes to. Its files are never inputs, so no output can
    replace an input and no run reads an earlier run's outputs: a file or folder named
    explicitly inside it is refused, and a pattern's (or a folder's links') matches inside it
    are skipped (one warning line says how many). Folders are compared by device and inode.
    """
    from layercascade.runtime.video import is_live

    out = None if output is None else _identity(output)  # a folder not there yet holds nothing
    # Each folder is looked up once (its ancestors' identities), however many files it holds.
    within = functools.cache(lambda folder: any(_identity(f) == out for f in (folder, *folder.parents)))
    paths: list[Source] = []
    seen: set[Path | str] = set()
    skipped = 0
    for item in items:
        if is_live(item):
            _check_camera(item)
            if item not in seen:
                seen.add(item)
                paths.append(item)
            continue
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
        print(f"warning: skipped {skipped} input file(s) inside the output folder {output} "
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


def _check_camera(item: str) -> None:
    """A camera named by its device (``/dev/video0``) must be one; a stream URL is tried when it is read."""
    if not item.startswith("/dev/"):
        return
    try:
        mode = Path(item).stat().st_mode
    except OSError as error:
        fail(f"{item}: no such camera ({error.strerror})")
    if not stat.S_ISCHR(mode):
        fail(f"{item}: not a camera device")


def _expand(item: str) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        try:
            found = sorted(p for p in path.iterdir() if is_media_file(p))
        except OSError as error:
            fail(f"{item}: cannot list folder ({error.strerror})")
        if not found:
            fail(f"{item}: folder has no image or video files (by their suffix or, for videos, content)")
        return found
    if path.exists():
        if not path.is_file():
            fail(f"{item}: not a file or folder")
        return [path]
    if _GLOB_CHARACTERS.isdisjoint(item):
        fail(f"{item}: no such file or folder")
    found = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if is_media_file(p))
    if not found:
        fail(f"{item}: pattern matches no image or video files")
    return found
