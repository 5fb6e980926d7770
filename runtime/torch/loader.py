"""The torch backend's loader: ``Cascade.load(CHECKPOINT.pt, backend="torch", device=...)``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from layercascade.errors import fail
from layercascade.manifest import MANIFEST
from layercascade.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from layercascade.runtime.torch.backend import TorchBackend


def load(path: str | os.PathLike | None, device: str = "cpu", lower: bool = True, threads: int = 0,
         **options: Any) -> tuple[Path, dict[str, Any], TorchBackend]:
    """(checkpoint path, manifest, backend) for ``Cascade``; ``None`` is the bundled demo checkpoint.

    ``options``: its spec's (``runtime/torch/__init__.py``), as :class:`TorchBackend` takes them; ``lower`` does not apply
    (the torch backend runs the checkpoint, not the graphs). Input size: the checkpoint's
    recorded training/export size unless ``input_size=(H, W)`` is given.

    A model directory is refused with the name of the checkpoint it was exported from: the
    torch backend runs checkpoints (locating the file by the recorded hash would mean
    searching the disk).
    """
    del lower
    path = Path(path) if path is not None else DEMO_CHECKPOINT
    if path.is_dir():
        source = _exported_from(path)
        fail(f"{path}: an exported model directory; the torch backend runs a checkpoint: pass the .pt file"
             f"{f' it was exported from ({source})' if source else ''}, or use --backend ort")
    checkpoint = load_checkpoint(path)
    backend = TorchBackend(checkpoint, device, threads=threads, source=path, **options)
    return path, backend.manifest, backend


def _exported_from(model_dir: Path) -> str | None:
    """The checkpoint name an ``lc.json`` records, if it can be read."""
    try:
        return json.loads((model_dir / MANIFEST).read_text())["source"]["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
