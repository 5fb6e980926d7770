"""The ONNX Runtime backend's loader: a model dir into a backend, and each graph into a session.

One step per concern: :func:`load` reads and verifies the model dir; :func:`prepare` rewrites a
graph (RegionConv lowering, the INT8 rewrites of ``int8.py``); :func:`load_runner` picks the
kernels' settings, folds the INT8 stem's reorders (``layout.py``) and opens the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from layercascade.errors import fail
from layercascade.export.graph import load_onnx
from layercascade.export.session import CPU, inference_session, providers_for, session_options
from layercascade.manifest import read_cascade_manifest
from layercascade.runtime.backend import dense_file, lowered_graph, model_precision
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.runtime.ort.int8 import int8_conv_inputs, mean_as_zero_point, rectified_outputs, relu_as_uint8
from layercascade.runtime.ort.runner import OrtRunner

if TYPE_CHECKING:
    from layercascade.runtime.ort.backend import OrtBackend


def load(model_dir: str | Path | None, device: str = "cpu", lower: bool = True, threads: int = 0,
         precision: str | None = None, uint8_activations: bool = True) -> tuple[Path, dict[str, Any], OrtBackend]:
    """``Cascade.load(..., backend="ort")``: (model dir, its verified manifest, the backend);
    ``None`` is the bundled demo model. ``precision``, if given, must be the dir's own: fp32, or int8 for
    an INT8 dir from lc-calibrate."""
    from layercascade.runtime.ort.backend import OrtBackend  # it opens its sessions through this module

    model_dir = Path(model_dir) if model_dir is not None else DEMO_MODEL
    manifest = read_cascade_manifest(model_dir)
    own = model_precision(manifest)
    if precision not in (None, own):
        elsewhere = {"fp32": f"its fp32 source is {manifest.get('quantization', {}).get('source')}",
                     "int8": f"make an INT8 dir with lc-calibrate {model_dir} -o DIR_INT8"}
        fail(f"--precision {precision}: the ort backend runs a model dir at its own precision, {own} for {model_dir}; "
             + elsewhere.get(precision, "lc-doctor and lc-run --help list the backends that have it"))
    return model_dir, manifest, OrtBackend(model_dir, manifest, device, lower, threads, uint8_activations)


def dense_peer(source: Path, manifest: dict[str, Any], threads: int) -> tuple[OrtRunner, str]:
    """lc-bench's ONNX Runtime peer: the model dir's ``dense.onnx`` in one session at the dir's precision, as fast
    as ONNX Runtime runs it (an INT8 dir's with the INT8 rewrites the cascade gets; an fp32 graph as it is)."""
    return load_runner(dense_file(source, manifest, "ort"), lower=False, threads=threads), model_precision(manifest)


@dataclass
class PreparedGraph:
    """A graph as ONNX Runtime gets it, and what the preparation learnt about it."""

    model: onnx.ModelProto
    lowered: bool
    rectified_outputs: frozenset[str]


def prepare(model: onnx.ModelProto, name: str, lower: bool = True, non_negative_inputs: frozenset[str] = frozenset(),
            uint8_activations: bool = True) -> PreparedGraph:
    """``model`` rewritten for ONNX Runtime's CPU kernels.

    Args:
        name: the graph's file name, for the warning when the lowering cannot cover it.
        lower: run RegionConv in compact row form (else its function body).
        non_negative_inputs: graph inputs another stage produced by a ReLU.
        uint8_activations: INT8 graphs: non-negative activations as uint8 (``int8.relu_as_uint8``),
            so ONNX Runtime fuses Conv + ReLU + Q and runs its fast u8·s8 kernels; False runs the
            activations as written (int8). No effect on fp32 graphs.
    """
    rectified = rectified_outputs(model)
    lowered = False
    if lower:
        model, lowered = lowered_graph(model, name)
    if uint8_activations:
        model = relu_as_uint8(model, non_negative_inputs)
    return PreparedGraph(mean_as_zero_point(model), lowered, rectified)


def load_runner(source: Path | onnx.ModelProto, device: str = "cpu", lower: bool = True, threads: int = 0,
                non_negative_inputs: frozenset[str] = frozenset(), label: str | None = None,
                profile_prefix: Path | None = None, fold_layout: bool = True,
                uint8_activations: bool = True) -> OrtRunner:
    """An :class:`OrtRunner` of ``source`` (an ONNX file, or a model already loaded: ``label`` then
    names it in messages); errors of ONNX Runtime become one line naming it.

    ``fold_layout``: on the CPU, fold the reorders around INT8 stems in ONNX Runtime's optimized
    graph (``layout.fold_stem_reorders``).
    """
    path = Path(label if label is not None else source)
    model = load_onnx(source) if isinstance(source, (str, Path)) else source
    graph = prepare(model, path.name, lower, non_negative_inputs, uint8_activations)
    # On x86 CPUs without VNNI ONNX Runtime turns int8 activations into uint8 + 128 for its u8·s8
    # kernels, whose 16-bit pair sums then saturate; u8·u8 does not. So INT8 graphs whose convs
    # still read int8 activations (e.g. calibrated before the stem stayed float) get u8·u8.
    # With uint8 activations (zero point 0, mostly small values) u8·s8 is exact in practice and
    # faster (docs/results.md). Lowered graphs never get u8·u8: ONNX Runtime 1.32 would turn the
    # s8 weights into u8 before fusing QGemm, and the GEMMs would stay float.
    u8u8 = not graph.lowered and int8_conv_inputs(graph.model)
    providers = providers_for(device)
    try:
        prepared, folded = graph.model, None
        if fold_layout and providers == CPU:
            from layercascade.runtime.ort.layout import fold_stem_reorders

            folded = fold_stem_reorders(graph.model, session_options(threads, u8u8))
        if folded is not None:  # already optimized (and rewritten): load as it is
            prepared = folded
        session = inference_session(prepared, session_options(threads, u8u8, folded is None, profile_prefix),
                                    providers)
    except Exception as error:  # noqa: BLE001 - ORT reports invalid graphs as generic exceptions
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        fail(f"{path}: ONNX Runtime cannot load it ({first_line.strip()})")
    return OrtRunner(session, path, graph.lowered, graph.rectified_outputs, layout_folded=folded is not None)

