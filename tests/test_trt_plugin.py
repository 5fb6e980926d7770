"""The TensorRT plugin ``lc::RegionConv`` (plugins/trt_plugin.py) without and with TensorRT.

Without TensorRT: the attribute contract against the exported demo model, the descriptor and
launch arithmetic, PTX for fp32/fp16 × sm_80–sm_90 through the plugin's own path (trimmed
to TensorRT's argument list, then assembled by ptxas), the JIT body in Triton's interpreter
against the reference, the plugin definitions driven through a stand-in for
``tensorrt.plugin``, and the one-line errors of :func:`register_plugins`. The ``trt``-marked
test builds and runs one-node engines and skips, with the reason, where TensorRT or a GPU is
missing.
"""

from __future__ import annotations

import enum
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import numpy.typing as npt
import onnx
import pytest

pytest.importorskip("triton", reason="triton is not installed: the plugin's kernels need it")

from layercascade.errors import LCError
from layercascade.export import regionconv
from layercascade.plugins import kernels, ptx, trt_plugin
from layercascade.plugins.examples import Layer, region_conv_chain, run_plan, tolerance
from layercascade.plugins.nvidia import import_tensorrt
from layercascade.plugins.trt_plugin import RegionConvLayer
from layercascade.tests.fake_tensorrt import CREATOR_RELEASES, creator_attribute, parser_fields

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "runtime" / "demo_model"
# INT attributes are int32 arrays too: TensorRT 10.x's creator int()s a one-element array (plugin_fields).
ONNX_TO_FIELD = {onnx.AttributeProto.INT: npt.NDArray[np.int32], onnx.AttributeProto.INTS: npt.NDArray[np.int32]}
LAYER = RegionConvLayer(c_in=24, c_out=20, kernel=(3, 3), dilation=(2, 2), group=1, relu=True)
# The fields as TensorRT passes them to the plugin's functions: every attribute an int32 array.
ATTRIBUTES = {"activation": np.array([1], np.int32), "dilations": np.array([2, 2], np.int32),
              "group": np.array([1], np.int32), "pads": np.array([2, 2, 2, 2], np.int32)}


# -- the attribute contract ------------------------------------------------------------------
def _region_nodes() -> list[onnx.NodeProto]:
    nodes = []
    for stage in ("stage2.onnx", "stage3.onnx"):
        graph = onnx.load(str(DEMO_MODEL / stage), load_external_data=False).graph
        nodes += [n for n in graph.node if n.op_type == regionconv.OP_TYPE and n.domain == regionconv.DOMAIN]
    return nodes


def test_exported_node_attributes_are_the_plugin_fields() -> None:
    """Every attribute of every exported RegionConv node is a plugin field of the matching type
    (or one TensorRT's parser consumes), in the plugin's field order; the node names the plugin."""
    nodes = _region_nodes()
    assert len(nodes) > 5
    fields = trt_plugin.plugin_fields()
    for node in nodes:
        attributes = {a.name: a for a in node.attribute}
        assert onnx.helper.get_attribute_value(attributes["plugin_namespace"]).decode() == \
            trt_plugin.plugin_id().split("::")[0]
        assert node.op_type == trt_plugin.plugin_id().split("::")[1]
        carried = [a.name for a in node.attribute if a.name not in trt_plugin.PARSER_ATTRIBUTES]
        assert carried == list(fields), node.name
        assert all(ONNX_TO_FIELD[attributes[name].type] == fields[name] for name in carried), node.name
        assert len(node.input) == len(trt_plugin.INPUTS)


def test_attribute_values_take_the_element_of_int_fields() -> None:
    values = trt_plugin.attribute_values(ATTRIBUTES)
    assert values["group"] == 1 and type(values["group"]) is int and type(values["activation"]) is int
    assert values["pads"] is ATTRIBUTES["pads"]  # INTS stay arrays
    assert trt_plugin.attribute_values({"group": 2, "activation": np.int32(0)}) == {"group": 2, "activation": 0}
    with pytest.raises(LCError, match=r"attribute group must be one integer, got \[1, 2\]"):
        trt_plugin.attribute_values({"group": np.array([1, 2], np.int32)})


def test_inputs_are_the_function_body_inputs() -> None:
    assert tuple(regionconv.function_proto(18).input) == trt_plugin.INPUTS
    assert set(trt_plugin.plugin_fields()) == set(regionconv.ATTRIBUTES) - trt_plugin.PARSER_ATTRIBUTES


def test_kernel_arguments_follow_tensorrt_order() -> None:
    """TensorRT passes input pointers, then the int32 scalars, then output pointers: the masked
    kernel's runtime arguments (residual off) must be exactly X W B M, H W P, Y."""
    fn = kernels._region_conv_masked_kernel
    constexprs = {p.name for p in fn.params if p.is_constexpr} | {"res_ptr"}
    runtime = [name for name in fn.arg_names if name not in constexprs]
    assert runtime == ["x_ptr", "w_ptr", "b_ptr", "mask_ptr", *trt_plugin.SCALARS, "out_ptr"]


# -- pure arithmetic ---------------------------------------------------------------------------
def test_layer_from_node() -> None:
    assert trt_plugin.layer_from_node(24, (20, 24, 3, 3), [2, 2, 2, 2], [2, 2], 1, 1) == LAYER
    assert LAYER.padding == (2, 2)
    grouped = trt_plugin.layer_from_node(24, (20, 12, 1, 3), [0, 1, 0, 1], [1, 1], 2, 0)
    assert grouped.kernel == (1, 3) and grouped.group == 2 and not grouped.relu


@pytest.mark.parametrize("args, message", [
    ((24, (20, 24, 3, 3), [1, 1, 1, 1], [2, 2], 1, 1), "same"),
    ((24, (20, 24, 3, 3), [2, 2, 1, 1], [2, 2], 1, 1), "symmetric"),
    ((24, (20, 24, 2, 2), [1, 1, 1, 1], [2, 2], 1, 1), "same"),
    ((16, (20, 24, 3, 3), [2, 2, 2, 2], [2, 2], 1, 1), "do not fit"),
    ((24, (20, 24, 3, 3), [2, 2, 2, 2], [2, 2], 1, 7), "activation"),
    ((24, (20, 24, 3, 3), [2, 2], [2, 2], 1, 1), "4 pads"),
    ((24, (-1, 24, 3, 3), [2, 2, 2, 2], [2, 2], 1, 1), "static"),
    ((-1, (20, 24, 3, 3), [2, 2, 2, 2], [2, 2], 1, 1), "static input channel count"),
])
def test_layer_from_node_rejects(args: tuple, message: str) -> None:
    with pytest.raises(LCError, match=message):
        trt_plugin.layer_from_node(*args)


def test_output_dims_and_launch_arithmetic() -> None:
    assert trt_plugin.output_dims((2, 24, 33, 17), (20, 24, 3, 3)) == [2, 20, 33, 17]
    h, w, pixels = trt_plugin.kernel_scalars(2, 33, 17)
    assert (h, w, pixels) == (33, 17, 2 * 33 * 17)
    for tactic in (0, *trt_plugin.TACTICS):
        config = trt_plugin.tile_config(LAYER, "fp16", tactic)
        assert trt_plugin.launch_grid(pixels, LAYER.c_out, config) == (*kernels.conv_grid(pixels, 20, config), 1)
    # A shape-expression-like operand goes through the given cdiv (TensorRT's trtp.cdiv).
    calls = []
    grid = trt_plugin.launch_grid("P", 20, trt_plugin.tile_config(LAYER, "fp32", 1),
                                  cdiv=lambda a, b: calls.append((a, b)) or "cdiv(P)")
    assert grid[0] == "cdiv(P)" and calls == [("P", 32)] and grid[1:] == (1, 1)


def test_tactics_are_tile_choices() -> None:
    table = kernels.block_config(24, 20, 3, "fp16")
    assert trt_plugin.tile_config(LAYER, "fp16", 1) == table == trt_plugin.tile_config(LAYER, "fp16", 0)
    assert trt_plugin.tile_config(LAYER, "fp16", 2) == table._replace(block_m=table.block_m // 2)
    with pytest.raises(ValueError, match="tactic"):
        trt_plugin.tile_config(LAYER, "fp16", 3)


def test_autotune_spec() -> None:
    types, layouts, tactics = trt_plugin.autotune_spec()
    assert types.split(", ") == ["FP32|FP16"] * 5
    assert layouts.split(", ") == ["LINEAR"] * 5
    assert tactics == list(trt_plugin.TACTICS)


# -- PTX through the plugin's path -------------------------------------------------------------
def _assemble(ptx: str, tmp_path: Path) -> None:
    """ptxas (Triton's copy) must accept the trimmed PTX for its own .target."""
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE).group(1)
    source = tmp_path / "kernel.ptx"
    source.write_text(ptx)
    done = subprocess.run([get_ptxas(int(re.sub(r"\D", "", target))).path, f"-arch={target}", str(source),
                           "-o", str(tmp_path / "kernel.cubin")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("precision", trt_plugin.PRECISIONS)
@pytest.mark.parametrize("arch", ["sm_80", "sm_86", "sm_89", "sm_90"])
def test_aot_ptx_per_precision_and_arch(precision: str, arch: str, tmp_path: Path) -> None:
    kernel = trt_plugin.aot_kernel(LAYER, precision, arch, 1)
    entry = re.search(rf"\.entry\s+{kernel.name}\s*\((.*?)\)", kernel.ptx, re.DOTALL).group(1)
    params = [p.split() for p in entry.split(",")]
    # X W B M (pointers), H W P (int32), Y (pointer): nothing hidden left for TensorRT to miss.
    assert kernel.params == len(params) == 8
    assert [p[1] for p in params] == [".u64"] * 4 + [".u32"] * 3 + [".u64"]
    assert re.search(r"^\.target\s+(\S+)", kernel.ptx, re.MULTILINE).group(1).startswith(arch)
    assert kernel.threads == trt_plugin.tile_config(LAYER, precision, 1).num_warps * 32
    assert kernel.shared_bytes > 0
    _assemble(kernel.ptx, tmp_path)


def test_aot_ptx_isa_is_capped_to_the_driver(tmp_path: Path) -> None:
    """The PTX's ISA is Triton's own (its bundled ptxas) unless the driver that builds and runs the
    engine is older: then the driver's newest, which ptxas still assembles."""
    own = ptx.ptx_isa("sm_90")
    capped = trt_plugin.aot_kernel(LAYER, "fp32", "sm_90", 1, "12.4")
    assert re.search(r"^\.version 8\.4$", capped.ptx, re.MULTILINE)
    _assemble(capped.ptx, tmp_path)
    newer = trt_plugin.aot_kernel(LAYER, "fp32", "sm_90", 1, "99.0")  # a driver newer than Triton's ptxas
    assert re.search(rf"^\.version {own // 10}\.{own % 10}$", newer.ptx, re.MULTILINE)


def test_each_specialisation_has_an_entry_name_of_its_own() -> None:
    """Layers differ in constexprs, so in PTX; their entry names differ too, and each PTX defines its own."""
    kernels = [trt_plugin.aot_kernel(layer, "fp32", "sm_90", tactic, "12.8")
               for layer, tactic in ((LAYER, 1), (LAYER, 2), (LAYER._replace(dilation=(1, 1)), 1),
                                     (LAYER._replace(relu=False), 1))]
    assert len({k.name for k in kernels}) == len(kernels)
    for kernel in kernels:
        assert re.findall(r"\.entry\s+(\w+)", kernel.ptx) == [kernel.name]
    assert trt_plugin.aot_kernel(LAYER, "fp32", "sm_90", 1, "12.8").name == kernels[0].name  # deterministic


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_aot_kernels_fit_the_default_shared_memory(arch: str) -> None:
    """The widest tiles (fp16, 64×128×64 and the rule of thumb's for IRNet's 1088 / 2080 channels)
    stay within the 48 KB a plugin's kernel may use without opting in, with either tactic."""
    for c_in, c_out, kernel in ((256, 256, (3, 3)), (1088, 128, (1, 1)), (160, 192, (7, 1)), (2080, 192, (1, 1))):
        layer = RegionConvLayer(c_in=c_in, c_out=c_out, kernel=kernel, dilation=(2, 2), group=1, relu=True)
        for tactic in trt_plugin.TACTICS:
            shared = trt_plugin.aot_kernel(layer, "fp16", arch, tactic, "12.8").shared_bytes
            assert 0 < shared <= trt_plugin.SHARED_MEMORY_LIMIT, (layer, tactic, shared)


def test_aot_kernel_drops_pipeline_stages_until_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration over the limit is recompiled with fewer software-pipeline stages; one that
    does not fit even with one stage is refused with a line naming the way out (the JIT plugin)."""
    compiled = trt_plugin.aot_kernel(LAYER, "fp32", "sm_90", 1, "12.8")
    requested = []

    def compile_kernel(*args: object, num_stages: int, **kwargs: object) -> ptx.AotKernel:
        requested.append(num_stages)
        return compiled._replace(shared_bytes=limit[num_stages])

    monkeypatch.setattr(ptx, "compile_kernel", compile_kernel)
    limit = {3: 73728, 2: 49152, 1: 24576}
    assert trt_plugin.aot_kernel.__wrapped__(LAYER, "fp32", "sm_90", 1, "12.8").shared_bytes == 49152
    assert requested == [3, 2]
    limit = {3: 90000, 2: 80000, 1: 60000}
    with pytest.raises(LCError, match="fits 49152 B of shared memory .60000 B with one stage.; build with the JIT"):
        trt_plugin.aot_kernel.__wrapped__(LAYER, "fp32", "sm_90", 1, "12.8")


def test_strip_hidden_params_refuses_a_used_parameter() -> None:
    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n"
           "\tld.param.u64 %rd1, [k_param_1];\n}\n")
    with pytest.raises(RuntimeError, match="hidden parameter k_param_1"):
        trt_plugin.strip_hidden_params(ptx, "k", 1)
    unused = ptx.replace("[k_param_1]", "[k_param_0]")
    stripped = trt_plugin.strip_hidden_params(unused, "k", 1)
    assert "k_param_1" not in stripped and "k_param_0" in stripped


def test_aot_refuses_groups() -> None:
    with pytest.raises(LCError, match="JIT"):
        trt_plugin.aot_kernel(LAYER._replace(group=2), "fp32", "sm_90", 1)


def _fake_cuda_runtime(monkeypatch: pytest.MonkeyPatch, status: str, capability: tuple[int, int]) -> None:
    """A stand-in for cuda-python's ``cuda.bindings.runtime`` reporting one device (none unless ``status``
    is "cudaSuccess")."""
    error = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorNoDevice": 100})[status]
    properties = SimpleNamespace(name=b"NVIDIA Test GPU", major=capability[0], minor=capability[1])
    runtime = SimpleNamespace(cudaGetDeviceCount=lambda: (error, int(error == 0)),
                              cudaGetDevice=lambda: (0, 0),
                              cudaGetDeviceProperties=lambda device: (0, properties))
    monkeypatch.setitem(sys.modules, "cuda", SimpleNamespace(bindings=SimpleNamespace(runtime=runtime)))
    monkeypatch.setitem(sys.modules, "cuda.bindings", sys.modules["cuda"].bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)


def test_device_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda_runtime(monkeypatch, "cudaSuccess", (9, 0))
    assert trt_plugin.device_arch() == "sm_90"
    _fake_cuda_runtime(monkeypatch, "cudaSuccess", (7, 5))
    with pytest.raises(LCError, match="sm_80 or newer, this GPU is sm_75"):
        trt_plugin.device_arch()
    _fake_cuda_runtime(monkeypatch, "cudaErrorNoDevice", (9, 0))
    with pytest.raises(LCError, match="no CUDA GPU .cudaErrorNoDevice"):
        trt_plugin.device_arch()


# -- the JIT body, interpreted ----------------------------------------------------------------
JIT_SCRIPT = """
import json, sys, torch
from layercascade.model.region import region_conv2d
from layercascade.plugins import trt_plugin
device = sys.argv[1]
results = []
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16):
    for kernel, dilation, group, activation, tactic in ((3, 2, 1, 1, 1), (1, 1, 1, 0, 2), ((1, 3), 1, 1, 1, 2),
                                                          (3, 1, 2, 1, 1)):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        x = torch.randn(2, 24, 7, 9, generator=gen).to(dtype)
        w = (torch.randn(20, 24 // group, kh, kw, generator=gen) * 0.2).to(dtype)
        b = torch.randn(20, generator=gen).to(dtype)
        m = (torch.rand(2, 1, 7, 9, generator=gen) < 0.3).to(dtype)
        out = torch.full((2, 20, 7, 9), float("nan"), dtype=dtype, device=device)
        pads = [dilation * (kh - 1) // 2, dilation * (kw - 1) // 2] * 2
        trt_plugin.run_region_conv(x.to(device), w.to(device), b.to(device), m.to(device), out, pads=pads,
                                   dilations=[dilation] * 2, group=group, activation=activation, tactic=tactic)
        out = out.cpu()
        ref = region_conv2d(x.double(), w.double(), b.double(), m.double(), padding=tuple(pads[:2]),
                            dilation=dilation, groups=group)
        ref = ref.relu() if activation else ref
        outside = out[(m == 0).expand_as(out)]
        results.append({"case": f"{dtype}:{kernel}:{dilation}:{group}:{activation}:{tactic}",
                        "err": (out.double() - ref).abs().max().item(), "scale": ref.abs().max().item(),
                        "zero_outside": bool((outside == 0).all()), "fp16": dtype == torch.float16})
print(json.dumps(results))
"""


def _check_jit_body(device: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", JIT_SCRIPT, device], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert len(results) == 8
    for r in results:
        tolerance = (4e-3 if r["fp16"] else 1e-4) * max(1.0, r["scale"])
        assert r["zero_outside"] and r["err"] <= tolerance, r


@pytest.mark.slow
def test_jit_body_matches_reference_interpreted() -> None:
    """run_region_conv (NCHW kernel, both tactics, 1×1 / 3×3 dilated / 1×3, grouped fallback)
    against the dense reference in Triton's interpreter; exactly 0 outside M."""
    _check_jit_body("cpu", dict(os.environ, TRITON_INTERPRET="1"))


@pytest.mark.gpu
def test_jit_body_matches_reference_on_gpu() -> None:
    """The same cases natively on a CUDA GPU: the NCHW kernel the AOT engines run, compiled by Triton."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to PyTorch")
    _check_jit_body("cuda", {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})


# -- the plugin definitions, driven through a stand-in for tensorrt.plugin ----------------------
class _Sym:
    """A symbolic shape expression: a function of the dimensions' values (``{"N": 2, "H": 7, "W": 9}``)."""

    def __init__(self, value) -> None:
        self.value = value if callable(value) else (lambda dims, v=value: v)

    @staticmethod
    def of(value) -> _Sym:
        return value if isinstance(value, _Sym) else _Sym(value)

    def __add__(self, other) -> _Sym:
        return _Sym(lambda dims: self.value(dims) + _Sym.of(other).value(dims))

    def __mul__(self, other) -> _Sym:
        return _Sym(lambda dims: self.value(dims) * _Sym.of(other).value(dims))

    def __floordiv__(self, other) -> _Sym:
        return _Sym(lambda dims: self.value(dims) // _Sym.of(other).value(dims))

    __radd__, __rmul__ = __add__, __mul__


def _at(value, dims: dict[str, int]) -> int:
    """A shape expression (or an int) at given dimension values."""
    return value.value(dims) if isinstance(value, _Sym) else value


class _Desc:
    """A TensorDesc: ``shape`` as TensorRT gives it at build time (-1 for a dynamic dimension), shape expressions
    plain ints or :class:`_Sym` (named dimensions ``N``, ``H``, ``W``)."""

    def __init__(self, dtype: str, shape: tuple) -> None:
        self.dtype, self.shape_expr = dtype, [_Sym(lambda dims, d=d: dims[d]) if isinstance(d, str) else d
                                              for d in shape]
        self.shape = tuple(-1 if isinstance(d, str) else d for d in shape)

    def like(self) -> _Desc:
        copy = _Desc(self.dtype, ())
        copy.shape, copy.shape_expr = self.shape, list(self.shape_expr)
        return copy


class _LaunchParams:
    grid_x = grid_y = grid_z = block_x = shared_mem = None


class _SymInt32(int):
    pass


def _stand_in() -> tuple[SimpleNamespace, SimpleNamespace, dict]:
    defined: dict = {}

    def decorator(kind: str):
        return lambda pid: (lambda fn: defined.setdefault((kind, pid), fn))

    trtp = SimpleNamespace(
        TensorDesc=_Desc, Tensor=type("Tensor", (), {}), KernelLaunchParams=_LaunchParams,
        SymInt32=lambda e: e if isinstance(e, _Sym) else _SymInt32(e),
        SymIntExprs=type("SymIntExprs", (), {"from_tuple": staticmethod(tuple)}),
        AutoTuneCombination=type("AutoTuneCombination", (), {"__init__": lambda self, *a: setattr(self, "spec", a)}),
        cdiv=lambda a, b: _Sym(lambda dims: -(-_at(a, dims) // b)) if isinstance(a, _Sym) else -(-a // b),
        register=decorator("register"), autotune=decorator("autotune"),
        aot_impl=decorator("aot_impl"), impl=decorator("impl"))
    trt = SimpleNamespace(DataType=SimpleNamespace(FLOAT="FLOAT", HALF="HALF"))
    return trt, trtp, defined


def test_plugin_definitions_follow_tensorrt_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """The four functions have the argument schemas tensorrt.plugin validates (_validate.py),
    and produce the output descriptor, tuning combination and AOT kernel + launch."""
    trt, trtp, defined = _stand_in()
    trt_plugin.define_plugin(trt, trtp)
    pid = trt_plugin.plugin_id()
    fields = list(trt_plugin.plugin_fields())
    inputs = list(trt_plugin.INPUTS)

    def names(kind: str) -> list[str]:
        return list(inspect.signature(defined[(kind, pid)]).parameters)

    assert names("register") == inputs + fields
    assert names("autotune") == inputs + ["outputs"]
    assert names("aot_impl") == inputs + fields + ["outputs", "tactic"]
    assert names("impl") == inputs + fields + ["outputs", "stream", "tactic"]
    register = inspect.signature(defined[("register", pid)])
    assert [register.parameters[f].annotation for f in fields] == list(trt_plugin.plugin_fields().values())
    assert register.return_annotation is _Desc

    x, w, b, m = (_Desc("HALF", s) for s in ((2, 24, 7, 9), (20, 24, 3, 3), (20,), (2, 1, 7, 9)))
    out = defined[("register", pid)](x, w, b, m, **ATTRIBUTES)
    assert out.dtype == "HALF" and out.shape_expr == [2, 20, 7, 9]
    assert defined[("autotune", pid)](x, w, b, m, (out,))[0].spec == trt_plugin.autotune_spec()

    monkeypatch.setattr(trt_plugin, "device_arch", lambda: "sm_90")
    monkeypatch.setattr(trt_plugin, "driver_cuda_version", lambda who: "12.8")
    name, ptx, launch, scalars = defined[("aot_impl", pid)](x, w, b, m, *ATTRIBUTES.values(), (out,), 2)
    config = trt_plugin.tile_config(LAYER, "fp16", 2)
    assert name in ptx and ".target sm_90a" in ptx
    assert (launch.grid_x, launch.grid_y, launch.grid_z) == (*kernels.conv_grid(2 * 7 * 9, 20, config), 1)
    assert launch.block_x == config.num_warps * 32 and launch.shared_mem > 0
    assert scalars == (7, 9, 2 * 7 * 9)

    with pytest.raises(LCError, match="fp32 or fp16"):
        defined[("aot_impl", pid)](_Desc("INT8", x.shape), w, b, m, *ATTRIBUTES.values(), (out,), 1)


def test_plugin_on_dynamic_batch_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dynamic-size engine: N, H and W of X and M are shape expressions (``shape`` -1 at build time). The output
    descriptor is (N, C_out, H, W) of X's own expressions; the one AOT kernel (constexprs from the static channels
    and weight only) takes H, W, N·H·W and a grid of cdiv(N·H·W, BLOCK_M) from the runtime shapes, so every size of
    the profile launches right."""
    trt, trtp, defined = _stand_in()
    trt_plugin.define_plugin(trt, trtp)
    pid = trt_plugin.plugin_id()
    x, w, b, m = (_Desc("HALF", s) for s in (("N", 24, "H", "W"), (20, 24, 3, 3), (20,), ("N", 1, "H", "W")))
    out = defined[("register", pid)](x, w, b, m, **ATTRIBUTES)
    monkeypatch.setattr(trt_plugin, "device_arch", lambda: "sm_90")
    monkeypatch.setattr(trt_plugin, "driver_cuda_version", lambda who: "12.8")
    name, _, launch, scalars = defined[("aot_impl", pid)](x, w, b, m, *ATTRIBUTES.values(), (out,), 1)
    config = trt_plugin.tile_config(LAYER, "fp16", 1)
    assert name == trt_plugin.aot_kernel(LAYER, "fp16", "sm_90", 1, "12.8").name  # the static layer's kernel
    for n, h, width in ((1, 4, 4), (2, 7, 9), (3, 33, 17), (8, 256, 128)):
        dims = {"N": n, "H": h, "W": width}
        assert [_at(e, dims) for e in out.shape_expr] == [n, 20, h, width]
        assert (_at(launch.grid_x, dims), launch.grid_y, launch.grid_z) == (*kernels.conv_grid(n * h * width, 20,
                                                                                                 config), 1)
        assert [_at(e, dims) for e in scalars] == [h, width, n * h * width]


@pytest.mark.parametrize("release", CREATOR_RELEASES)
def test_parsed_attributes_reach_the_plugin_in_every_release(release: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exported node's attributes as TensorRT's ONNX parser hands them over (INT: one-element int32
    arrays), converted by the creator of a 10.x and an 11.x release by the plugin's annotations, reach
    register and aot_impl as the layer the node describes. (With an ``int`` annotation the 10.x creator
    raises from NumPy 2.4 on: what the int32 arrays avoid.)"""
    node = next(n for n in _region_nodes() if onnx.helper.get_attribute_value(
        next(a for a in n.attribute if a.name == "dilations")) == [2, 2])
    fields = trt_plugin.plugin_fields()
    given = {name: creator_attribute(fields[name], data, release) for name, data in parser_fields(node, fields).items()}
    values = trt_plugin.attribute_values(given)
    assert values["group"] == 1 and values["activation"] in (0, 1) and list(values["dilations"]) == [2, 2]
    if tuple(map(int, release.split(".")[:2])) < (11, 2) and np.lib.NumpyVersion(np.__version__) >= "2.4.0":
        with pytest.raises(TypeError, match="0-dimensional"):
            creator_attribute(int, parser_fields(node, ["group"])["group"], release)

    trt, trtp, defined = _stand_in()
    trt_plugin.define_plugin(trt, trtp)
    pid = trt_plugin.plugin_id()
    x, w, b, m = (_Desc("FLOAT", s) for s in ((2, 24, 7, 9), (20, 24, 3, 3), (20,), (2, 1, 7, 9)))
    out = defined[("register", pid)](x, w, b, m, **given)
    assert out.shape_expr == [2, 20, 7, 9]
    monkeypatch.setattr(trt_plugin, "device_arch", lambda: "sm_90")
    monkeypatch.setattr(trt_plugin, "driver_cuda_version", lambda who: "12.8")
    name = defined[("aot_impl", pid)](x, w, b, m, *given.values(), (out,), 1)[0]
    layer = LAYER._replace(relu=values["activation"] == 1)
    assert name == trt_plugin.aot_kernel(layer, "fp32", "sm_90", 1, "12.8").name


# -- tensorrt.plugin's own Python code, C++ bindings stubbed ---------------------------------------
def _plugin_sources() -> list:
    """(release, {file: bytes}) of ``tensorrt.plugin``'s Python files: those of the installed TensorRT
    bindings (the ``test`` extra installs tensorrt-cu13-bindings on Linux x86_64), found without importing
    them (their ``__init__`` loads libnvinfer), then those of every wheel in LC_TRT_BINDINGS_WHEEL
    (os.pathsep-separated; ``pip download --no-deps tensorrt-cu13-bindings==VERSION`` or
    ``tensorrt-cu12-bindings`` for older 10.x)."""
    sources = []
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "plugin"
        distributions = metadata.packages_distributions().get("tensorrt_bindings", [])
        release = metadata.version(distributions[0]) if distributions else "installed"
        sources.append((release, {path.name: path.read_bytes() for path in folder.glob("*.py")}))
    for wheel in filter(None, os.environ.get("LC_TRT_BINDINGS_WHEEL", "").split(os.pathsep)):
        with zipfile.ZipFile(wheel) as archive:
            sources.append((Path(wheel).name.split("-")[1],
                            {Path(name).name: archive.read(name) for name in archive.namelist()
                             if name.startswith("tensorrt_bindings/plugin/") and name.endswith(".py")}))
    return sources


PLUGIN_SOURCES = [pytest.param(*source, id=source[0]) for source in _plugin_sources()] or [pytest.param(
    None, None, marks=pytest.mark.skip(reason="no tensorrt.plugin sources: install tensorrt-cu13-bindings (the test extra "
                                             "does on Linux x86_64) or set LC_TRT_BINDINGS_WHEEL to its wheel"))]

# Just enough of TensorRT's C++ module for tensorrt/plugin/*.py to import and run: enums as
# strings, dims as lists, every other name a permissive class.
STUB_TENSORRT = """
__version__ = "{release}"
class _Anything:
    def __init__(self, *args, **kwargs): pass
    def __call__(self, *args, **kwargs): return _Anything()
    def __getattr__(self, name): return _Anything()
class _Meta(type):
    def __getattr__(cls, name): return _Anything()
class _Enum:
    def __init__(self, prefix): self._prefix = prefix
    def __getattr__(self, name): return f"{self._prefix}.{name}"
class Dims(list):
    MAX_DIMS = 8
class DimsExprs(list):
    def __init__(self, n): super().__init__([None] * n)
DataType, TensorFormat, DimensionOperation, PluginFieldType, QuickPluginCreationRequest = (
    _Enum(n) for n in ("DataType", "TensorFormat", "DimensionOperation", "PluginFieldType",
                       "QuickPluginCreationRequest"))
creators = {}
class _Registry:
    def register_creator(self, creator, namespace): creators[(creator.name, namespace)] = creator
    def get_creator(self, name, version, namespace): return creators.get((name, namespace))
def get_plugin_registry(): return _Registry()
_classes = {}
def __getattr__(name): return _classes.setdefault(name, _Meta(name, (_Anything,), {}))
"""

# What TensorRT does with an AOT QDP during a build, in the order it does it: create it from parser-style
# fields, ask output types and shapes, formats, configure, tactics, launch parameters and the kernel. Shape
# expressions are functions of named dimensions: constants for a static network, and for a dynamic one N, H, W
# symbolic (IDimensionExprs that are not build-time constants, -1 in the build-time dims), evaluated afterwards at
# the sizes TensorRT's runtime would resolve them to.
GLUE_SCRIPT = """
import json, sys
import numpy as np
import tensorrt as trt
import tensorrt.plugin as trtp
from tensorrt.plugin import _tensor
from layercascade.plugins import trt_plugin

trt_plugin.device_arch = lambda: "sm_90"
trt_plugin.driver_cuda_version = lambda who: "12.8"
trt_plugin.define_plugin(trt, trtp)

class Expr(trt.IDimensionExpr):
    def __init__(self, at, constant=None): self.at, self.constant = at, constant
    def is_constant(self): return self.constant is not None
    def get_constant_value(self): return self.constant

def constant(v): return Expr(lambda dims: v, v)
def dim(d): return Expr(lambda dims: dims[d]) if isinstance(d, str) else constant(d)

class Builder:
    ops = {"SUM": int.__add__, "PROD": int.__mul__, "FLOOR_DIV": int.__floordiv__, "SUB": int.__sub__,
           "CEIL_DIV": lambda a, b: -(-a // b)}
    def constant(self, v): return constant(v)
    def operation(self, op, a, b):
        f = self.ops[op.split(".")[1]]
        if a.is_constant() and b.is_constant():
            return constant(f(a.constant, b.constant))
        return Expr(lambda dims: f(a.at(dims), b.at(dims)))

class Field:
    def __init__(self, name, data): self.name, self.data = name, data

class Desc:
    def __init__(self, dims, dtype):
        self.dims, self.type, self.format, self.scale = trt.Dims(dims), dtype, trt.TensorFormat.LINEAR, -1.0

class DynDesc(trt.DynamicPluginTensorDesc):
    def __init__(self, dims, dtype): self.desc = Desc([-1 if isinstance(d, str) else d for d in dims], dtype)

class Record:
    pass

class Setter(dict):
    nbSymExprs = 0

fields = [Field("activation", np.array([1], np.int32)), Field("dilations", np.array([2, 2], np.int32)),
          Field("group", np.array([1], np.int32)), Field("pads", np.array([2, 2, 2, 2], np.int32))]
# X's dimensions (a str: dynamic); per network, the dimension values to evaluate at (a static network has its one).
X = ("N", 24, "H", "W")
sizes = {"static": [{"N": 2, "H": 7, "W": 9}],
         "dynamic": [{"N": 2, "H": 7, "W": 9}, {"N": 1, "H": 4, "W": 4}, {"N": 3, "H": 33, "W": 17}]}
results = {}
for network, at in sizes.items():
    x = X if network == "dynamic" else tuple(at[0].get(d, d) for d in X)
    shapes = [x, (20, 24, 3, 3), (20,), (x[0], 1, x[2], x[3])]
    for dtype in (trt.DataType.FLOAT, trt.DataType.HALF):
        creator = trt.creators[("RegionConv", "lc")]
        plugin = creator.create_plugin("RegionConv", "lc", fields, None, trt.QuickPluginCreationRequest.STRICT_AOT)
        builder = Builder()
        types = plugin.get_output_data_types([dtype] * 4, [len(s) for s in shapes])
        out = plugin.get_output_shapes([[dim(d) for d in s] for s in shapes], [], builder)
        in_out = [DynDesc(s, dtype) for s in shapes] + [DynDesc((x[0], 20, x[2], x[3]), dtype)]
        _tensor.SymIntExpr._exprBuilder = builder
        formats = plugin.get_supported_format_combinations(in_out, 4)
        plugin.configure_plugin(in_out[:4], in_out[4:])
        tactics = sorted(plugin.get_valid_tactics())
        plugin.set_tactic(2)
        launch, setter = Record(), Setter()
        plugin.get_launch_params([[dim(d) for d in s] for s in shapes], in_out, 4, launch, setter, builder)
        name, ptx = plugin.get_kernel([d.desc for d in in_out[:4]], [in_out[4].desc])
        results.setdefault(network, {})[dtype] = [
            {"plugin": type(plugin).__name__, "types": types, "shape": [e.at(dims) for e in out[0]],
             "formats": len(formats), "tactics": tactics,
             "launch": {k: getattr(launch, k).expr.at(dims) for k in vars(launch)},
             "extra": [setter[i].expr.at(dims) for i in range(setter.nbSymExprs)], "kernel": name,
             "ptx_has_kernel": name.encode() in ptx} for dims in at]
print(json.dumps(results))
"""


@pytest.mark.parametrize("release, files", PLUGIN_SOURCES)
def test_plugin_through_tensorrt_plugin_code(release: str, files: dict[str, bytes], tmp_path: Path) -> None:
    """The real tensorrt.plugin of a release (its C++ module stubbed) registers the plugin, validates its
    four functions and takes it through a build's calls, from the fields the ONNX parser makes of an
    exported node (INT attributes: one-element int32 arrays) to the AOT kernel and its launch: in a static
    network, and in a dynamic one (batch, height and width symbolic, as in a dynamic-size engine) whose output
    shape, grid and scalars resolve to the right values at every size, with the same kernel."""
    package = tmp_path / "tensorrt"
    (package / "plugin").mkdir(parents=True)
    for name, text in files.items():
        (package / "plugin" / name).write_bytes(text)
    (package / "__init__.py").write_text(STUB_TENSORRT.replace("{release}", release))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", GLUE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for network, sizes in (("static", [(2, 7, 9)]), ("dynamic", [(2, 7, 9), (1, 4, 4), (3, 33, 17)])):
        for dtype, precision in (("DataType.FLOAT", "fp32"), ("DataType.HALF", "fp16")):
            config = trt_plugin.tile_config(LAYER, precision, 2)
            kernel = trt_plugin.aot_kernel(LAYER, precision, "sm_90", 2, "12.8")
            assert results[network][dtype] == [{
                "plugin": "_TemplateAOTPlugin", "types": [dtype], "shape": [n, 20, h, w],
                "formats": 10,  # two type combinations × five I/O
                "tactics": list(trt_plugin.TACTICS),
                "launch": {"grid_x": -(-n * h * w // config.block_m), "grid_y": -(-20 // config.block_n), "grid_z": 1,
                           "block_x": kernel.threads, "block_y": 1, "block_z": 1, "shared_mem": kernel.shared_bytes},
                "extra": [h, w, n * h * w], "kernel": kernel.name, "ptx_has_kernel": True} for n, h, w in sizes], network


# -- register_plugins without TensorRT, the source hash ------------------------------------------
@pytest.mark.parametrize("installed, message", [
    ({}, "needs TensorRT, which is not installed"),
    ({"tensorrt_bindings/__init__.py": ""}, "only TensorRT's Python bindings"),
    ({"tensorrt/__init__.py": "raise ImportError('libnvinfer.so.11: cannot open shared object file')"},
     "libraries do not load .libnvinfer.so.11"),
])
def test_register_plugins_says_what_is_missing(installed: dict[str, str], message: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT imports here: the missing-TensorRT errors cannot be provoked")
    except ImportError:
        pass
    for relative, text in installed.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("tensorrt", "tensorrt_bindings"):
        if any(relative.startswith(f"{module}/") for relative in installed):
            monkeypatch.delitem(sys.modules, module, raising=False)
        else:  # not even the real bindings the test extra installs: find_spec gives None
            monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(trt_plugin, "_registered", False)
    with pytest.raises(LCError, match=message) as error:
        trt_plugin.register_plugins()
    assert "\n" not in str(error.value)


def test_register_plugins_defines_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idempotent: once per process, and not again when TensorRT already holds lc::RegionConv
    (e.g. this module imported a second time)."""
    trt, trtp, _ = _stand_in()
    trtp.op = SimpleNamespace()
    calls = []

    def define(*args: object) -> None:
        calls.append(args)
        trtp.op.lc = SimpleNamespace(RegionConv=object())

    monkeypatch.setattr(trt_plugin, "import_tensorrt", lambda who: trt)
    monkeypatch.setattr(trt_plugin, "import_tensorrt_plugin", lambda who: trtp)
    monkeypatch.setattr(trt_plugin, "define_plugin", define)
    monkeypatch.setattr(trt_plugin, "_registered", False)
    trt_plugin.register_plugins()
    trt_plugin.register_plugins()
    monkeypatch.setattr(trt_plugin, "_registered", False)
    trt_plugin.register_plugins()
    assert calls == [(trt, trtp)]


def test_plugin_source_sha256_tracks_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = trt_plugin.plugin_source_sha256()
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and digest == trt_plugin.plugin_source_sha256()
    for relative in trt_plugin.SOURCE_FILES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes((ROOT / relative).read_bytes())
    monkeypatch.setattr(trt_plugin, "PACKAGE_ROOT", tmp_path)
    assert trt_plugin.plugin_source_sha256() == digest
    with (tmp_path / "plugins" / "kernels.py").open("a") as changed:
        changed.write("\n")
    assert trt_plugin.plugin_source_sha256() != digest


# -- on TensorRT ---------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", trt_plugin.PRECISIONS)
@pytest.mark.parametrize("aot", [True, False], ids=["aot", "jit"])
@pytest.mark.parametrize("layers", [[Layer(48, 3, 2, True)], [Layer(48, 3, 1, True), Layer(40, 3, 4, False)]],
                         ids=["one-node", "two-nodes"])
def test_plugin_engine_matches_reference(precision: str, aot: bool, layers: list) -> None:
    """Parse one or two RegionConv nodes (other dilations and activations: each layer must run its own
    kernel) with TensorRT's ONNX parser (the plugin path), build, run, compare with the reference."""
    try:
        trt = import_tensorrt("this test")
    except LCError as error:
        pytest.skip(str(error))
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to PyTorch")
    trt_plugin.register_plugins()
    example = region_conv_chain(precision, (2, 32, 19, 23), layers)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = (trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS if aot
            else trt.NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS)
    network = builder.create_network((1 << int(flag)) | (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(example.model.SerializeToString())
    assert parsed, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    # The parser makes the weights and biases constant layers; each node is one plugin layer.
    types = [network.get_layer(i).type for i in range(network.num_layers)]
    assert types.count(trt.LayerType.PLUGIN_V3) == len(layers)
    assert set(types) <= {trt.LayerType.PLUGIN_V3, trt.LayerType.CONSTANT}
    serialized = builder.build_serialized_network(network, builder.create_builder_config())
    assert serialized is not None
    out = run_plan(trt, logger, serialized, example)
    assert np.abs(out - example.expected).max() <= tolerance(precision, example.expected)
    assert bool((out[np.broadcast_to(example.feeds["M"] == 0, out.shape)] == 0).all())
