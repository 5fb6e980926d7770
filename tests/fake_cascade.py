"""lc-run without a model: a stand-in for ``layercascade.runtime.cascade.Cascade`` (the ``fake`` fixture of
conftest.py puts it in place) with deterministic answers from the image's brightness, which records how it
was used; and running lc-run in the test's process."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from layercascade.cli import run
from layercascade.contract import Rho, RhoClass, RhoClassLike, RhoLike, check_rho_class, rho_or_default
from layercascade.errors import run_cli
from layercascade.model.data import VOC_CLASSES, VOC_PALETTE
from layercascade.runtime.result import CascadeResult


def fake_labels(image: np.ndarray) -> np.ndarray:
    """Class ids 0..20 from the brightness: what the fake cascade answers, at the image's size."""
    return (image.astype(np.int32).sum(axis=2) // 3 * 21 // 256).astype(np.uint8)


class FakeCascade:
    """Stands in for layercascade.runtime.cascade.Cascade: deterministic answers, records its use."""

    instances: ClassVar[list[FakeCascade]] = []
    classes: ClassVar[list[str]] = list(VOC_CLASSES)
    palette = VOC_PALETTE
    input_size = (64, 64)
    default_rho = (0.985, 0.985)
    backend = "fake"
    precision = "fp32"
    has_confidence = False  # its results carry none

    def __init__(self, model_dir: str | None, backend: str, device: str) -> None:
        self.load_args = (model_dir, backend, device)
        self.rhos: list[RhoLike | None] = []
        self.rho_classes: list[RhoClassLike | None] = []
        self.policies: list[tuple] = []  # (resize, tile, overlap) of each call
        self.closed = False

    @classmethod
    def load(cls, model_dir: str | None = None, backend: str = "auto", device: str = "cpu", lower: bool = True,
             threads: int = 0) -> FakeCascade:
        cascade = cls(model_dir, backend, device)
        cls.instances.append(cascade)
        return cascade

    def rho(self, rho: RhoLike | None = None) -> Rho:
        return rho_or_default(rho, self.default_rho)

    def rho_class(self, rho_class: RhoClassLike | None = None) -> RhoClass:
        return check_rho_class(rho_class, self.classes)

    def __enter__(self) -> FakeCascade:
        return self

    def __exit__(self, *exception: object) -> None:
        self.closed = True

    def __call__(self, image: np.ndarray, rho: RhoLike | None = None, resize: str | None = None,
                 tile: tuple[int, int] | None = None, overlap: int | None = None,
                 rho_class: RhoClassLike | None = None) -> CascadeResult:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.rhos.append(rho)
        self.rho_classes.append(rho_class)
        self.policies.append((resize, tile, overlap))
        brightness = image.astype(np.int32).sum(axis=2) // 3
        stage_map = (1 + brightness[::8, ::8] * 3 // 256).astype(np.uint8)  # ceil(H/8) x ceil(W/8)
        fractions = tuple(float(np.mean(stage_map == k)) for k in (1, 2, 3))
        return CascadeResult(fake_labels(image), stage_map, fractions, {"total": 2.5})


def run_lc(args: list[str | Path]) -> int:
    return run_cli(run.main, [str(a) for a in args])


def leftovers(out: Path) -> list[str]:
    """Temporary files write_atomic would leave behind (hidden names)."""
    return [p.name for p in out.iterdir() if p.name.startswith(".")]
