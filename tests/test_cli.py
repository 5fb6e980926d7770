"""The CLIs: help texts of every command, entry points, JSON output on the demo model, one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from layercascade.cli import bench, build, calibrate, doctor, evaluate, info, run, train
from layercascade.cli import export as export_cli
from layercascade.errors import run_cli


@pytest.mark.parametrize("module", [train, evaluate, info, export_cli, calibrate, build, run, bench, doctor],
                         ids=["lc-train", "lc-eval", "lc-info", "lc-export", "lc-calibrate", "lc-build", "lc-run",
                              "lc-bench", "lc-doctor"])
def test_help_explains_every_option(module, capsys) -> None:
    parser = module.build_parser()
    shown = [a for a in parser._actions if a.help != argparse.SUPPRESS]  # hidden: deprecated spellings
    for action in shown:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, f"{action.dest} has no help"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in shown:
        for option in action.option_strings:
            assert option in text


def test_deprecated_per_stage_rho_still_works(capsys) -> None:
    """lc-calibrate's ρ is --rho like every command's; the old --per-stage-rho still works, with a line."""
    parser = calibrate.build_parser()
    assert parser.parse_args(["DIR", "-o", "OUT", "--rho", "0.9"]).rho == (0.9, 0.9)
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["DIR", "-o", "OUT", "--per-stage-rho", "0.95"]).rho == (0.95, 0.95)
    assert capsys.readouterr().err == "warning: --per-stage-rho is deprecated; use --rho\n"
    with pytest.raises(SystemExit):
        parser.parse_args(["DIR", "-o", "OUT", "--per-stage-rho", "2"])


def test_every_entry_point_names_an_existing_cli() -> None:
    """The console scripts of pyproject.toml keep their names and point at ``cli/`` modules."""
    import importlib
    from pathlib import Path

    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
        "scripts"]
    assert sorted(scripts) == ["lc-bench", "lc-build", "lc-calibrate", "lc-doctor", "lc-eval", "lc-export", "lc-info",
                               "lc-run", "lc-serve", "lc-train", "lc-triton", "lc-tune"]
    for target in scripts.values():
        module, function = target.split(":")
        assert module.startswith("layercascade.cli.") and callable(getattr(importlib.import_module(module), function))


def test_eval_json_on_demo_model(capsys) -> None:
    assert run_cli(evaluate.main, ["--limit", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"miou", "per_class_iou", "stage_fractions", "rho", "images"}
    assert 0 <= result["miou"] <= 100 and result["images"] == 4
    assert sum(result["stage_fractions"]) == pytest.approx(1.0, abs=1e-5)
    assert len(result["per_class_iou"]) == 21


def test_eval_rho_sweep(capsys) -> None:
    assert run_cli(evaluate.main, ["--limit", "2", "--rho-sweep", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["rho"] for r in results] == [1.0, 0.995, 0.985, 0.97, 0.95, 0.93, 0.9, 0.8]
    assert results[0]["stage_fractions"] == [0.0, 0.0, 1.0]
    assert run_cli(evaluate.main, ["--limit", "2", "--rho-sweep"]) == 0
    table = capsys.readouterr().out
    assert "% pixels stopping at stage 1" in table and "mIoU" in table


def test_eval_errors_are_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run_cli(evaluate.main, [str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad.pt" in err
    assert run_cli(evaluate.main, ["--data", "voc:/nonexistent"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--rho", "1.5"])
    assert exit_info.value.code == 2


def test_info_on_config_and_demo(capsys) -> None:
    assert run_cli(info.main, ["irnet", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backbone"] == "irnet" and len(data["stages"]) == 3
    assert data["ideal_speedup"] > 1
    assert run_cli(info.main, []) == 0
    assert "stage 3" in capsys.readouterr().out


def test_installed_entry_point() -> None:
    done = subprocess.run([sys.executable, "-c", "from layercascade.cli.evaluate import cli; cli()",
                           "--limit", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "miou" in json.loads(done.stdout)


def test_eval_exported_model_dir_matches_checkpoint(capsys) -> None:
    from layercascade.runtime.cascade import DEMO_MODEL

    assert run_cli(evaluate.main, [str(DEMO_MODEL), "--limit", "3", "--json", "--rho", "0.9"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert run_cli(evaluate.main, ["--limit", "3", "--json", "--rho", "0.9"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert exported["miou"] == pytest.approx(reference["miou"], abs=0.05)
    assert exported["stage_fractions"] == pytest.approx(reference["stage_fractions"], abs=1e-3)
