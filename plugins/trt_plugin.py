"""The TensorRT plugin ``lc::RegionConv``: a Python-defined plugin ("QDP", ``tensorrt.plugin``).

TensorRT's ONNX parser maps every ``lc::RegionConv`` node (it carries
``plugin_namespace = "lc"``) to this plugin (docs/tensorrt.md). The plugin has

* ``register`` — the output descriptor: X's dtype, shape (N, C_out, H, W), N, H and W being X's own shape
  expressions (symbolic in a dynamic-batch or dynamic-size engine);
* ``autotune`` — fp32 or fp16 for all five I/O (the mask travels in the data type, as the
  exported fp16 graphs carry it), LINEAR layout everywhere, tactics :data:`TACTICS`;
* ``aot_impl`` — the Triton kernel ``_region_conv_masked_kernel`` compiled to PTX for the GPU
  the engine is built on, NCHW variant (``CHANNELS_LAST = 0``: TensorRT's LINEAR tensors are
  read in place, no transposes), layer parameters baked in as constexprs because TensorRT
  does not serialise attributes into AOT engines; grid, block, shared memory and the int32
  arguments (H, W, N·H·W) are expressions of shapes only, which TensorRT resolves at run time for
  the shapes of each run (NVIDIA's ``qdp_defs.py`` circ_pad AOT sample: extra arguments "derivatives of
  input/output shapes (that may be dynamic)", "resolved after the full shape context becomes available
  at runtime"), so one kernel serves every size of the optimization profile. The engine then runs
  without Python;
* ``impl`` — the JIT fallback: the same kernel through Triton's launcher (groups ≠ 1: the
  PyTorch reference).

The plugin's attribute fields are derived from :data:`layercascade.export.regionconv.ATTRIBUTES`
(one source of truth); the attributes TensorRT's parser consumes itself (``plugin_namespace``)
are not fields. Everything except :func:`register_plugins` runs without TensorRT, so the
arithmetic, the attribute contract and the PTX are tested on machines without a GPU.

API sources (TensorRT 11.4, read from the ``tensorrt-cu13-bindings`` wheel,
``tensorrt_bindings/plugin/``; the attribute conversion of the creator in every release from 10.6,
:func:`plugin_fields`): ``_lib.py`` (``register``/``impl``/``aot_impl``/``autotune``
docstrings), ``_validate.py`` (signature schemas: inputs, attributes in registration order,
then ``outputs``, ``stream``, ``tactic``), ``_plugin_class.py`` (how TensorRT calls them:
``aot_impl`` positionally with *every* attribute in field order plus the tactic; ``impl``
positionally with the tactic when it declares one). NVIDIA/TensorRT
``samples/python/quickly_deployable_plugins/qdp_defs.py`` (circ_pad: Triton AOT, ONNX node
attributes ``plugin_namespace``/``aot`` that are not plugin fields).
"""

import hashlib
import inspect
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from layercascade.errors import fail
from layercascade.plugins.nvidia import driver_cuda_version, gpu_info, import_tensorrt, import_tensorrt_plugin

# The node's inputs, in order: the names of the model-local function's inputs.
INPUTS = ("X", "W", "B", "M")
# The kernel's int32 arguments between the input and output pointers (TensorRT's AOT order:
# inputs, extra scalars, outputs), see :func:`kernel_scalars`.
SCALARS = ("H", "W", "P")
# Node attributes TensorRT's ONNX parser reads itself and does not hand to the plugin.
PARSER_ATTRIBUTES = frozenset({"plugin_namespace", "plugin_version", "aot"})
# Custom tactics: TensorRT times each one's PTX and keeps the fastest. 1 = the tiles of
# kernels.block_config; 2 = half the rows per program (twice the programs: small maps).
TACTICS = (1, 2)
PRECISIONS = ("fp32", "fp16")
MIN_ARCH = 80  # the kernels' tl.dot tiles and cp.async pipelining need Ampere or newer
# The files whose change must invalidate an engine built with the plugin.
SOURCE_FILES = ("plugins/kernels.py", "plugins/ptx.py", "plugins/trt_plugin.py", "export/regionconv.py")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
WHO = "the lc::RegionConv TensorRT plugin"

_registered = False


class RegionConvLayer(NamedTuple):
    """One RegionConv node's parameters, from its weight shape and attributes."""

    c_in: int
    c_out: int
    kernel: tuple[int, int]
    dilation: tuple[int, int]
    group: int
    relu: bool

    @property
    def padding(self) -> tuple[int, int]:
        return tuple(d * (k - 1) // 2 for k, d in zip(self.kernel, self.dilation))


@lru_cache(maxsize=1)
def plugin_id() -> str:
    from layercascade.export import regionconv

    return f"{regionconv.PLUGIN_NAMESPACE}::{regionconv.OP_TYPE}"


@lru_cache(maxsize=1)
def plugin_fields() -> dict[str, Any]:
    """Field name → ``tensorrt.plugin`` attribute annotation, sorted by name.

    Sorted because the order matters and three orders must agree: ``onnx.helper.make_node``
    writes node attributes sorted by name; the register signature's order is the plugin
    creator's field order; and TensorRT calls ``aot_impl`` with the attribute *values* in
    field-collection order, positionally (``_plugin_class.py``, ``get_launch_params``).

    INT and INTS both become int32 arrays (take the values with :func:`attribute_values`); FLOAT
    ``float``, STRING ``str``. The ONNX parser hands every INT attribute over as a one-element
    kINT32 field (onnx-tensorrt ``loadFields``), which the Python creator converts by annotation
    (``tensorrt_bindings/plugin/_lib.py``, ``_TemplatePluginCreator.create_plugin``): an array
    annotation is ``f.data.astype(dtype)`` in every release; an ``int`` annotation is ``int(f.data)``
    up to 11.1 and ``int(f.data[0])`` from 11.2.1 (read in the bindings wheels 10.6.0 … 11.1.0.106 and
    11.2.1.2 … 11.4.0.106), and ``int()`` of a one-element array raises TypeError from NumPy 2.4 on
    (deprecated since 1.25). An ``int`` field would fail every RegionConv on TensorRT 10.x with
    current NumPy; the arrays work with every release and NumPy.
    """
    from onnx import AttributeProto

    from layercascade.export import regionconv

    annotations = {AttributeProto.INT: npt.NDArray[np.int32], AttributeProto.INTS: npt.NDArray[np.int32],
                   AttributeProto.FLOAT: float, AttributeProto.STRING: str}
    return {name: annotations[kind] for name, kind in sorted(regionconv.ATTRIBUTES.items())
            if name not in PARSER_ATTRIBUTES}


def attribute_values(fields: dict[str, Any]) -> dict[str, Any]:
    """The node's attribute values from the plugin fields TensorRT passes: an INT attribute is the one
    element of its int32 array (:func:`plugin_fields`), the others as they come."""
    from onnx import AttributeProto

    from layercascade.export import regionconv

    values = dict(fields)
    for name, value in fields.items():
        if regionconv.ATTRIBUTES.get(name) == AttributeProto.INT:
            array = np.asarray(value).reshape(-1)
            if array.size != 1:
                fail(f"lc::RegionConv attribute {name} must be one integer, got {array.tolist()}: re-export the "
                     "model with lc-export")
            values[name] = int(array[0])
    return values


def check_attributes(pads: Sequence[int], dilations: Sequence[int], group: int, activation: int) -> None:
    """Fail on attribute values the op does not define (shape-independent checks)."""
    from layercascade.export import regionconv

    if len(pads) != 4 or len(dilations) != 2:
        fail(f"lc::RegionConv needs 4 pads and 2 dilations, got pads {list(pads)}, dilations {list(dilations)}: "
             "re-export the model with lc-export")
    if list(pads[:2]) != list(pads[2:]) or min(*pads, *dilations) < 0 or min(dilations) < 1:
        fail(f"lc::RegionConv needs symmetric non-negative pads and dilations >= 1, got pads {list(pads)}, "
             f"dilations {list(dilations)}")
    if group < 1 or activation not in regionconv.ACTIVATIONS.values():
        fail(f"lc::RegionConv: group must be >= 1 and activation one of {sorted(regionconv.ACTIVATIONS.values())}, "
             f"got group {group}, activation {activation}")


def layer_from_node(x_channels: int, weight_shape: Sequence[int], pads: Sequence[int], dilations: Sequence[int],
                    group: int, activation: int) -> RegionConvLayer:
    """The layer a node describes; fails unless it is a stride-1 "same" convolution."""
    check_attributes(pads, dilations, group, activation)
    if len(weight_shape) != 4 or min(weight_shape) < 1:
        fail(f"lc::RegionConv needs a static (C_out, C_in/group, KH, KW) weight, got shape {tuple(weight_shape)}")
    if x_channels < 1:  # TensorRT gives -1 for a dynamic dimension; only N, H, W may be (the kernel bakes C in)
        fail(f"lc::RegionConv needs a static input channel count (only batch, height and width may be dynamic), got "
             f"{x_channels}")
    c_out, c_in_group, kh, kw = (int(d) for d in weight_shape)
    if x_channels != c_in_group * group or c_out % group:
        fail(f"lc::RegionConv: input has {x_channels} channels, weight {tuple(weight_shape)}, group {group}: "
             "they do not fit together")
    layer = RegionConvLayer(int(x_channels), c_out, (kh, kw), (int(dilations[0]), int(dilations[1])), int(group),
                            activation == 1)
    if layer.padding != (int(pads[0]), int(pads[1])) or kh % 2 == 0 or kw % 2 == 0:
        fail(f"lc::RegionConv computes 'same' convolutions (odd kernel, pad = dilation·(k−1)/2): kernel {kh}x{kw}, "
             f"dilation {layer.dilation}, pads {list(pads)}")
    return layer


def output_dims(x_dims: Sequence[Any], w_dims: Sequence[Any]) -> list[Any]:
    """(N, C_out, H, W) from X's (N, C, H, W) and W's (C_out, ...): plain ints or TensorRT shape expressions."""
    return [x_dims[0], w_dims[0], x_dims[2], x_dims[3]]


def autotune_spec() -> tuple[str, str, list[int]]:
    """(types, layouts, tactics) of the one :class:`trtp.AutoTuneCombination` the plugin offers:
    all five I/O fp32, or all fp16 ("|" = dependent), all LINEAR."""
    io = len(INPUTS) + 1
    return ", ".join(["FP32|FP16"] * io), ", ".join(["LINEAR"] * io), list(TACTICS)


def tile_config(layer: RegionConvLayer, precision: str, tactic: int) -> Any:
    """The :class:`kernels.BlockConfig` of a tactic (0, TensorRT's default tactic, = 1)."""
    from layercascade.plugins import kernels

    table = kernels.block_config(layer.c_in, layer.c_out, max(layer.kernel), precision)
    if tactic in (0, 1):
        return table
    if tactic == 2:
        return table._replace(block_m=max(16, table.block_m // 2))
    raise ValueError(f"unknown tactic {tactic}; the plugin offers {TACTICS}")


def _int_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kernel_scalars(n: Any, h: Any, w: Any) -> tuple[Any, Any, Any]:
    """The kernel's int32 arguments :data:`SCALARS`: H, W and P = N·H·W (ints or shape expressions)."""
    return h, w, n * h * w


def launch_grid(pixels: Any, c_out: int, config: Any,
                cdiv: Callable[[Any, int], Any] = _int_cdiv) -> tuple[Any, int, int]:
    """(row blocks, output-channel blocks, 1), as :func:`kernels.conv_grid`; ``pixels`` may be a
    TensorRT shape expression, then ``cdiv`` is ``trtp.cdiv``."""
    return cdiv(pixels, config.block_m), _int_cdiv(c_out, config.block_n), 1


def strip_hidden_params(ptx: str, kernel_name: str, keep: int) -> str:
    """``ptx`` with only the first ``keep`` parameters of the kernel's ``.entry``.

    Triton (3.9 here) appends hidden pointer parameters (global and profile scratch) to every
    kernel; TensorRT launches an AOT kernel with exactly its inputs, extra scalars and
    outputs, so the driver would read those two from past the end of TensorRT's argument
    array. Dropping trailing parameters leaves the offsets of the others unchanged; it is
    only safe when the body never reads them (no scratch memory), which is checked here.
    """
    entry = re.search(rf"\.entry\s+{re.escape(kernel_name)}\s*\((.*?)\)", ptx, re.DOTALL)
    if entry is None:
        raise RuntimeError(f"no .entry {kernel_name} in the PTX")
    params = [p.strip() for p in entry.group(1).split(",")]
    if len(params) < keep:
        raise RuntimeError(f"{kernel_name} has {len(params)} parameters, TensorRT passes {keep}")
    for hidden in params[keep:]:
        name = hidden.split()[-1]
        if len(re.findall(rf"\b{re.escape(name)}\b", ptx)) != 1:
            raise RuntimeError(f"{kernel_name} reads its hidden parameter {name} (scratch memory), "
                               "which TensorRT cannot pass")
    return ptx[:entry.start(1)] + "\n\t" + ",\n\t".join(params[:keep]) + "\n" + ptx[entry.end(1):]


def unique_entry(ptx: str, kernel_name: str, suffix: str) -> tuple[str, str]:
    """``ptx`` with its kernel renamed ``{kernel_name}_{suffix}``, and that name.

    Every specialisation of the kernel (layer shape, dilation, ReLU, tiles, precision) is its own
    PTX, but Triton names them all alike; an engine holding several RegionConv layers must not be
    able to confuse them, whatever TensorRT keys its AOT kernels by.
    """
    name = f"{kernel_name}_{suffix}"
    return re.sub(rf"\b{re.escape(kernel_name)}\b", name, ptx), name


# The dynamic shared memory a kernel may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize),
# which a TensorRT AOT plugin cannot set: configurations above it would fail to launch.
SHARED_MEMORY_LIMIT = 48 * 1024


@lru_cache(maxsize=64)
def aot_kernel(layer: RegionConvLayer, precision: str, arch: str, tactic: int, driver_cuda: str | None = None) -> Any:
    """The :class:`ptx.AotKernel` TensorRT runs for ``layer``: NCHW, no residual, PTX trimmed to
    TensorRT's argument list (:func:`strip_hidden_params`), its ISA capped to what a driver of CUDA
    ``driver_cuda`` loads (:func:`ptx.ptx_isa`), an entry name of its own (:func:`unique_entry`) and
    the deepest software pipelining (3, 2 or 1 stages) whose shared memory fits :data:`SHARED_MEMORY_LIMIT`."""
    from layercascade.plugins import kernels, ptx

    if layer.group != 1:
        fail(f"the AOT lc::RegionConv kernel has no groups (this layer has group {layer.group}): build with "
             "the JIT plugin (network flag PREFER_JIT_PYTHON_PLUGINS)")
    if precision not in PRECISIONS:
        fail(f"lc::RegionConv runs in {PRECISIONS}, not {precision}")
    config = tile_config(layer, precision, tactic)
    source = ptx.Layer(c_in=layer.c_in, c_out=layer.c_out, kernel=layer.kernel, dilation=layer.dilation,
                       relu=layer.relu, residual=False, channels_last=False, config=config)
    isa = ptx.ptx_isa(arch, driver_cuda)
    for stages in range(kernels.COMPILE_OPTIONS["num_stages"], 0, -1):
        compiled = ptx.compile_kernel("region_conv_masked", precision, arch, source, num_stages=stages,
                                      ptx_version=isa)
        if compiled.shared_bytes <= SHARED_MEMORY_LIMIT:
            break
    else:
        fail(f"lc::RegionConv {layer}: no AOT kernel fits {SHARED_MEMORY_LIMIT} B of shared memory "
             f"({compiled.shared_bytes} B with one stage); build with the JIT plugin (PREFER_JIT_PYTHON_PLUGINS)")
    visible = len(INPUTS) + len(SCALARS) + 1
    trimmed = strip_hidden_params(compiled.ptx, compiled.name, visible)
    digest = hashlib.sha256(repr((layer, precision, arch, tactic, isa, stages)).encode()).hexdigest()[:12]
    text, name = unique_entry(trimmed, compiled.name, digest)
    return compiled._replace(name=name, ptx=text, params=visible)


def device_arch() -> str:
    """``sm_XY`` of the current CUDA device (the one TensorRT builds on): the PTX is compiled for
    the GPU that builds the engine."""
    major, minor = map(int, gpu_info(WHO)["compute_capability"].split("."))
    if 10 * major + minor < MIN_ARCH:
        fail(f"the lc::RegionConv kernels need sm_{MIN_ARCH} or newer, this GPU is sm_{major}{minor}")
    return f"sm_{major}{minor}"


def kernel_ptx_cuda() -> str:
    """The CUDA version whose PTX ISA ``aot_impl`` emits on this machine (:func:`ptx.ptx_cuda` of this GPU
    and this driver): lc-build records it, the TensorRT backend checks the driver against it."""
    from layercascade.plugins import ptx

    return ptx.ptx_cuda(device_arch(), driver_cuda_version(WHO))


def run_region_conv(x: Any, weight: Any, bias: Any, mask: Any, out: Any, *, pads: Sequence[int],
                    dilations: Sequence[int], group: int, activation: int, tactic: int = 1) -> None:
    """``out = act(conv2d(x, W, B)) ⊙ M`` on NCHW torch tensors: the JIT plugin's body.

    The same kernel, NCHW variant and tiles as the AOT path, launched through Triton
    (TRITON_INTERPRET=1 runs it on the CPU); groups ≠ 1 go through the PyTorch reference.
    """
    import torch

    from layercascade.plugins import kernels

    layer = layer_from_node(x.shape[1], tuple(weight.shape), pads, dilations, group, activation)
    if layer.group != 1:
        from layercascade.model.region import region_conv2d

        y = region_conv2d(x, weight, bias, (mask != 0).to(x.dtype), padding=layer.padding, dilation=layer.dilation,
                          groups=layer.group)
        out.copy_(torch.relu(y) if layer.relu else y)
        return
    precision = kernels.DTYPE_NAMES[x.dtype]
    config = tile_config(layer, precision, tactic)
    constexprs = kernels.layer_constexprs(x, weight, layer.padding, layer.dilation, layer.relu, config,
                                          channels_last=False)
    n, _, h, w = x.shape
    h_arg, w_arg, pixels = kernel_scalars(n, h, w)
    grid = launch_grid(pixels, layer.c_out, config)[:2]
    kernels._region_conv_masked_kernel[grid](x, weight, bias, mask.reshape(-1), None, h_arg, w_arg, pixels, out,
                                             num_warps=config.num_warps, **kernels.COMPILE_OPTIONS, **constexprs)


def plugin_source_sha256() -> str:
    """sha256 over :data:`SOURCE_FILES` (path and bytes): recorded in engine metadata, so a
    runtime can tell an engine built with other kernels or another plugin from a current one."""
    digest = hashlib.sha256()
    for relative in SOURCE_FILES:
        digest.update(relative.encode() + b"\0" + (PACKAGE_ROOT / relative).read_bytes() + b"\0")
    return digest.hexdigest()


def register_plugins() -> None:
    """Register ``lc::RegionConv`` with TensorRT's plugin registry, once per process.

    Call before parsing a model dir's ONNX (``lc-build``) and before deserialising an engine
    built with the JIT plugin. Fails with one line when TensorRT is missing.
    """
    global _registered
    if _registered:
        return
    trt, trtp = import_tensorrt(WHO), import_tensorrt_plugin(WHO)
    namespace, name = plugin_id().split("::")
    if not hasattr(trtp.op, namespace) or not hasattr(getattr(trtp.op, namespace), name):
        define_plugin(trt, trtp)
    _registered = True


def _signature(tensor: type, *, attributes: bool, tail: Sequence[tuple[str, Any]],
               returns: Any) -> inspect.Signature:
    """A ``tensorrt.plugin`` function signature: :data:`INPUTS`, then (if ``attributes``) the
    :func:`plugin_fields`, then ``tail``. TensorRT validates the decorated functions through
    :func:`inspect.signature`, which reads ``__signature__``."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, keyword, annotation=tensor) for n in INPUTS]
    if attributes:
        params += [inspect.Parameter(n, keyword, annotation=a) for n, a in plugin_fields().items()]
    params += [inspect.Parameter(n, keyword, annotation=a) for n, a in tail]
    return inspect.Signature(params, return_annotation=returns)


def define_plugin(trt: Any, trtp: Any) -> None:
    """Define ``register``, ``autotune``, ``aot_impl`` and ``impl`` of ``lc::RegionConv`` with
    ``trtp`` (``tensorrt.plugin``, or a stand-in with the same interface in the tests)."""
    pid = plugin_id()
    fields = list(plugin_fields())
    precisions = {trt.DataType.FLOAT: "fp32", trt.DataType.HALF: "fp16"}

    def precision_of(desc: Any) -> str:
        if desc.dtype not in precisions:
            fail(f"lc::RegionConv runs in fp32 or fp16, not {desc.dtype}")
        return precisions[desc.dtype]

    def describe(*inputs: Any, **given: Any) -> Any:
        check_attributes(**attribute_values(given))
        x, w = inputs[0], inputs[1]
        out = x.like()
        for axis, dim in enumerate(output_dims(x.shape_expr, w.shape_expr)):
            out.shape_expr[axis] = dim
        return out

    def autotune(*_descs: Any) -> list[Any]:
        return [trtp.AutoTuneCombination(*autotune_spec())]

    def aot(*args: Any) -> tuple[str, str, Any, Any]:
        # TensorRT calls (inputs..., every attribute in field order..., outputs, tactic).
        x, w = args[0], args[1]
        attributes = attribute_values(dict(zip(fields, args[len(INPUTS):-2])))
        tactic = args[-1]
        precision = precision_of(x)
        # x.shape is the build-time shape, -1 where a dimension is dynamic: only the (static) channels are read
        # from it; N, H and W come from the shape expressions, which TensorRT resolves for each run.
        layer = layer_from_node(x.shape[1], tuple(w.shape), **attributes)
        kernel = aot_kernel(layer, precision, device_arch(), tactic, driver_cuda_version(WHO))
        n, h, width = x.shape_expr[0], x.shape_expr[2], x.shape_expr[3]
        scalars = kernel_scalars(n, h, width)
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = launch_grid(
            scalars[2], layer.c_out, tile_config(layer, precision, tactic), cdiv=trtp.cdiv)
        params.block_x = kernel.threads
        params.shared_mem = kernel.shared_bytes
        return kernel.name, kernel.ptx, params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])

    def impl(*args: Any) -> None:
        # TensorRT calls (inputs..., attributes..., outputs, stream, tactic).
        import torch

        attributes = attribute_values(dict(zip(fields, args[len(INPUTS):-3])))
        outputs, stream, tactic = args[-3:]
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            x, w, b, m = (torch.as_tensor(t, device="cuda") for t in args[:len(INPUTS)])
            run_region_conv(x, w, b, m, torch.as_tensor(outputs[0], device="cuda"), tactic=tactic, **attributes)

    describe.__signature__ = _signature(trtp.TensorDesc, attributes=True, tail=(), returns=trtp.TensorDesc)
    autotune.__signature__ = _signature(trtp.TensorDesc, attributes=False,
                                        tail=[("outputs", tuple[trtp.TensorDesc])],
                                        returns=list[trtp.AutoTuneCombination])
    aot.__signature__ = _signature(trtp.TensorDesc, attributes=True,
                                   tail=[("outputs", tuple[trtp.TensorDesc]), ("tactic", int)],
                                   returns=tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs])
    impl.__signature__ = _signature(trtp.Tensor, attributes=True,
                                    tail=[("outputs", tuple[trtp.Tensor]), ("stream", int), ("tactic", int)],
                                    returns=None)
    trtp.register(pid)(describe)
    trtp.autotune(pid)(autotune)
    trtp.aot_impl(pid)(aot)
    trtp.impl(pid)(impl)
