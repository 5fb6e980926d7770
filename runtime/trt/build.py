"""Build TensorRT engines from a model dir: one per stage graph plus the dense baseline.

Strongly typed networks (TensorRT 11 removed the FP16/INT8 builder flags; 10.x takes the
same graphs with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so the precision is
the ONNX graph's: fp32 as exported, fp16 through :func:`layercascade.export.fp16.convert_to_fp16`,
int8 as the QDQ graphs ``lc-calibrate`` writes. API as documented in the TensorRT Python API
reference (``trt.Builder``, ``create_network``, ``trt.OnnxParser.parse``,
``IBuilderConfig.set_memory_pool_limit`` / ``create_timing_cache`` / ``set_timing_cache`` /
``add_optimization_profile`` / ``IOptimizationProfile.set_shape`` / ``BuilderFlag.VERSION_COMPATIBLE``,
``build_serialized_network``) and checked by name against the ``tensorrt-cu13-bindings``
11.4 wheel; never run on a real TensorRT here (docs/build.md).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from layercascade.errors import LCError, fail
from layercascade.export.graph import check_stage_graphs, drop_unused_initializers, io_spec, load_onnx
from layercascade.manifest import MANIFEST, check_cascade_fields, read_manifest, write_atomic
from layercascade.plugins.nvidia import create_trt, gpu_info, import_tensorrt
from layercascade.plugins.trt_plugin import kernel_ptx_cuda, plugin_source_sha256, register_plugins
from layercascade.runtime.trt.check import Finding, check_graph, data_dependent_shapes
from layercascade.runtime.trt.engines import (
    PRECISIONS,
    MULTIPLE,
    BatchRange,
    BuiltEngine,
    Graph,
    Size,
    SizeRange,
    batch_range,
    check_output_dir,
    concrete_shape,
    graphs_of,
    profile_shapes,
    size_range,
    size_text,
    write_engine_dir,
)

WHO = "lc-build"


@dataclass(frozen=True)
class BuildOptions:
    """The lc-build flags: precision, timing cache file, workspace limit, largest batch, version compatibility,
    and the image sizes of a dynamic-size export (``--shapes``: (min, opt, max) of (H, W); None: the export's
    bounds with its nominal size as opt)."""

    precision: str
    timing_cache: Path | None = None
    workspace_gib: float | None = None
    max_batch: int | None = None
    version_compatible: bool = False
    shapes: tuple[Size, Size, Size] | None = None


@dataclass(frozen=True)
class Profile:
    """The optimization profile lc-build builds every engine of a model dir for."""

    batch: BatchRange
    sizes: SizeRange | None  # None: the export's fixed size

    def describe(self, manifest: dict[str, Any]) -> str:
        """One line: ``batch 1 … 4 (opt 4), images 32x32 … 2048x2048 (opt 160x160), stage tensors 4x4 … 256x256``."""
        batch = self.batch
        text = f"batch {batch.min}" if batch.min == batch.max else f"batch {batch.min} … {batch.max} (opt {batch.opt})"
        if self.sizes is None:
            return f"{text}, images {size_text(manifest['input_size'])} (a fixed-size export)"
        low, opt, high = self.sizes.min, self.sizes.opt, self.sizes.max
        stage = [size_text([n // MULTIPLE for n in size]) for size in (low, high)]
        return (f"{text}, images {size_text(low)} … {size_text(high)} (opt {size_text(opt)}), stage tensors "
                f"{stage[0]} … {stage[1]}")


def build_profile(manifest: dict[str, Any], max_batch: int | None = None,
                  shapes: tuple[Size, Size, Size] | None = None) -> Profile:
    """The batch range (``--max-batch``) and image sizes (``--shapes``) lc-build builds for: one line if the export
    does not take them."""
    return Profile(batch_range(manifest, max_batch), size_range(manifest, shapes))


def check_precision(manifest: dict[str, Any], model_dir: Path, precision: str) -> None:
    """INT8 needs the QDQ graphs of lc-calibrate; a QDQ dir builds only as int8."""
    if precision not in PRECISIONS:
        fail(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    quantized = "quantization" in manifest
    if precision == "int8" and not quantized:
        fail(f"{model_dir}: has no INT8 (QDQ) graphs; run lc-calibrate first (it writes a QDQ model dir), "
             "then lc-build that dir --precision int8")
    if quantized and precision != "int8":
        fail(f"{model_dir}: holds INT8 (QDQ) graphs from lc-calibrate; build it with --precision int8, or build "
             f"{precision} engines from the fp32 export")


def uint8_only_at_io(model: Any) -> Any:
    """The graph with uint8 tensors only at its inputs and outputs, each next to a float Cast.

    TensorRT's ``DataType.UINT8`` (Python API reference): uint8 network inputs must be cast to
    float32/float16 before other layers use them, uint8 outputs produced by a cast from
    float32/float16, and uint8 converts only to and from those. Our graphs build the label map in
    uint8 (cheaper on ONNX Runtime); here each uint8 input gets a Cast to float of its own, label
    casts and uint8 constants become float (class ids are exact), and
    one cast to uint8 writes each uint8 output. Values are unchanged.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from layercascade.export.fp16 import cast_output

    uint8 = TensorProto.UINT8
    for tensor in model.graph.initializer:
        if tensor.data_type == uint8:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    nodes = []
    for value in model.graph.input:
        if value.type.tensor_type.elem_type == uint8:
            as_float = f"{value.name}/float"
            nodes.append(helper.make_node("Cast", [value.name], [as_float], name=as_float, to=TensorProto.FLOAT))
            for node in model.graph.node:
                node.input[:] = [as_float if n == value.name else n for n in node.input]
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == uint8:
                attribute.i = TensorProto.FLOAT
        nodes.append(node)
    for value in model.graph.output:
        if value.type.tensor_type.elem_type == uint8:
            cast_output(nodes, value.name, f"{value.name}/float", uint8, f"{value.name}/to_uint8")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)  # a failure here is a bug of this pass
    return model


def constants_dequantized(model: Any) -> Any:
    """The graph with two kinds of constant DequantizeLinear (lc-calibrate writes both) replaced by
    float initializers of the same values, which TensorRT's parser takes where it takes no Q/DQ:

    * int32 biases (ONNX Runtime's quantizer quantizes them; TensorRT's DequantizeLinear takes
      only int8 / fp8 / fp4 / int4 data, and adds float biases in the conv's epilogue);
    * the int8 weights of ``lc::RegionConv``: the plugin then reads float weights as in fp32 builds
      (a per-channel DQ feeding a Python plugin directly is a combination TensorRT's samples never
      show); its activations still come through their Q/DQ pair, so it runs on the int8 values, in float.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    from layercascade.export import regionconv
    from layercascade.export.graph import attributes, consumers_of

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = consumers_of(graph.node)

    def plugin_weight(dequantize: Any) -> bool:
        readers = consumers.get(dequantize.output[0], [])
        return bool(readers) and all((r.domain, r.op_type) == (regionconv.DOMAIN, regionconv.OP_TYPE)
                                     and list(r.input).index(dequantize.output[0]) == 1 for r in readers)

    folded = [node for node in graph.node
              if node.op_type == "DequantizeLinear" and all(name in initializers for name in node.input if name)
              and (initializers[node.input[0]].data_type == TensorProto.INT32 or plugin_weight(node))]
    for dequantize in folded:
        data, scale, *zero = (numpy_helper.to_array(initializers[name]).astype(np.float64)
                              for name in dequantize.input if name)
        axis = attributes(dequantize).get("axis", 1) % data.ndim if data.ndim else 0
        shape = [-1 if k == axis else 1 for k in range(data.ndim)] if scale.ndim else []
        values = (data - (zero[0].reshape(shape) if zero else 0)) * scale.reshape(shape)
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), dequantize.output[0]))
        graph.node.remove(dequantize)
    drop_unused_initializers(graph)
    return model


def tensorrt_graph(graph: Graph, model_dir: Path, precision: str) -> Any:
    """The graph TensorRT parses: the file (fp16: converted; int8: constant biases and plugin weights
    dequantized, :func:`constants_dequantized`), uint8 only at its I/O."""
    from layercascade.export.fp16 import convert_to_fp16

    model = load_onnx(model_dir / graph.onnx)
    if precision == "fp16":
        model = convert_to_fp16(model)
    elif precision == "int8":
        model = constants_dequantized(model)
    return uint8_only_at_io(model)


def onnx_for(graph: Graph, model_dir: Path, precision: str) -> bytes:
    """:func:`tensorrt_graph`, serialized."""
    return tensorrt_graph(graph, model_dir, precision).SerializeToString()


def network_flags(trt: Any, uses_plugin: bool) -> int:
    """The network creation flags of lc-build (and of the smoke run's parse, so it parses the same)."""
    flag = trt.NetworkDefinitionCreationFlag
    flags = 1 << int(flag.STRONGLY_TYPED)
    if uses_plugin:
        # AOT: the RegionConv PTX is serialized into the engine, which then runs without Python
        # (tensorrt.plugin's aot_impl, TensorRT ≥ 10.9). The plugin has both implementations, and
        # without a preference its creator refuses to choose.
        flags |= 1 << int(flag.PREFER_AOT_PYTHON_PLUGINS)
    return flags


class _Builder:
    """One ``trt.Builder`` and a timing cache shared by the engines of one lc-build run."""

    def __init__(self, trt: Any, options: BuildOptions, profile: Profile, model_dir: Path) -> None:
        self.trt, self.options, self.profile, self.model_dir = trt, options, profile, model_dir
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = create_trt(trt, "Builder", self.logger, WHO)
        cache_bytes = b""
        if options.timing_cache is not None and options.timing_cache.is_file():
            cache_bytes = options.timing_cache.read_bytes()
        # A cache made with b"" starts empty; a file from an earlier run skips re-timing tactics.
        self.timing_cache = self.builder.create_builder_config().create_timing_cache(cache_bytes)

    def config(self, network: Any, graph: Graph) -> Any:
        trt, options = self.trt, self.options
        config = self.builder.create_builder_config()
        if options.workspace_gib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
        if not config.set_timing_cache(self.timing_cache, False):
            fail(f"{options.timing_cache}: TensorRT rejected the timing cache (another TensorRT or GPU); delete it")
        if options.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        add_profile(self.builder, config, network, graph, self.profile)
        return config

    def build(self, graph: Graph) -> BuiltEngine:
        trt = self.trt
        parsed = tensorrt_graph(graph, self.model_dir, self.options.precision)
        model = parsed.SerializeToString()
        uses_plugin = graph.name != "dense"
        network = self.builder.create_network(network_flags(self.trt, uses_plugin))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(model, str(self.model_dir / graph.onnx)):
            errors = "; ".join(str(parser.get_error(i)).splitlines()[0] for i in range(min(parser.num_errors, 3)))
            fail(f"{self.model_dir / graph.onnx}: TensorRT's ONNX parser rejected it ({errors})")
        plan = self.builder.build_serialized_network(network, self.config(network, graph))
        if plan is None:
            fail(f"{graph.onnx}: TensorRT could not build an engine (see its log above; a larger --workspace "
                 "may help)")
        return BuiltEngine(plan, hashlib.sha256(model).hexdigest(), data_dependent_shapes(parsed))

    def save_timing_cache(self) -> None:
        if self.options.timing_cache is not None:
            data = self.timing_cache.serialize()
            try:
                write_atomic(self.options.timing_cache, lambda path: path.write_bytes(bytes(data)))
            except OSError as error:
                fail(f"{self.options.timing_cache}: cannot write the timing cache ({error.strerror or error}); "
                     "the engines were written")


def add_profile(builder: Any, config: Any, network: Any, graph: Graph, profile: Profile) -> None:
    """Add the optimization profile of ``graph`` to ``config``, if its network has dynamic inputs.

    Every input gets (min, opt, max) shapes from its lc.json dimensions (:func:`profile_shapes`: the batch, the
    image's height and width, the stage tensors' at an eighth of them); TensorRT needs a profile whenever an
    input has a -1 dimension, picks the kernels fastest at opt that are valid for the whole range, and raises at
    run time for shapes outside it (TensorRT Python API, ``IOptimizationProfile``). ``set_shape`` "may (but need
    not be) called for an input tensor that does not have dynamic dimensions", all three shapes then equal to the
    network's, and a dimension that is not -1 must be equal in min, opt and max (its docstring in the
    tensorrt-cu13-bindings 11.4.0.106 wheel): so the parsed network's dynamic dimensions must be exactly lc.json's
    symbolic ones, which is checked first (otherwise the profile would describe another graph).
    """
    specs = {spec["name"]: spec for spec in graph.spec["inputs"]}
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for tensor in inputs:
        dims = specs.get(tensor.name, {}).get("shape")
        if dims is None or [-1 if isinstance(d, str) else d for d in dims] != list(tensor.shape):
            fail(f"{graph.onnx}: TensorRT parsed input {tensor.name!r} as {list(tensor.shape)}, lc.json lists "
                 f"{dims}; re-export the model")
    if not any(-1 in tuple(tensor.shape) for tensor in inputs):
        return
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes([specs[t.name] for t in inputs], profile.batch, profile.sizes).items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)


def buildable_precisions(manifest: dict[str, Any]) -> list[str]:
    """The precisions lc-build builds a model dir at: int8 for a QDQ dir, fp32 and fp16 otherwise."""
    return ["int8"] if "quantization" in manifest else ["fp32", "fp16"]


def check_model_dir(model_dir: str | os.PathLike, precision: str | None = None) -> tuple[list[Finding], int]:
    """``lc-build --check``: the findings of every graph of ``model_dir`` as TensorRT's parser would get
    it at ``precision`` (default: every precision the dir builds at), and how many graphs were checked."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if precision is not None:
        check_precision(manifest, model_dir, precision)
    findings, checked = [], 0
    for each in [precision] if precision else buildable_precisions(manifest):
        for graph in graphs_of(manifest):
            model, name = tensorrt_graph(graph, model_dir, each), f"{graph.onnx} ({each})"
            findings += check_graph(model, name) + profile_findings(model, name)
            checked += 1
    return findings, checked


def profile_findings(model: Any, name: str) -> list[Finding]:
    """An error for each input dimension of ``model`` that no optimization profile lc-build makes covers: symbolic,
    but neither the batch (leading) nor the stage contract's image or stage height and width."""
    findings = []
    for spec in io_spec(model)["inputs"]:
        try:
            concrete_shape(spec["name"], spec["shape"], 1, (MULTIPLE, MULTIPLE))
        except LCError as error:
            findings.append(Finding(name, spec["name"], "graph input", "error", str(error)))
    return findings


def build_engines(model_dir: str | os.PathLike, output_dir: str | os.PathLike, options: BuildOptions,
                  progress: bool = True) -> Path:
    """Build the engines of ``model_dir`` into ``output_dir`` (written atomically); returns it.

    Cheap checks first (model dir, precision, batch, output), then the graphs against what TensorRT's
    parser takes (:func:`check_model_dir`: the errors on stderr, one line each), then TensorRT, the GPU
    and the plugin, so a machine without them gets one line and nothing written.
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest.get("kind") != "cascade":
        fail(f"{model_dir}: holds a {manifest.get('kind')!r} model; lc-build builds cascade exports")
    check_cascade_fields(manifest, model_dir / MANIFEST)
    check_stage_graphs(model_dir, manifest, [load_onnx(model_dir / stage["file"]) for stage in manifest["stages"]])
    check_precision(manifest, model_dir, options.precision)
    profile = build_profile(manifest, options.max_batch, options.shapes)
    if options.workspace_gib is not None and options.workspace_gib <= 0:
        fail(f"--workspace must be positive, got {options.workspace_gib}")
    check_output_dir(output_dir, model_dir)
    if options.version_compatible and manifest["stages"]:
        # A version-compatible plan must carry or load every plugin it uses; nothing we found in TensorRT's
        # docs or samples shows a Python-defined (QDP) plugin in one, so it is refused rather than guessed.
        fail("--version-compatible: the stage 2–3 engines hold the lc::RegionConv Python plugin, and version-"
             "compatible engines with a Python-defined plugin are untested; build without --version-compatible")
    errors = [f for f in check_model_dir(model_dir, options.precision)[0] if f.level == "error"]
    if errors:
        for finding in errors:
            print(finding.line(), file=sys.stderr)
        fail(f"{model_dir}: {len(errors)} node(s) TensorRT's ONNX parser would reject (listed above; "
             f"lc-build {model_dir} --check lists them all); nothing was built")
    trt = import_tensorrt(WHO)
    gpu = gpu_info(WHO)
    builder = _Builder(trt, options, profile, model_dir)
    register_plugins()  # before parsing: the parser maps RegionConv nodes to the registered plugin
    settings = {"precision": options.precision, "tensorrt": trt.__version__, "gpu": gpu,
                "plugin_sha256": plugin_source_sha256(), "ptx_cuda": kernel_ptx_cuda(), "batch": profile.batch,
                "size": profile.sizes,
                "version_compatible": options.version_compatible, "workspace_gib": options.workspace_gib}
    with tqdm(total=len(manifest["stages"]) + 1, desc=WHO, unit="engine", disable=not progress) as bar:
        def built(graph: Graph, size: int) -> None:
            bar.write(f"{graph.engine}: {size / 2**20:.1f} MiB ({options.precision})")
            bar.update(1)

        def build(graph: Graph) -> BuiltEngine:
            bar.set_postfix_str(f"building {graph.engine}")
            return builder.build(graph)

        target = write_engine_dir(Path(output_dir), model_dir, manifest, build, settings, on_built=built)
    builder.save_timing_cache()
    return target
