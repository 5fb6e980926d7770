"""The generated blocks of docs/results.md: ``<!-- NAME:begin -->`` … ``<!-- NAME:end -->``, each written
by one tool and kept as it is by the others (tools/make_results.py rewrites the rest of the file)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_block(path: Path, name: str, body: str) -> None:
    """Replace the block ``name`` of ``path`` with ``body`` (appended at the end if it has none yet)."""
    begin, end = markers(name)
    replace_block(path, name, f"{begin}\n{body.strip()}\n{end}")


def replace_block(path: Path, name: str, block: str, before: str | None = None) -> None:
    """Replace the block ``name`` of ``path`` with ``block`` (its markers included); if it has none yet, insert
    it before the text ``before`` (None: at the end)."""
    begin, end = markers(name)
    text = path.read_text()
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    elif before is None:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        start = text.index(before)
        text = text[:start] + block + "\n\n" + text[start:]
    path.write_text(text)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for commands quoted in the docs)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def machine() -> str:
    """This machine (CPU, cores, vector extensions) and the CPU runtimes' versions, for a block's heading."""
    from importlib import metadata

    from layercascade.runtime.machine import host

    versions = []
    for package in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join([host(), *versions])
