"""The OpenVINO backend (CPU): the joined, lowered cascade graph compiled by OpenVINO's CPU plugin. What
``--backend auto`` runs a model dir with on a CPU where it is installed (docs/openvino.md)."""

from layercascade.runtime.backend import BackendSpec

SPEC = BackendSpec(
    name="openvino", label="OpenVINO", loader="layercascade.runtime.openvino.loader",
    modules=("openvino", "onnx"), install="pip install 'layercascade[cpu]'", probes=("openvino", "onnx"),
    options=("precision", "performance_hint"), options_hint=" (it runs fp32, bf16 or an INT8 dir from lc-calibrate)",
    precisions=("fp32", "bf16", "int8"),
    precision_note="default bf16 where the CPU has native bf16, else fp32; int8 runs an INT8 dir from lc-calibrate",
    # Its default (bf16 where native) and int8 are the fastest CPU paths measured; at fp32 it is not (ort is).
    auto=(None, "bf16", "int8"),
    # Each new active-pixel count costs it a re-plan of the tensors whose length that count sets, and every new
    # image brings one: on a new image every run it is slower than ONNX Runtime on small models, faster on large
    # ones (the crossover between 4.5 and 9 GMACs per image: docs/openvino.md, tools/auto_threshold.py).
    auto_min_gmacs=6.0,
    profiler="OpenVINO's per-op counters (PERF_COUNT)", peer="layercascade.runtime.openvino.loader:dense_peer",
    peer_int8=True,
)
