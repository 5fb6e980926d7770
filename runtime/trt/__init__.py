"""TensorRT backend: ``engines`` is the engine dir lc-build writes (format, checks, buffer plan;
pure Python), ``build`` builds it, ``loader`` checks an engine dir against this machine and
deserializes it, ``runner`` runs the stage engines on one CUDA stream."""

from pathlib import Path

from layercascade.runtime.backend import BackendSpec


def holds_engines(source: Path) -> bool:
    from layercascade.runtime.trt.engines import is_engine_dir

    return is_engine_dir(source)


SPEC = BackendSpec(
    name="trt", label="TensorRT", loader="layercascade.runtime.trt.loader",
    modules=("tensorrt", "cuda"), install="pip install 'layercascade[gpu]' (docs/build.md)",
    probes=("tensorrt", "cuda-python", "lc plugins"), usable_devices=lambda probes: ["cuda"], devices=("cuda",),
    options=("precision", "cuda_graph"), precisions=("fp32", "fp16", "int8"),
    precision_note="the precision the engines were built with, lc-build --precision",
    claims=holds_engines, claimed="holds TensorRT engines (lc-build)",
)
