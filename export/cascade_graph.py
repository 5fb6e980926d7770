"""The three stage graphs of a model dir joined into one ONNX graph: the whole cascade.

ONNX Runtime runs the cascade faster as one session than as three chained ones: one call,
one thread pool that stays warm across the stage boundaries, no stage outputs copied out to
numpy and back, and the lowering (``lowering.py``) sees across the boundaries, so stage 2's
rows feed stage 3's region convs without a round trip through dense NCHW.

The stage contract names (``feat1``, ``mask2``, ``scores2``, ...) join the graphs; every
other name gets its stage's prefix (``stage2/...``), so node names stay readable. Each of stages
1 and 2 has its own threshold input ``rho``; joined they are ``rho2`` (ρ₂, stage 1's) and ``rho3``
(ρ₃, stage 2's), so the two thresholds stay separate run-time inputs. With
``forced_masks`` the masks are graph inputs instead of thresholds (benchmarks at chosen
active fractions); the threshold nodes are then dropped.
"""

from __future__ import annotations

import onnx
from onnx import helper

from layercascade.contract import CONFIDENCE, IMAGE, LABELS, MASKS, RHO, STAGE_COUNTS, STAGE_RHOS
from layercascade.export.graph import live_nodes


def cascade_graph(stages: list[onnx.ModelProto], forced_masks: bool = False) -> onnx.ModelProto:
    """One graph: ``image``, ``rho2``, ``rho3`` (and with ``forced_masks`` ``mask2``, ``mask3``) →
    ``labels``, ``stage_counts``, ``confidence`` where stage 3 has it (a model dir exported before it has not), and
    otherwise ``mask2``, ``mask3``."""
    contract = {v.name: v for stage in stages for v in [*stage.graph.input, *stage.graph.output]}
    if RHO in contract:
        for joined_name in STAGE_RHOS:
            contract[joined_name] = onnx.ValueInfoProto()
            contract[joined_name].CopyFrom(contract[RHO])
            contract[joined_name].name = joined_name
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    for index, stage in enumerate(stages):
        prefix = f"stage{index + 1}/"
        # Stage k's own threshold: ρ₂ for stage 1, ρ₃ for stage 2 (stage 3 takes none).
        stage_rho = STAGE_RHOS[index] if index < len(STAGE_RHOS) else prefix + RHO

        def rename(name: str) -> str:
            if name == RHO:
                return stage_rho
            return name if not name or name in contract else prefix + name

        for tensor in stage.graph.initializer:
            renamed = onnx.TensorProto()
            renamed.CopyFrom(tensor)
            renamed.name = rename(tensor.name)
            initializers.append(renamed)
        for node in stage.graph.node:
            if forced_masks and any(output in MASKS for output in node.output):
                continue  # the thresholds: the masks come in as inputs
            joined = onnx.NodeProto()
            joined.CopyFrom(node)
            joined.name = prefix + node.name
            joined.input[:] = [rename(name) for name in node.input]
            joined.output[:] = [rename(name) for name in node.output]
            nodes.append(joined)
    inputs = [IMAGE, *STAGE_RHOS, *(MASKS if forced_masks else ())]
    outputs = [LABELS, STAGE_COUNTS, *((CONFIDENCE,) if CONFIDENCE in contract else ()),
               *(() if forced_masks else MASKS)]
    missing = [name for name in [*inputs, *outputs] if name not in contract]
    if missing:
        raise ValueError(f"stage graphs without the contract tensors {missing}")
    nodes = live_nodes(nodes, set(outputs))
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, "lc_cascade", [contract[name] for name in inputs],
                              [contract[name] for name in outputs], [t for t in initializers if t.name in used],
                              doc_string="Layer Cascade: stages 1-3 joined (layercascade runtime)")
    functions = {(f.domain, f.name): f for stage in stages for f in stage.functions}
    opsets = {}
    for stage in stages:
        for opset in stage.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                             functions=list(functions.values()), ir_version=max(s.ir_version for s in stages),
                             producer_name="layercascade-runtime")
