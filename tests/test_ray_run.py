"""lc-run --ray: a Ray Data pipeline gives lc-run's outputs byte for byte and its summary, lists
unreadable images the same way, stops the same way with --strict, and survives a worker killed
mid-run (Ray restarts it and retries its images; nothing is written half)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from layercascade.errors import LCError
from layercascade.runtime.inputs import SAMPLES
from layercascade.tests.fake_cascade import leftovers, run_lc


def inputs(folder: Path, copies: int) -> Path:
    """``copies`` copies of each sample image and one file that is no image, in ``folder``."""
    folder.mkdir()
    for copy in range(copies):
        for sample in sorted(SAMPLES.iterdir()):
            shutil.copy(sample, folder / f"{sample.stem}-{copy}{sample.suffix}")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def outputs(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.name != "summary.json"}


def comparable(summary: dict) -> dict:
    """A summary without its timings."""
    kept = {key: value for key, value in summary.items() if key != "mean_ms"}
    kept["results"] = [{key: value for key, value in record.items() if key != "ms"} for record in summary["results"]]
    return kept


def test_ray_run_gives_lc_runs_outputs_and_summary(tmp_path, ray_session) -> None:
    folder = inputs(tmp_path / "in", 3)
    assert run_lc([folder, "-o", tmp_path / "local", "--quiet", "--rho", "0.9"]) == 1  # 1: the broken file
    assert run_lc([folder, "-o", tmp_path / "ray", "--quiet", "--rho", "0.9", "--ray", "--workers", "2"]) == 1
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    local, ray_summary = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("local", "ray"))
    assert comparable(ray_summary) == comparable(local)
    assert ray_summary["images"] == 12 and ray_summary["failed"][0]["input"].endswith("broken.jpg")


def test_ray_run_writes_the_outputs_chosen(tmp_path, ray_session) -> None:
    folder = inputs(tmp_path / "in", 1)
    chosen = ["--outputs", "labels,confidence,confidence-npy"]
    assert run_lc([folder, "-o", tmp_path / "local", "--quiet", *chosen]) == 1
    assert run_lc([folder, "-o", tmp_path / "ray", "--quiet", "--ray", "--workers", "1", *chosen]) == 1
    written = outputs(tmp_path / "ray")
    assert written == outputs(tmp_path / "local") and len(written) == 3 * 4
    assert {name.split("_", 1)[-1] if "_" in name else "png" for name in written} == {
        "confidence.png", "confidence.npy", "png"}
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["outputs"] == chosen[1].split(",")


def test_ray_run_strict_stops_at_the_first_failure_in_input_order(tmp_path, ray_session) -> None:
    folder = inputs(tmp_path / "in", 1)
    for name in ("local", "ray"):
        extra = ["--ray"] if name == "ray" else []
        assert run_lc([folder, "-o", tmp_path / name, "--quiet", "--strict", *extra]) == 1
    local, ray_summary = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("local", "ray"))
    assert comparable(ray_summary) == comparable(local) and ray_summary["images"] == 0  # "broken" sorts first
    assert outputs(tmp_path / "ray") == {}


def test_workers_without_ray_is_one_line(tmp_path, capsys) -> None:
    assert run_lc([SAMPLES, "-o", tmp_path / "out", "--workers", "2"]) == 1
    assert capsys.readouterr().err == "error: --workers sets the Ray workers: add --ray\n"


def worker_pids() -> list[int]:
    """The processes of lc-run --ray's Ray Data actors (their titles name SegmentWorker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"SegmentWorker" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue  # ended meanwhile
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers' processes in /proc")
def test_a_worker_killed_mid_run_is_retried(tmp_path, ray_session) -> None:
    from layercascade.serve.batch import segment_all_ray

    folder = inputs(tmp_path / "in", 30)
    paths = sorted(path for path in folder.iterdir() if path.name != "broken.jpg")
    assert run_lc([*paths, "-o", tmp_path / "local", "--quiet"]) == 0
    out = tmp_path / "ray"
    out.mkdir()
    finished: list = []
    worker = threading.Thread(target=lambda: finished.append(
        segment_all_ray(None, {"threads": 1}, paths, out, rho=None, strict=False, progress=False, workers=1)))
    worker.start()
    deadline = time.monotonic() + 120
    # One worker, killed once it has written images: past its model load (Ray Data fails a run whose
    # worker dies while starting), and mid-run.
    while len(list(out.glob("*_stages.png"))) < 3 and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = worker_pids()
    done_at_kill = len(list(out.glob("*_stages.png")))
    assert len(killed) == 1 and worker.is_alive() and done_at_kill < len(paths), "the run ended before the kill"
    os.kill(killed[0], signal.SIGKILL)
    worker.join(timeout=300)
    assert not worker.is_alive()
    run = finished[0]
    assert run.failed == [] and not run.stopped and len(run.records) == len(paths)
    assert [record["input"] for record in run.records] == [str(path) for path in paths]
    assert outputs(out) == outputs(tmp_path / "local") and leftovers(out) == []


def test_a_model_that_does_not_load_is_lc_runs_line(tmp_path, ray_session, capsys) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "lc.json").write_text("{}")
    assert run_lc([SAMPLES, "-o", tmp_path / "out", "--model", broken, "--ray"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "lc.json" in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_failing_pipeline_stops_the_run_with_the_summary_written(tmp_path, ray_session, monkeypatch) -> None:
    """A failure of Ray itself (here: the pipeline cannot start) ends the run like a disk failure: one line,
    exit 1, the summary written."""
    from layercascade.serve import batch

    def lost(*args, **kwargs):
        raise LCError("the Ray pipeline failed: cluster lost")
        yield

    monkeypatch.setattr(batch, "outcomes", lost)
    assert run_lc([SAMPLES, "-o", tmp_path / "out", "--ray", "--quiet"]) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stopped"] == "the Ray pipeline failed: cluster lost" and summary["images"] == 0
