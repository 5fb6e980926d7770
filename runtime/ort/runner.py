"""One ONNX Runtime session that runs a graph and times itself (the runner half of the ORT backend)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(eq=False)
class OrtRunner:
    """A graph in an ``InferenceSession``; ``infer`` records its own time in ``last_ms``.

    ``lowered``: its RegionConvs run in compact row form; ``rectified_outputs``: the outputs a
    ReLU produces (the next stage may take them as uint8 rows); ``layout_folded``: ONNX Runtime's
    optimized graph was rewritten (``layout.fold_stem_reorders``) and loaded as it is.
    """

    session: Any
    path: Path
    lowered: bool = False
    rectified_outputs: frozenset[str] = frozenset()
    layout_folded: bool = False
    last_ms: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self.session.run(self.output_names, {name: feeds[name] for name in self.input_names})
        self.last_ms = (time.perf_counter() - started) * 1e3
        return dict(zip(self.output_names, outputs))
