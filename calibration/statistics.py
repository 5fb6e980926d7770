"""Activation statistics of a model dir's stage graphs, collected cascade-aware (docs/calibration.md).

The fp32 stage graphs run on the calibration images exactly as the cascade runs them
(stage 1's masks at the calibration ρ feed stages 2 and 3). Every tensor that will carry a
QuantizeLinear is recorded as a histogram by ONNX Runtime's own ``HistogramCollector``:

* stage 1 and the dense graph: all pixels;
* stages 2 and 3 (cascade-aware, the default): only the rows of the pixels that reach the
  stage (M₂, M₃). Outside its region a stage's tensors are exactly zero (the region semantics) or
  never read, so all-pixel statistics (``cascade_aware=False``, the naive calibration kept
  for the ablation) drown the real distribution in a spike at zero.

ONNX Runtime's calibrator classes run an augmented model and histogram whole tensors, so
they cannot see which pixels reach a stage; the fp32 graphs run here instead and hand the
gathered rows to ``HistogramCollector``, the calibrators' own statistics engine.

One signed histogram per tensor (the collector's ``entropy`` form: range ±max|x|, exact
min/max) serves every method: min-max reads the exact range, entropy runs on it as
collected, percentile on it folded to |x|. So statistics are cached once per model, data
and ρ, and a second run with another method reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from layercascade.contract import IMAGE, MASK2, MASK3, RHO, Rho, format_rho, threshold_count
from layercascade.errors import fail
from layercascade.export.graph import consumers_of, load_onnx
from layercascade.export.regionconv import DOMAIN as REGION_CONV_DOMAIN
from layercascade.export.regionconv import OP_TYPE as REGION_CONV_OP
from layercascade.export.session import inference_session
from layercascade.manifest import write_atomic

METHODS = ("minmax", "percentile", "entropy")
# Histogram resolution: 512 bins over ±max|x| (more as the range grows), searched for the
# KL-optimal threshold in 128 quantized bins (int8's positive half). ONNX Runtime's entropy
# search is a Python loop over the bins, so its time grows with their number.
NUM_BINS = 512
NUM_QUANTIZED_BINS = 128
PERCENTILE = 99.999
FORMAT_VERSION = 1
REGION_CONV = (REGION_CONV_DOMAIN, REGION_CONV_OP)


def is_conv(node: Any) -> bool:
    return (node.domain, node.op_type) in (REGION_CONV, ("", "Conv"))


def graph_files(manifest: dict[str, Any]) -> list[str]:
    """The ONNX files of a model dir: the stages in order, then the dense graph."""
    return [stage["file"] for stage in manifest["stages"]] + [manifest["dense"]["file"]]


def histogram_collector(method: str) -> Any:
    """ONNX Runtime's ``HistogramCollector`` for ``method`` at this module's resolution."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    return HistogramCollector(method=method, symmetric=True, num_bins=NUM_BINS, num_quantized_bins=NUM_QUANTIZED_BINS,
                              percentile=PERCENTILE, scenario="same")


def score_convs(model: Any) -> set[str]:
    """Names of the convs whose output no other conv reads, even through other ops: the heads'
    classifiers. They stay float: their scores decide which pixels go on to the next stage,
    and int8 error there moves pixels between stages (docs/results.md)."""
    consumers = consumers_of(model.graph.node)
    reaches: dict[str, bool] = {}

    def reaches_conv(tensor: str) -> bool:
        if tensor not in reaches:
            reaches[tensor] = False  # the graph is acyclic; this only stops revisits
            reaches[tensor] = any(is_conv(n) or any(reaches_conv(o) for o in n.output)
                                  for n in consumers.get(tensor, []))
        return reaches[tensor]

    return {n.name for n in model.graph.node if is_conv(n) and not reaches_conv(n.output[0])}


def image_convs(model: Any) -> set[str]:
    """Names of the convs that read the graph input ``image`` through no other conv: the stem.

    They stay float: with 3 input channels the int8 GEMM saves little, and on ONNX Runtime's CPU
    an int8 stem pulls the image normalisation (Sub, Div) into its NHWC layout, where the
    3-channel broadcasts run slower (docs/calibration.md).
    """
    consumers = consumers_of(model.graph.node)
    found: set[str] = set()
    pending, seen = [IMAGE], set()
    while pending:
        tensor = pending.pop()
        for node in consumers.get(tensor, []):
            if is_conv(node):
                found.add(node.name)
            elif node.name not in seen:
                seen.add(node.name)
                pending.extend(node.output)
    return found


def float_convs(model: Any) -> set[str]:
    """The convs an INT8 graph keeps in float: the heads' classifiers and the stem."""
    return score_convs(model) | image_convs(model)


def quantized_tensors(model: Any) -> list[str]:
    """Names of the float activations of ``model`` that the QDQ graph quantizes, in graph order.

    Standard graphs: every Conv input and output (ONNX Runtime fuses DQ → Conv → Q into
    QLinearConv). Region graphs: every RegionConv input X (its output goes on in float).
    Convs in :func:`float_convs` are not quantized.
    """
    names: list[str] = []
    kept_float = float_convs(model)
    for node in model.graph.node:
        if node.name in kept_float:
            continue
        if (node.domain, node.op_type) == REGION_CONV:
            wanted = [node.input[0]]
        elif node.domain == "" and node.op_type == "Conv":
            wanted = [node.input[0], node.output[0]]
        else:
            continue
        names += [name for name in wanted if name not in names]
    return names


def rows_at(tensor: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(N, C, h, w) → the (P, C) rows of the pixels where ``mask`` (N, 1, h, w) is set; all with None."""
    channels_last = np.moveaxis(tensor, 1, -1)
    if mask is None:
        return channels_last.reshape(-1, tensor.shape[1])
    return channels_last[mask[:, 0] > 0]


@dataclass
class Statistics:
    """Signed histograms of every quantized tensor (keys ``"stage2.onnx:feat1"``) and what made them.

    ``histograms[key]`` is the collector's tuple (counts, edges, min, max, threshold);
    ``meta`` records the model hash, data, image count, ρ and whether stages 2–3 were
    cascade-aware.
    """

    histograms: dict[str, tuple]
    meta: dict[str, Any]

    def digest(self) -> str:
        """sha256 over the histograms (names, counts, edges, ranges): identifies the statistics."""
        digest = hashlib.sha256()
        for key in sorted(self.histograms):
            digest.update(key.encode())
            for array in self.histograms[key]:
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def ranges(self, method: str, graph: str) -> dict[str, tuple[np.float32, np.float32]]:
        """Symmetric (−a, a) per tensor of ``graph`` for ``method`` (a = the clipping threshold)."""
        prefix = f"{graph}:"
        histograms = {k[len(prefix):]: v for k, v in self.histograms.items() if k.startswith(prefix)}
        if method == "minmax":
            amax = {name: max(abs(float(h[2])), abs(float(h[3]))) for name, h in histograms.items()}
        else:
            collector = histogram_collector(method)
            # The collector's own histogram_dict, filled from the cache: percentile reads |x| histograms
            # (counts, edges, min, max), entropy the signed ones as collected.
            collector.histogram_dict = {name: fold_absolute(h) if method == "percentile" else h
                                        for name, h in histograms.items()}
            quiet = open(os.devnull, "w")  # noqa: SIM115 - the collector prints progress lines
            with quiet, redirect_stdout(quiet):
                thresholds = collector.compute_collection_result()
            amax = {name: max(abs(float(t[0])), abs(float(t[1]))) for name, t in thresholds.items()}
        return {name: (np.float32(-a), np.float32(a)) for name, a in amax.items()}

    # -- the cache file ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the statistics as one ``.npz`` (no pickles), atomically."""
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps({**self.meta, "keys": list(self.histograms)}))}
        for k, (counts, edges, low, high, threshold) in enumerate(self.histograms.values()):
            arrays[f"counts{k}"] = counts
            arrays[f"edges{k}"] = edges
            arrays[f"range{k}"] = np.array([low, high, threshold], np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)

        write_atomic(path, lambda temporary: np.savez(temporary, **arrays))

    @classmethod
    def load(cls, path: Path) -> Statistics:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                histograms = {}
                for k, key in enumerate(meta.pop("keys")):
                    low, high, threshold = data[f"range{k}"]
                    histograms[key] = (data[f"counts{k}"], data[f"edges{k}"], low, high, threshold)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
            fail(f"{path}: not a layercascade calibration statistics file ({error}); delete it and run again")
        if meta.get("format") != FORMAT_VERSION:
            fail(f"{path}: statistics format {meta.get('format')!r}, this layercascade writes {FORMAT_VERSION}; "
                 "delete it and run again")
        return cls(histograms, meta)


def fold_absolute(histogram: tuple) -> tuple:
    """A signed histogram symmetric about 0 → the histogram of |x| (counts, edges, min, max)."""
    counts, edges, low, high, _ = histogram
    half = len(counts) // 2
    return counts[half:] + counts[:half][::-1], edges[half:], low, high


class _Recorder:
    """One fp32 graph in ONNX Runtime with its quantized tensors as extra outputs."""

    def __init__(self, path: Path) -> None:
        import onnx

        model = load_onnx(path)
        self.tensors = quantized_tensors(model)
        present = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                  for name in self.tensors if name not in present)
        self.session = inference_session(model)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {n: feeds[n] for n in self.inputs})))


def collect(model_dir: Path, manifest: dict[str, Any], images: Iterable[np.ndarray], count: int, rho: Rho,
            cascade_aware: bool, meta: dict[str, Any], progress: bool = True) -> Statistics:
    """Run the fp32 stage graphs (and the dense graph) on ``count`` batches ``images`` ((N, H, W, 3) uint8) at
    ``rho`` = (ρ₂, ρ₃).

    Stage k's tensors are recorded at the pixels that reach stage k (all pixels with
    ``cascade_aware=False``); stage 1 and the dense graph always at all pixels.
    """
    files = graph_files(manifest)
    recorders = [_Recorder(model_dir / name) for name in files]
    collectors = {name: histogram_collector("entropy") for name in files}
    # A uniform ρ per stage, as many as the graphs take (one per class, or one: exported before per-class thresholds).
    rho2, rho3 = (np.full(threshold_count(manifest), r, np.float32) for r in rho)
    reached = [0, 0]
    quiet = open(os.devnull, "w")  # noqa: SIM115 - HistogramCollector.collect prints a line per call
    with quiet, tqdm(total=count, desc="calibrating", unit="batch", disable=not progress, leave=False) as bar:
        for image in images:
            stage1, stage2, stage3, dense = recorders
            out1 = stage1.run({IMAGE: image, RHO: rho2})
            out2 = stage2.run({**out1, RHO: rho3})
            out3 = stage3.run({**out1, **out2})
            regions = (None, out1[MASK2], out2[MASK3], None)
            outputs = (out1, out2, out3, dense.run({IMAGE: image}))
            for k, (name, recorder, values, region) in enumerate(zip(files, recorders, outputs, regions)):
                if region is not None:
                    reached[k - 1] += int(region.sum())
                rows = {t: rows_at(values[t], region if cascade_aware else None) for t in recorder.tensors}
                rows = {t: r for t, r in rows.items() if r.size}
                if rows:
                    with redirect_stdout(quiet):
                        collectors[name].collect(rows)
            bar.update(1)
    for stage, pixels in zip((2, 3), reached):
        if pixels == 0:
            fail(f"no calibration image sent a pixel to stage {stage} at ρ = {format_rho(rho)}; "
                 "raise --rho or calibrate on more images")
    histograms = {f"{name}:{tensor}": histogram for name in files
                  for tensor, histogram in collectors[name].get_histogram_dict().items()}
    return Statistics(histograms, {**meta, "format": FORMAT_VERSION, "pixels_reaching": reached})
