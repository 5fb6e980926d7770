"""The checkpoint file: one ``.pt`` holding a versioned plain schema.

Loading never executes code: ``torch.load(..., weights_only=True)`` accepts only tensors
and plain containers, and the schema is checked before anything is built from it.

Schema (format version 1)::

    {"format": "layercascade.checkpoint", "version": 1,
     "config": {...ModelConfig...}, "state_dict": {name: Tensor},
     "classes": [str], "palette": [[r, g, b]], "mean": [3 floats], "std": [3 floats],
     "input_size": [H, W], "default_rho": float, "training": {plain metadata},
     "resume": {"optimizer": ..., "epoch": int} or absent}
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layercascade.errors import LCError, fail
from layercascade.manifest import check_model_fields, check_version
from layercascade.model.config import ModelConfig
from layercascade.model.network import LayerCascadeNet

FORMAT = "layercascade.checkpoint"
VERSION = 1
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo" / "lc_tiny_synthetic.pt"

# ImageNet statistics on the 0–255 scale, used unless a checkpoint says otherwise.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class Checkpoint:
    """Everything needed to rebuild and run a trained network."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    classes: list[str]
    palette: list[list[int]]
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    input_size: list[int] = field(default_factory=lambda: [512, 512])
    default_rho: float = 0.985
    training: dict[str, Any] = field(default_factory=dict)
    resume: dict[str, Any] | None = None

    def build_model(self) -> LayerCascadeNet:
        """The network with these weights, in eval mode."""
        model = LayerCascadeNet(self.config)
        expected = model.state_dict()
        wrong = sorted(set(expected) ^ set(self.state_dict))
        wrong += [k for k in expected if k in self.state_dict and expected[k].shape != self.state_dict[k].shape]
        if wrong:
            fail(f"checkpoint weights do not fit a {self.config.backbone} model: {len(wrong)} tensors are "
                 f"missing, unexpected or of another shape (e.g. {wrong[0]})")
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
            "state_dict": self.state_dict, "classes": list(self.classes),
            "palette": [list(map(int, c)) for c in self.palette], "mean": list(self.mean),
            "std": list(self.std), "input_size": list(self.input_size),
            "default_rho": float(self.default_rho), "training": self.training,
        }
        if self.resume is not None:
            data["resume"] = self.resume
        return data


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(checkpoint.to_dict(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_checkpoint_target(path: Path) -> None:
    """Fail (one line) unless a checkpoint may be written at ``path``: nothing there, or a layercascade checkpoint
    (an earlier run's, or the one resumed), never a user's other file, under a folder."""
    if path.is_dir() or (path.exists() and not path.is_file()) or path.is_symlink():
        fail(f"-o {path}: exists and is not a checkpoint file; choose another -o")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        fail(f"-o {path}: {blocking} exists and is not a folder; choose another -o")
    if path.exists():
        try:
            data = read_weights_file(path)
        except LCError:
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            fail(f"-o {path}: exists and is not a layercascade checkpoint, which training would replace; choose "
                 "another -o")


def read_weights_file(path: str | os.PathLike) -> Any:
    """``torch.load`` a file safely, mapping every failure to one line of :class:`LCError`."""
    path = Path(path)
    if not path.is_file():
        fail(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[-1] if lines else "")
        reason = reason.removeprefix("WeightsUnpickler error:").strip() or "unsupported pickle content"
        fail(f"{path}: refused to load: the file holds pickled code or objects, not plain tensors "
             f"({reason[:160]}); only plain checkpoints are accepted")
    except Exception as error:  # noqa: BLE001 - torch.load fails in many ways on foreign bytes
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fail(f"{path}: corrupt, truncated or not a PyTorch file ({first[:160]})")


def load_checkpoint(path: str | os.PathLike | None = None) -> Checkpoint:
    """Load and validate a checkpoint; ``None`` loads the bundled demo model."""
    path = Path(path) if path is not None else DEMO_CHECKPOINT
    data = read_weights_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = " (it looks like a plain state dict: use it with --backbone-weights)" if isinstance(data, dict) else ""
        fail(f"{path}: not a layercascade checkpoint{hint}")
    check_version(data.get("version"), VERSION, path, "checkpoint format")
    missing = [k for k in ("config", "state_dict", "classes", "palette") if k not in data]
    if missing:
        fail(f"{path}: checkpoint lacks {', '.join(missing)}; the file is incomplete")
    if not isinstance(data["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in data["state_dict"].values()
    ):
        fail(f"{path}: checkpoint state_dict is not a mapping of tensors")
    config = ModelConfig.from_dict(data["config"])
    defaults = Checkpoint(config, {}, [], [])
    fields = {name: _as_lists(data[name] if name in data else getattr(defaults, name))
              for name in ("classes", "palette", "mean", "std", "input_size", "default_rho")}
    # What an export and every run of the model check, checked once here: a bad value is one line naming
    # the file, not a traceback or a silently wrong model (a std of 0, a NaN mean).
    check_model_fields(fields, path, "the checkpoint is damaged; fix the field or retrain")
    if isinstance(data.get("default_rho"), (list, tuple)):
        fail(f"{path}: default_rho is a pair; a checkpoint holds one threshold (set per-stage ones with lc-tune)")
    if len(fields["classes"]) != config.num_classes:
        fail(f"{path}: {len(fields['classes'])} class names for a {config.num_classes}-class model")
    training = data.get("training", {})
    if not isinstance(training, dict):
        fail(f"{path}: training is not a mapping of plain metadata; the checkpoint is damaged")
    return Checkpoint(
        config=config,
        state_dict=data["state_dict"],
        classes=list(fields["classes"]),
        palette=[list(c) for c in fields["palette"]],
        mean=[float(v) for v in fields["mean"]],
        std=[float(v) for v in fields["std"]],
        input_size=list(fields["input_size"]),
        default_rho=fields["default_rho"][0],
        training=dict(training),
        resume=data.get("resume"),
    )


def _as_lists(value: Any) -> Any:
    """``value`` with its tuples as lists, at every level (the form the checks and ``lc.json`` take)."""
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value
