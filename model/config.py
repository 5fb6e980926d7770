"""Model configurations: the architecture part of a checkpoint, as plain data.

``get_config(name)`` returns a fresh :class:`ModelConfig` for a known architecture;
a checkpoint stores ``config.to_dict()`` and rebuilds with ``ModelConfig.from_dict``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from layercascade.errors import fail


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Layer Cascade network.

    Args:
        backbone: "tiny", "resnet18", "resnet34", "resnet50", "resnet101" or "irnet".
        num_classes: classes of every stage head.
        head_channels: width of the 3×3 conv in each stage head.
    """

    backbone: str
    num_classes: int = 21
    head_channels: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            fail("model config is not a mapping; the checkpoint is damaged or not layercascade's")
        unknown = sorted(map(str, set(data) - known))
        if unknown or "backbone" not in data:
            fail(f"model config has unknown keys {unknown} or no backbone; it was written by another version")
        if data["backbone"] not in _CONFIGS:
            fail(f"model config names backbone {str(data['backbone'])[:40]!r}, not one of {', '.join(_CONFIGS)}")
        # Bounded, since a network of the config is built before its weights are compared with the checkpoint's.
        for name, high in (("num_classes", 255), ("head_channels", 8192)):
            value = data.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                fail(f"model config {name} {str(value)[:40]} is not an integer from 1 to {high}")
        return cls(**data)


_CONFIGS = {
    "tiny": ModelConfig("tiny", head_channels=32),
    "resnet18": ModelConfig("resnet18", head_channels=128),
    "resnet34": ModelConfig("resnet34", head_channels=128),
    "resnet50": ModelConfig("resnet50"),
    "resnet101": ModelConfig("resnet101"),
    "irnet": ModelConfig("irnet"),
}


def config_names() -> list[str]:
    """Names accepted by :func:`get_config`."""
    return list(_CONFIGS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered configuration ``name``, with ``overrides`` applied."""
    if name not in _CONFIGS:
        fail(f"unknown model config {name!r}; choose one of {', '.join(_CONFIGS)}")
    return replace(_CONFIGS[name], **overrides)
