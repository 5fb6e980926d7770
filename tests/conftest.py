"""Model dirs the tests share, exported (or calibrated, converted) once per test session.

Tests must not change them: a test that edits a model dir copies it first (``shutil.copytree``).
"""

from __future__ import annotations

import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from layercascade.model.checkpoint import Checkpoint
from layercascade.tests.fake_cascade import FakeCascade
from layercascade.tests.helpers import (
    CALIBRATION_IMAGES,
    DYNAMIC_MAX,
    DYNAMIC_SIZE,
    DYNAMIC_SIZE_BOUNDS,
    TINY_SIZE,
    sharpened_checkpoint,
)

# Property tests draw the same examples on every run and keep no example database in the checkout.
settings.register_profile("layercascade", derandomize=True, database=None, deadline=None)
settings.load_profile("layercascade")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    """(checkpoint, model dir): a random ``tiny`` with confident heads, exported at batch 1 and :data:`TINY_SIZE`."""
    from layercascade.export.stages import export_model

    checkpoint = sharpened_checkpoint("tiny", TINY_SIZE)
    return checkpoint, export_model(checkpoint, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def dynamic_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    """(checkpoint, model dir): the same kind of model exported with ``--dynamic-batch`` :data:`DYNAMIC_MAX`."""
    from layercascade.export.stages import export_model

    checkpoint = sharpened_checkpoint("tiny", DYNAMIC_SIZE)
    folder = tmp_path_factory.mktemp("dynamic") / "model"
    return checkpoint, export_model(checkpoint, folder, dynamic_batch=DYNAMIC_MAX)


@pytest.fixture(scope="session")
def dynamic_size_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of model exported with ``--dynamic-size`` :data:`DYNAMIC_SIZE_BOUNDS` and ``--dynamic-batch``
    :data:`DYNAMIC_MAX` (nominal size 64x64)."""
    from layercascade.export.stages import export_model

    return export_model(sharpened_checkpoint("tiny", (64, 64)), tmp_path_factory.mktemp("dynamic-size") / "model",
                        dynamic_batch=DYNAMIC_MAX, dynamic_size=DYNAMIC_SIZE_BOUNDS)


@pytest.fixture(scope="session")
def demo_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundled demo model dir (an INT8 dir records its fp32 source's path)."""
    from layercascade.runtime.inputs import DEMO_MODEL

    folder = tmp_path_factory.mktemp("demo") / "fp32"
    shutil.copytree(DEMO_MODEL, folder)
    return folder


@pytest.fixture(scope="session")
def demo_int8(demo_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """(INT8 dir, its record, statistics cache): :func:`demo_fp32` calibrated min-max on a few synthetic
    train images."""
    from layercascade.calibration.calibrate import calibrate

    cache = tmp_path_factory.mktemp("cache") / "stats.npz"
    output = demo_fp32.parent / "int8"
    record = calibrate(demo_fp32, output, limit=CALIBRATION_IMAGES, method="minmax", cache=cache, progress=False)
    return output, record, cache


@pytest.fixture(scope="session")
def demo_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model dir with every graph converted to fp16 compute (lc-build's fp16 input)."""
    from layercascade.export.fp16 import convert_to_fp16
    from layercascade.tests.helpers import copy_demo_model

    return copy_demo_model(tmp_path_factory.mktemp("fp16") / "model", convert_to_fp16)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeCascade]:
    """Put a fake module at layercascade.runtime.cascade (restored afterwards), whether or not the real one exists."""
    module = types.ModuleType("layercascade.runtime.cascade")
    module.Cascade = FakeCascade
    monkeypatch.setitem(sys.modules, "layercascade.runtime.cascade", module)
    monkeypatch.setattr(FakeCascade, "instances", [])
    return FakeCascade


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray for the whole test session (started once: a start costs seconds). Four logical CPUs
    on any machine, so the serving tests' replicas and Ray Data's actors are never starved of them."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'layercascade[serve]')")
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'layercascade[serve]')")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()
