"""The package's structure: the import contracts of pyproject.toml, no private names across packages,
and a deployment install (no torch) that runs everything it should."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: its root is the package `layercascade`


def test_import_contracts_hold() -> None:
    """`lint-imports` (import-linter) with the contracts in pyproject.toml, as CI runs it."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_private_names_cross_packages() -> None:
    """``from layercascade.X import _name`` only inside package X: private classes and functions stay
    with their owners (e.g. the blocks' walk lives in model/, not beside the exporter)."""
    import layercascade

    crossings = []
    for module in pkgutil.walk_packages(layercascade.__path__, "layercascade."):
        if _top_package(module.name) == "tests":
            continue
        path = Path(importlib.util.find_spec(module.name).origin)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("layercascade.")
                    and _top_package(node.module) != _top_package(module.name)):
                crossings += [f"{module.name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.endswith("__")]
    assert not crossings, crossings


def test_runtime_does_not_import_torch() -> None:
    """Everything a deployment install runs (ONNX Runtime backend, lc-run, lc-bench, lc-build's checks,
    lc-calibrate, lc-doctor, lc-tune) loads without torch."""
    modules = ["layercascade.runtime.cascade", "layercascade.runtime.ort.loader", "layercascade.runtime.trt.loader",
               "layercascade.runtime.bench", "layercascade.runtime.compare", "layercascade.runtime.segment",
               "layercascade.runtime.doctor", "layercascade.calibration.calibrate", "layercascade.cli.run",
               "layercascade.cli.bench", "layercascade.cli.build", "layercascade.cli.calibrate",
               "layercascade.cli.doctor", "layercascade.runtime.tune", "layercascade.cli.tune"]
    code = f"import sys, {', '.join(modules)}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_every_package_is_in_the_wheel() -> None:
    """pyproject.toml lists the packages explicitly: a new subpackage missing there works in an editable
    install and is absent from the wheel."""
    import tomllib

    import layercascade

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"layercascade"} | {module.name for module in pkgutil.walk_packages(layercascade.__path__, "layercascade.")
                                if module.ispkg and not module.name.startswith("layercascade.tests")}
    assert found <= listed, sorted(found - listed)
