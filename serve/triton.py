"""lc-triton: a Triton Inference Server model repository of a model dir or an engine dir.

* An ONNX model dir becomes one model: the three stage graphs joined and lowered to standard ONNX
  ops (what the ONNX Runtime / OpenVINO backends run), with inputs ``image``, ``rho2`` and ``rho3``
  and outputs ``labels``, ``stage_counts`` and ``confidence`` (stage resolution; none from a model dir exported
  before lc.json version 3). For Triton's ``onnxruntime`` backend it is
  ``model.onnx``; for its ``openvino`` backend the OpenVINO IR (``model.xml`` + ``model.bin``). A
  dynamic-batch export gets Triton's dynamic batching: every request then carries its own thresholds
  (shape [C] each per image, one per class; [1] for an export from before per-class thresholds; the graph
  compares each image's pixels with its own), so requests with
  different thresholds batch together. A dynamic-size export (lc-export --dynamic-size) has -1 for the
  image's and the labels' height and width; a client sends sizes the export takes (multiples of 8 within
  the bounds ``lc-triton.json`` records), padding as ``Cascade`` does.
* An engine dir (lc-build) becomes an ensemble of the three stage plans (``tensorrt_plan``), wired
  by tensor name (stage 1's ``rho`` is the ensemble's ``rho2``, stage 2's ``rho3``). Its stage graphs
  take one set of thresholds (one per class) each for the whole batch, so the ensemble has no
  Triton batching (``max_batch_size: 0``): a client sends a whole batch at once. Dimensions the engines
  take in a range (the batch, and a dynamic-size export's heights and widths) are -1; the plans'
  optimization profile bounds them (``lc-triton.json`` records it).

Each model folder holds ``lc-triton.json`` (what it was made from); an existing folder is
replaced only if it holds one, so other models in the repository are never touched. No Triton
server ran where this was written: ``docs/serving.md`` says what was checked.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.contract import CONFIDENCE, LABELS, RHO, STAGE_COUNTS, STAGE_RHOS
from layercascade.errors import fail
from layercascade.manifest import check_folder_target, read_manifest, replace_folder, sha256_file, staging_folder
from layercascade.runtime.trt.engines import METADATA, is_engine_dir, read_metadata
from layercascade.version import __version__

PLATFORMS = ("onnxruntime", "openvino", "tensorrt")
MARKER = "lc-triton.json"
# Triton's data types of the tensor types our graphs use.
TRITON_TYPES = {"uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "float16": "TYPE_FP16", "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}
ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


@dataclass
class Tensor:
    """One input or output of a Triton model: name, numpy dtype name and dims (-1: variable)."""

    name: str
    dtype: str
    dims: list[int]

    def pbtxt(self) -> str:
        if self.dtype not in TRITON_TYPES:
            fail(f"tensor {self.name!r} has type {self.dtype}, which lc-triton does not map to a Triton type")
        dims = ", ".join(str(d) for d in self.dims)
        return f'  {{\n    name: "{self.name}"\n    data_type: {TRITON_TYPES[self.dtype]}\n    dims: [ {dims} ]\n  }}'


@dataclass
class ModelConfig:
    """A ``config.pbtxt`` (the fields lc-triton writes), in protobuf text format."""

    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    platform: str = ""
    backend: str = ""
    max_batch_size: int = 0
    instances: tuple[int, str] | None = None  # (count, KIND_CPU | KIND_GPU)
    batch_delay_us: int | None = None  # dynamic batching's queue delay; None: no dynamic batching
    default_model_filename: str = ""
    ensemble_steps: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        lines = [f'name: "{self.name}"']
        if self.platform:
            lines.append(f'platform: "{self.platform}"')
        if self.backend:
            lines.append(f'backend: "{self.backend}"')
        if self.default_model_filename:
            lines.append(f'default_model_filename: "{self.default_model_filename}"')
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines.append("input [\n" + ",\n".join(t.pbtxt() for t in self.inputs) + "\n]")
        lines.append("output [\n" + ",\n".join(t.pbtxt() for t in self.outputs) + "\n]")
        if self.batch_delay_us is not None:
            lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {self.batch_delay_us}\n}}")
        if self.instances is not None:
            lines.append(f"instance_group [\n  {{\n    count: {self.instances[0]}\n    kind: {self.instances[1]}\n  }}\n]")
        if self.ensemble_steps:
            steps = []
            for step in self.ensemble_steps:
                maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in step["inputs"].items()]
                maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in step["outputs"].items()]
                steps.append(f'    {{\n      model_name: "{step["model"]}"\n      model_version: -1\n'
                             + "\n".join(maps) + "\n    }")
            lines.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
        return "\n".join(lines) + "\n"


def model_name(text: str) -> str:
    """A Triton model name: letters, digits, '_', '-' and '.' only."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "layercascade"
    return name


def write_repository(source: Path | None, repository: Path, platform: str | None = None, name: str | None = None,
                     max_batch: int | None = None, instances: int = 1, batch_delay_us: int = 5000) -> list[Path]:
    """Write the Triton model(s) of ``source`` (a model dir or an engine dir; None: the demo model) into
    ``repository``; returns the model folders written. ``platform``: default ``tensorrt`` for an engine
    dir, else ``onnxruntime``; ``max_batch``: Triton's max_batch_size for a dynamic-batch export
    (default: the export's maximum)."""
    from layercascade.runtime.inputs import DEMO_MODEL

    source = Path(source) if source is not None else DEMO_MODEL
    engines = is_engine_dir(source)
    platform = platform or ("tensorrt" if engines else "onnxruntime")
    if platform not in PLATFORMS:
        fail(f"unknown platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
    if (platform == "tensorrt") != engines:
        fail(f"{source}: {'an engine dir (lc-build) runs on' if engines else 'a model dir runs on'} "
             f"{'--platform tensorrt' if engines else '--platform onnxruntime or openvino'}"
             f"{'' if engines else '; build engines with lc-build for tensorrt'}")
    if instances < 1:
        fail(f"--instances must be at least 1, got {instances}")
    if batch_delay_us < 0:
        fail(f"--batch-delay-us must be 0 or more, got {batch_delay_us}")
    name = model_name(name or ("demo" if source == DEMO_MODEL else source.resolve().name))
    if engines:
        models = ensemble_models(source, name, instances)
    else:
        models = [graph_model(source, name, platform, max_batch, instances, batch_delay_us)]
    check_folder_target(repository, "choose another -o for the repository")
    for folder, _ in models:
        check_replaceable(repository / folder)
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"{repository}: cannot create the repository folder ({error.strerror or error}); choose another -o")
    return [install(repository, folder, write) for folder, write in models]


def check_replaceable(folder: Path) -> None:
    if folder.exists() and not (folder / MARKER).is_file():
        fail(f"{folder}: exists and was not written by lc-triton; choose another --name or -o")


def install(repository: Path, folder: str, write: Any) -> Path:
    """Write one model folder in a staging folder beside it, then put it in place (replacing an earlier
    lc-triton folder of the name)."""
    target = repository / folder
    staging = staging_folder(target)
    try:
        write(staging)
        check_replaceable(target)
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def marker(source: Path, platform: str, **details: Any) -> str:
    manifest_path = source / ("lc.json" if not is_engine_dir(source) else METADATA)
    return json.dumps({"source": str(source.resolve()), "source_sha256": sha256_file(manifest_path),
                       "platform": platform, "layercascade": __version__, **details}, indent=1) + "\n"


# -- a model dir: one model of the joined, lowered graph --------------------------------------------
def triton_graph(source: Path, manifest: dict[str, Any], platform: str, batched: bool) -> Any:
    """The joined, lowered cascade graph as Triton gets it: only ``labels``, ``stage_counts`` and (where the export
    has it) ``confidence`` out, no custom-op functions left, and (``batched``) each threshold input taken per
    image."""
    import onnx

    from layercascade.export.graph import check_stage_graphs, load_onnx
    from layercascade.export.lowering import LoweringUnsupported, lower_region_convs
    from layercascade.runtime.backend import join_stage_graphs
    from layercascade.runtime.ort.loader import prepare

    graphs = [load_onnx(source / stage["file"]) for stage in manifest["stages"]]
    check_stage_graphs(source, manifest, graphs)
    joined = join_stage_graphs(source, graphs)
    # ONNX Runtime gets exactly what the ort backend runs (its INT8 rewrites included); OpenVINO the lowering.
    if platform == "onnxruntime":
        model = prepare(joined, f"{source}/stages 1-3").model
    else:
        try:
            model = lower_region_convs(joined)
        except LoweringUnsupported as reason:
            fail(f"{source}: its RegionConv layers cannot be lowered to standard ops ({reason}), which Triton's "
                 "openvino backend needs")
    if any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        fail(f"{source}: its RegionConv layers could not be lowered to standard ops, which Triton's "
             f"{platform} backend needs; re-export the model")
    kept = [output for output in model.graph.output if output.name in (LABELS, STAGE_COUNTS, CONFIDENCE)]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    del model.functions[:]
    kept_opsets = [opset for opset in model.opset_import if opset.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept_opsets)
    if batched:
        per_image_thresholds(model)
    onnx.checker.check_model(model)
    return model


def per_image_thresholds(model: Any) -> None:
    """The thresholds (``rho2``, ``rho3``) become one set per image, (N, C) (one per class; (N, 1) for a graph
    exported before per-class thresholds), so each image's pixels are compared with its own: a pixel's threshold
    is its winner's in its image's row (``Gather`` of the rows flattened, at winner + C · image), or, for one
    threshold, the row reshaped to (N, 1, 1, 1) where the graph reads it."""
    import onnx
    from onnx import helper

    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    constants = model.graph.initializer
    for graph_input in (i for i in model.graph.input if i.name in STAGE_RHOS):
        name = graph_input.name
        dims = graph_input.type.tensor_type.shape.dim
        classes = dims[0].dim_value
        readers = [node for node in model.graph.node if name in node.input]
        prologue = []
        if classes > 1 and all(n.op_type == "Gather" and list(n.input).index(name) == 0 for n in readers):
            # rows flattened: image n's class c at n · C + c
            flat, count, offsets = f"{name}/flat", f"{name}/images", f"{name}/offsets"
            constants.extend([onnx.numpy_helper.from_array(np.array(v, np.int64), f"{name}/{k}") for k, v in
                              (("flat_shape", [-1]), ("zero", 0), ("step", 1), ("classes", classes),
                               ("offsets_shape", [-1, 1, 1, 1]))])
            prologue = [
                helper.make_node("Reshape", [name, f"{name}/flat_shape"], [flat], name=flat),
                helper.make_node("Shape", [name], [f"{name}/shape"], name=f"{name}/shape", end=1),
                helper.make_node("Squeeze", [f"{name}/shape"], [count], name=count),
                helper.make_node("Range", [f"{name}/zero", count, f"{name}/step"], [f"{name}/index"],
                                 name=f"{name}/index"),
                helper.make_node("Mul", [f"{name}/index", f"{name}/classes"], [f"{name}/starts"],
                                 name=f"{name}/starts"),
                helper.make_node("Reshape", [f"{name}/starts", f"{name}/offsets_shape"], [offsets], name=offsets),
            ]
            for node in readers:
                winner = node.input[1]
                shifted = f"{node.name}/per_image_index"
                model.graph.node.insert(list(model.graph.node).index(node),
                                        helper.make_node("Add", [winner, offsets], [shifted], name=shifted))
                node.input[:] = [flat, shifted]
        else:
            per_image, shape = f"{name}/per_image", f"{name}/per_image_shape"
            for node in readers:
                node.input[:] = [per_image if value == name else value for value in node.input]
            constants.append(onnx.numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), shape))
            prologue = [helper.make_node("Reshape", [name, shape], [per_image], name=per_image)]
        for node in reversed(prologue):
            model.graph.node.insert(0, node)
        del dims[:]
        dims.add().CopyFrom(batch)
        dims.add().dim_value = classes


def tensors_of(values: Any, batched: bool) -> list[Tensor]:
    """The Triton tensors of graph inputs or outputs (the batch dimension left out when ``batched``)."""
    tensors = []
    for value in values:
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        tensors.append(Tensor(value.name, ONNX_TYPES.get(tensor_type.elem_type, str(tensor_type.elem_type)),
                              dims[1:] if batched else dims))
    return tensors


def graph_model(source: Path, name: str, platform: str, max_batch: int | None, instances: int,
                batch_delay_us: int) -> tuple[str, Any]:
    manifest = read_manifest(source)
    if "stages" not in manifest:
        fail(f"{source}: holds only the dense network (lc-export --dense); export the cascade for lc-triton")
    batch = manifest["batch"]
    if batch["dynamic"]:
        capacity = batch.get("max")
        batch_size = int(max_batch or capacity or 8)
        if capacity and batch_size > capacity:
            fail(f"--max-batch {batch_size} is over the {capacity} images the model was exported for "
                 f"(lc-export --dynamic-batch)")
    else:
        if max_batch not in (None, batch["size"]):
            fail(f"{source}: exported for a fixed batch of {batch['size']}; Triton's batching needs "
                 f"lc-export --dynamic-batch {max_batch}")
        batch_size = 0  # the graph's own batch, whole: no Triton batching
    model = triton_graph(source, manifest, platform, batched=batch_size > 0)
    config = ModelConfig(
        name, tensors_of(model.graph.input, batch_size > 0), tensors_of(model.graph.output, batch_size > 0),
        backend=platform, max_batch_size=batch_size, instances=(instances, "KIND_CPU"),
        batch_delay_us=batch_delay_us if batch_size > 0 else None,
        default_model_filename="model.onnx" if platform == "onnxruntime" else "model.xml",
    )

    def write(folder: Path) -> None:
        version = folder / "1"
        version.mkdir()
        if platform == "onnxruntime":
            import onnx

            onnx.save(model, version / "model.onnx")
        else:
            save_openvino_ir(model, version / "model.xml")
        (folder / "config.pbtxt").write_text(config.text())
        sizes = {"dynamic_size": manifest["dynamic_size"]} if "dynamic_size" in manifest else {}
        (folder / MARKER).write_text(marker(source, platform, max_batch_size=batch_size, **sizes))

    return name, write


def save_openvino_ir(model: Any, path: Path) -> None:
    """The ONNX graph as OpenVINO IR (``model.xml`` + ``model.bin``), weights kept in fp32, with the layout
    rewrites the OpenVINO backend makes."""
    from layercascade.runtime.openvino.layout import openvino_layouts
    from layercascade.runtime.openvino.loader import core, import_openvino, openvino_reason

    openvino = import_openvino()
    try:
        converted = core().read_model(openvino_layouts(model).SerializeToString())
    except Exception as error:  # noqa: BLE001 - OpenVINO reports every failure as its own types
        fail(f"OpenVINO cannot read the cascade graph ({openvino_reason(error)})")
    openvino.save_model(converted, str(path), compress_to_fp16=False)


# -- an engine dir: an ensemble of the stage plans -----------------------------------------------------
def ensemble_tensor(name: str, stage: int) -> str:
    """The ensemble's tensor that stage ``stage``'s input ``name`` reads: its threshold is ρ₂ or ρ₃."""
    return STAGE_RHOS[stage - 1] if name == RHO and stage <= len(STAGE_RHOS) else name


def ensemble_models(source: Path, name: str, instances: int) -> list[tuple[str, Any]]:
    metadata = read_metadata(source)
    stages = [metadata["engines"][f"stage{k}"] for k in (1, 2, 3)]

    def tensors(specs: list[dict[str, Any]]) -> list[Tensor]:
        return [Tensor(spec["name"], spec["dtype"], [d if isinstance(d, int) else -1 for d in spec["shape"]])
                for spec in specs]

    models: list[tuple[str, Any]] = []
    steps = []
    for index, stage in enumerate(stages, start=1):
        stage_name = f"{name}_stage{index}"
        config = ModelConfig(stage_name, tensors(stage["inputs"]), tensors(stage["outputs"]), platform="tensorrt_plan",
                             instances=(instances, "KIND_GPU"), default_model_filename="model.plan")
        # Each stage graph's own `rho` is the ensemble's rho2 (stage 1) or rho3 (stage 2), as in the joined graph.
        steps.append({"model": stage_name,
                      "inputs": {t["name"]: ensemble_tensor(t["name"], index) for t in stage["inputs"]},
                      "outputs": {t["name"]: t["name"] for t in stage["outputs"]}})

        def write(folder: Path, stage: dict[str, Any] = stage, config: ModelConfig = config) -> None:
            (folder / "1").mkdir()
            shutil.copyfile(source / stage["file"], folder / "1" / "model.plan")
            (folder / "config.pbtxt").write_text(config.text())
            (folder / MARKER).write_text(marker(source, "tensorrt", engine=stage["file"]))

        models.append((stage_name, write))
    inputs = {ensemble_tensor(t.name, index): Tensor(ensemble_tensor(t.name, index), t.dtype, t.dims)
              for index, stage in enumerate(stages, start=1) for t in tensors(stage["inputs"])}
    outputs = {t.name: t for stage in stages for t in tensors(stage["outputs"])}
    produced = set(outputs)
    ensemble = ModelConfig(name, [t for n, t in inputs.items() if n not in produced],
                           [outputs[name] for name in (LABELS, STAGE_COUNTS, CONFIDENCE) if name in outputs],
                           platform="ensemble", ensemble_steps=steps)

    def write_ensemble(folder: Path) -> None:
        (folder / "1").mkdir()  # Triton wants a version folder, empty for an ensemble
        (folder / "config.pbtxt").write_text(ensemble.text())
        sizes = {"size_profile": metadata["size"]} if metadata.get("size") else {}
        (folder / MARKER).write_text(marker(source, "tensorrt", stages=[s for s, _ in models], **sizes))

    return [*models, (name, write_ensemble)]
