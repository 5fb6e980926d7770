"""ONNX Runtime backend: ``loader`` prepares a graph (RegionConv lowering, INT8 rewrites of ``int8``,
the stem's layout fold of ``layout``) and opens its session, ``runner`` runs it, ``backend`` joins
the stage graphs into one cascade session. The exact fp32 reference."""

from layercascade.runtime.backend import BackendSpec, Probes

# ONNX Runtime's execution providers → the devices lc-doctor lists (tensorrt-ep: its TensorRT provider).
PROVIDER_DEVICES = (("cuda", "CUDAExecutionProvider"), ("tensorrt-ep", "TensorrtExecutionProvider"))


def usable_devices(probes: Probes) -> list[str]:
    providers = probes["onnxruntime"].get("providers", [])
    return ["cpu"] + [device for device, provider in PROVIDER_DEVICES if provider in providers]


SPEC = BackendSpec(
    name="ort", label="ONNX Runtime", loader="layercascade.runtime.ort.loader",
    modules=("onnxruntime", "onnx"), install="pip install 'layercascade[cpu]'", probes=("onnxruntime", "onnx"),
    usable_devices=usable_devices, devices=("cpu", "cuda"), options=("precision", "uint8_activations"),
    precisions=("fp32", "int8"), precision_note="the model dir's own: int8 for an INT8 dir, else fp32",
    # After OpenVINO, and at fp32: as fast as OpenVINO's fp32 and the exact reference (docs/openvino.md).
    auto=(None, "fp32", "int8"),
    profiler="ONNX Runtime's profiler", peer="layercascade.runtime.ort.loader:dense_peer", peer_int8=True,
)
