"""The dense network in torch eager mode, as a peer of the cascade in ``lc-bench --peers``: the
checkpoint a model dir was exported from, found by the sha256 ``lc.json`` records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layercascade.errors import fail
from layercascade.manifest import sha256_file
from layercascade.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint


def source_checkpoint(manifest: dict[str, Any], model_dir: Path) -> Path:
    """The checkpoint ``manifest`` was exported from: its recorded path (as given, or beside the model
    dir) or the bundled demo checkpoint, whichever has the recorded sha256; else one line."""
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    name, digest = source.get("checkpoint"), source.get("sha256")
    candidates = [Path(name), model_dir.parent / Path(name).name] if isinstance(name, str) and name else []
    for path in [*candidates, DEMO_CHECKPOINT]:
        if path.is_file() and digest and sha256_file(path) == digest:
            return path
    fail(f"torch: the checkpoint {model_dir} was exported from ({name}) is not found by its sha256; "
         "torch eager needs it")


def dense_peer(model_dir: Path, manifest: dict[str, Any], threads: int = 0) -> tuple[Any, str]:
    """A runner of the dense network in torch eager mode (fp32, CPU) at the model dir's input size, and "fp32"."""
    from layercascade.runtime.torch.backend import TorchBackend

    if model_dir.suffix == ".pt":  # the cascade itself runs from a checkpoint
        path = model_dir
    else:
        path = source_checkpoint(manifest, model_dir)
    backend = TorchBackend(load_checkpoint(path), "cpu", threads=threads, source=path,
                           input_size=tuple(manifest["input_size"]))
    return backend.dense_runner(backend.manifest), "fp32"
