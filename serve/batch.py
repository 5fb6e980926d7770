"""lc-run --ray: the images of a run segmented by a Ray Data pipeline — the paths → a pool of actors,
each holding one :class:`Cascade`, reading, segmenting and encoding an image's pictures → this process,
which writes them (``runtime.segment.write_all``: all of an image's files or none, the summary, Ctrl-C)
exactly as lc-run does, so the outputs are the same bytes. Then the videos, each a Ray task of its own
that loads the model and runs ``runtime.video.segment_video`` into OUT under the stem this process chose,
as lc-run does; this process lists them as they end.

Workers read the inputs at the paths this process passes them, so on a cluster the inputs must be
on a filesystem every node sees at the same path; an image's outputs travel back through Ray's object
store and only this process writes them, a video's are written by its task into OUT (which every node
must see too). An actor that dies is restarted by Ray and its images retried, a video task retried;
nothing is written for an image until its pictures are here, and a video's files are renamed into
place when it ends. Ctrl-C cancels the video tasks: each finalises its files and is listed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from layercascade.contract import RhoClassLike, RhoLike
from layercascade.errors import LCError, fail
from layercascade.runtime.inputs import Source
from layercascade.runtime.segment import (
    DEFAULT_OUTPUTS,
    ImageOptions,
    Outcome,
    Plan,
    Run,
    Segmented,
    VideoOptions,
    failure_reason,
    segment_file,
    segment_one_video,
    write_all,
)
from layercascade.serve import connect, gpus_per_model, last_line

if TYPE_CHECKING:
    from layercascade.runtime.video import VideoRun

# How long a cancelled video task may take to finalise its files (flush the encoders, rename).
CANCEL_WAIT_S = 60
def file_column(output: str) -> str:
    """The column holding an image's encoded ``output`` (an OUTPUTS name)."""
    return f"file_{output}"


class SegmentWorker:
    """A Ray Data actor: one Cascade, a batch of (index, path) rows in, their outcomes out."""

    def __init__(self, model: str | None, load: dict[str, Any], rho: RhoLike | None, read: ImageOptions,
                 outputs: tuple[str, ...] = DEFAULT_OUTPUTS, rho_class: RhoClassLike | None = None) -> None:
        from layercascade.runtime.cascade import Cascade

        self.cascade = Cascade.load(model, **load)
        self.rho, self.rho_class = rho, rho_class
        self.read = read
        self.outputs = outputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, list[Any]] = {"index": [], "error": [], "record": [],
                                         **{file_column(name): [] for name in self.outputs}}
        for index, path in zip(batch["index"], batch["path"], strict=True):
            try:
                done = segment_file(self.cascade, Path(path), self.rho, self.read, self.outputs, self.rho_class)
                error, record, files = "", json.dumps(done.record), done.files
            except LCError as failure:  # the reason only: the driver names the input as the user did
                error, record, files = failure_reason(failure, Path(path)), "", dict.fromkeys(self.outputs, b"")
            columns["index"].append(int(index))
            columns["error"].append(error)
            columns["record"].append(record)
            for name in self.outputs:
                columns[file_column(name)].append(files[name])
        return {name: np.array(values, dtype=object if name != "index" else np.int64)
                for name, values in columns.items()}


def segment_video_task(model: str | None, load: dict[str, Any], source: str, out: str, stem: str,
                       rho: RhoLike | None, read: ImageOptions, video: VideoOptions,
                       rho_class: RhoClassLike | None = None) -> VideoRun | str:
    """A Ray task: one video segmented into ``out`` by a Cascade of its own; its ``VideoRun``, or the reason
    it could not be read (a string: the driver names the input as the user did)."""
    from layercascade.runtime.cascade import Cascade

    with Cascade.load(model, **load) as cascade:
        try:
            return segment_one_video(cascade, Path(source), Path(out), stem, rho=rho, read=read, video=video,
                                     progress=False, rho_class=rho_class)
        except LCError as failure:
            return failure_reason(failure, Path(source))


def segment_all_ray(model: str | None, load: dict[str, Any], paths: list[Source], out: Path, *,
                    rho: RhoLike | None, strict: bool, progress: bool, read: ImageOptions = ImageOptions(),
                    earlier: dict[str, str] | None = None, address: str | None = None, workers: int | None = None,
                    video: VideoOptions = VideoOptions(), outputs: tuple[str, ...] = DEFAULT_OUTPUTS,
                    rho_class: RhoClassLike | None = None) -> Run:
    """:func:`~layercascade.runtime.segment.segment_all` with the images segmented by ``workers`` Ray
    actors (default: one per CPU of the cluster, or per GPU for a model on a GPU), each loading the model with ``load``
    (``Cascade.load``'s keyword arguments), then the videos by one Ray task each, ``workers`` at a time (files
    only: live sources are lc-run's to refuse). Joins the cluster at ``address`` or starts a local Ray."""
    # Ray's C++ core tells this process's stderr, at error level, that Ray Data's actors keep their
    # constructor arguments in the object store (a note, not a failure: failures raise in Python).
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    plan = Plan.make(paths, out, earlier, outputs)
    started_ray = connect(address)
    try:
        return write_all(outcomes(model, load, paths, rho, read, workers, plan, out, video, rho_class), paths, out,
                         plan, strict=strict, progress=progress)
    finally:
        if started_ray:
            ray.shutdown()


def outcomes(model: str | None, load: dict[str, Any], paths: list[Source], rho: RhoLike | None, read: ImageOptions,
             workers: int | None, plan: Plan, out: Path, video: VideoOptions,
             rho_class: RhoClassLike | None = None) -> Iterator[Outcome]:
    """The images' results in input order, then the videos' as they end, as :func:`write_all` takes them.
    The videos run after the images' actors are gone: a video task waiting for the CPU (or GPU) an idle actor
    holds would wait for ever while this process waits for that video."""
    gpus, resources = gpus_per_model(model, load), ray.cluster_resources()
    if gpus and not resources.get("GPU"):
        fail("the model runs on a GPU and this Ray cluster has none; run lc-run --ray on a cluster with GPUs")
    workers = workers or max(1, int(resources.get("GPU" if gpus else "CPU", 1)))
    # Absolute paths: workers on other nodes resolve relative ones against their own working directory.
    model = model and str(Path(model).resolve())
    try:
        images = [index for index, is_video in enumerate(plan.videos) if not is_video]
        if images:
            yield from image_outcomes(model, load, paths, images, rho, read, gpus, workers, plan.outputs, rho_class)
        task = ray.remote(segment_video_task).options(num_cpus=1, num_gpus=gpus)
        waiting = [index for index, is_video in enumerate(plan.videos) if is_video]
        running: dict[ray.ObjectRef, int] = {}  # at most `workers` videos at once
        try:
            while waiting or running:
                while waiting and len(running) < workers:
                    index = waiting.pop(0)
                    running[task.remote(model, load, str(Path(paths[index]).resolve()), str(out.resolve()),
                                        plan.stems[index], rho, read, video, rho_class)] = index
                [ready], _ = ray.wait(list(running))
                index = running.pop(ready)
                yield index, video_outcome(ray.get(ready), paths[index])
        except KeyboardInterrupt:
            # Each video task takes the Ctrl-C as segment_video does (its files finalised, listed as interrupted).
            for ref in running:
                ray.cancel(ref)
            for ref, index in list(running.items()):
                try:
                    yield index, video_outcome(ray.get(ref), paths[index])
                except ray.exceptions.RayError:
                    pass  # cancelled before its video opened: nothing written
                # Done: not cancelled a second time below (Ray 2.60's core worker can abort the driver, "Tried to
                # complete task that was not pending", when a task is cancelled again as its reply arrives).
                del running[ref]
            raise
        finally:
            # The generator closed early (--strict, a stop, a Ctrl-C between two videos): no task goes on
            # writing, and each running one has finalised its files before a Ray this process started ends.
            for ref in running:
                ray.cancel(ref)
            if running:
                ray.wait(list(running), num_returns=len(running), timeout=CANCEL_WAIT_S)
    except ray.exceptions.RayError as error:
        cause = error.cause if isinstance(getattr(error, "cause", None), LCError) else None
        raise LCError(str(cause) if cause else f"the Ray pipeline failed: {last_line(error)}") from None


def video_outcome(done: VideoRun | str, source: Source) -> VideoRun | LCError:
    """A video task's result as an outcome: its ``VideoRun``, or the reason it failed as an :class:`LCError`."""
    return LCError(f"{source}: {done}") if isinstance(done, str) else done


def image_outcomes(model: str | None, load: dict[str, Any], paths: list[Source], images: list[int],
                   rho: RhoLike | None, read: ImageOptions, gpus: float, workers: int,
                   outputs: tuple[str, ...], rho_class: RhoClassLike | None = None) -> Iterator[Outcome]:
    """The images' results (``images``: their indices in ``paths``) from a Ray Data pipeline, in input order."""
    context = ray.data.DataContext.get_current()
    # Ray Data's progress lines would break lc-run's bar (its logging is configured on import: set after).
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context.execution_options.preserve_order = True  # the summary and a --strict stop follow input order
    context.enable_progress_bars = False  # write_all has its own
    dataset = ray.data.from_items([{"index": index, "path": str(Path(paths[index]).resolve())} for index in images])
    # Ray Data's actors are restarted when they die and their tasks retried, as often as it takes (its
    # defaults: max_restarts = max_task_retries = -1).
    dataset = dataset.map_batches(
        SegmentWorker, fn_constructor_kwargs={"model": model, "load": load, "rho": rho, "read": read,
                                              "outputs": outputs, "rho_class": rho_class},
        batch_size=1, concurrency=min(workers, len(images)), num_cpus=1, num_gpus=gpus, batch_format="numpy")
    for row in dataset.iter_rows():
        index = int(row["index"])
        if row["error"]:
            yield index, LCError(f"{paths[index]}: {row['error']}")
        else:
            record = {**json.loads(row["record"]), "input": str(paths[index])}  # as the user named it
            yield index, Segmented(record, {name: bytes(row[file_column(name)]) for name in outputs})
