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
    # Its per-run overhead (re-planning the row tensors whose size the active pixels set) outweighs its faster
    # kernels on small models: the demo at 160² (0.22 GMACs per image) runs faster on ONNX Runtime, alike at 240×320
    # (0.66), slower from 320² (0.88) up (docs/openvino.md, "What --backend auto picks").
    auto_min_gmacs=0.75,
    profiler="OpenVINO's per-op counters (PERF_COUNT)", peer="layercascade.runtime.openvino.loader:dense_peer",
    peer_int8=True,
)
