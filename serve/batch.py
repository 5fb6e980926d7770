"""lc-run --ray: the images of a run segmented by a Ray Data pipeline — the paths → a pool of actors,
each holding one :class:`Cascade`, reading, segmenting and encoding an image's pictures → this process,
which writes them (``runtime.segment.write_all``: all of an image's files or none, the summary, Ctrl-C)
exactly as lc-run does, so the outputs are the same bytes.

Workers read the images at the paths this process passes them, so on a cluster the inputs must be
on a filesystem every node sees at the same path; the outputs travel back through Ray's object
store and only this process writes. An actor that dies is restarted by Ray and its images retried;
nothing is written for an image until its pictures are here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from layercascade.contract import RhoClassLike, RhoLike
from layercascade.errors import LCError, fail
from layercascade.runtime.segment import (
    OUTPUTS,
    Outcome,
    ImageOptions,
    Run,
    Segmented,
    failure_reason,
    segment_file,
    write_all,
)
from layercascade.serve import connect, gpus_per_model, last_line

# The columns holding an image's encoded pictures, one per OUTPUTS variant ("" is the label map).
FILE_COLUMNS = {variant: f"file{variant}" for variant in OUTPUTS}


class SegmentWorker:
    """A Ray Data actor: one Cascade, a batch of (index, path) rows in, their outcomes out."""

    def __init__(self, model: str | None, load: dict[str, Any], rho: RhoLike | None, read: ImageOptions,
                 rho_class: RhoClassLike | None = None) -> None:
        from layercascade.runtime.cascade import Cascade

        self.cascade = Cascade.load(model, **load)
        self.rho, self.rho_class = rho, rho_class
        self.read = read

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, list[Any]] = {"index": [], "error": [], "record": [], **{c: [] for c in FILE_COLUMNS.values()}}
        for index, path in zip(batch["index"], batch["path"], strict=True):
            try:
                done = segment_file(self.cascade, Path(path), self.rho, self.read, self.rho_class)
                error, record, files = "", json.dumps(done.record), done.files
            except LCError as failure:  # the reason only: the driver names the input as the user did
                error, record, files = failure_reason(failure, Path(path)), "", dict.fromkeys(OUTPUTS, b"")
            columns["index"].append(int(index))
            columns["error"].append(error)
            columns["record"].append(record)
            for variant, column in FILE_COLUMNS.items():
                columns[column].append(files[variant])
        return {name: np.array(values, dtype=object if name != "index" else np.int64)
                for name, values in columns.items()}


def segment_all_ray(model: str | None, load: dict[str, Any], paths: list[Path], out: Path, *, rho: RhoLike | None,
                    strict: bool, progress: bool, read: ImageOptions = ImageOptions(),
                    earlier: dict[str, str] | None = None, address: str | None = None,
                    workers: int | None = None, rho_class: RhoClassLike | None = None) -> Run:
    """:func:`~layercascade.runtime.segment.segment_all` with the images segmented by ``workers`` Ray
    actors (default: one per CPU of the cluster, or per GPU for a model on a GPU), each loading the model with ``load``
    (``Cascade.load``'s keyword arguments). Joins the cluster at ``address`` or starts a local Ray."""
    # Ray's C++ core tells this process's stderr, at error level, that Ray Data's actors keep their
    # constructor arguments in the object store (a note, not a failure: failures raise in Python).
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    started_ray = connect(address)
    try:
        return write_all(outcomes(model, load, paths, rho, read, workers, rho_class), paths, out, strict=strict,
                         progress=progress, earlier=earlier)
    finally:
        if started_ray:
            ray.shutdown()


def outcomes(model: str | None, load: dict[str, Any], paths: list[Path], rho: RhoLike | None, read: ImageOptions,
             workers: int | None, rho_class: RhoClassLike | None = None) -> Iterator[Outcome]:
    """The pipeline's results in input order, as :func:`write_all` takes them."""
    context = ray.data.DataContext.get_current()
    # Ray Data's progress lines would break lc-run's bar (its logging is configured on import: set after).
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context.execution_options.preserve_order = True  # the summary and a --strict stop follow input order
    context.enable_progress_bars = False  # write_all has its own
    gpus, resources = gpus_per_model(model, load), ray.cluster_resources()
    if gpus and not resources.get("GPU"):
        fail("the model runs on a GPU and this Ray cluster has none; run lc-run --ray on a cluster with GPUs")
    workers = workers or max(1, int(resources.get("GPU" if gpus else "CPU", 1)))
    # Absolute paths: workers on other nodes resolve relative ones against their own working directory.
    dataset = ray.data.from_items([{"index": index, "path": str(path.resolve())} for index, path in enumerate(paths)])
    # Ray Data's actors are restarted when they die and their tasks retried, as often as it takes (its
    # defaults: max_restarts = max_task_retries = -1).
    dataset = dataset.map_batches(
        SegmentWorker, fn_constructor_kwargs={"model": model and str(Path(model).resolve()), "load": load, "rho": rho,
                                              "read": read, "rho_class": rho_class},
        batch_size=1, concurrency=workers, num_cpus=1, num_gpus=gpus, batch_format="numpy")
    try:
        for row in dataset.iter_rows():
            index = int(row["index"])
            if row["error"]:
                yield index, LCError(f"{paths[index]}: {row['error']}")
            else:
                record = {**json.loads(row["record"]), "input": str(paths[index])}  # as the user named it
                yield index, Segmented(record, {variant: bytes(row[column]) for variant, column in FILE_COLUMNS.items()})
    except ray.exceptions.RayError as error:
        cause = error.cause if isinstance(getattr(error, "cause", None), LCError) else None
        raise LCError(str(cause) if cause else f"the Ray pipeline failed: {last_line(error)}") from None
