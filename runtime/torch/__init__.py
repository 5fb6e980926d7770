"""PyTorch backend: runs a checkpoint's three stages itself, not the ONNX graphs of a model dir.

``reference`` is the dense masked reference (the normative region semantics, on the CPU),
``planner`` turns the network's folded ops (``model/ops.py``) into kernel calls on NHWC tensors,
``program`` runs the cascade and the dense network as such plans on a device (Triton region convs,
CUDA graphs), ``backend`` is the backend object and ``loader`` loads a checkpoint into it. The only
part of ``runtime/`` that imports torch; this file does not (the registry reads :data:`SPEC`).
"""

from layercascade.runtime.backend import BackendSpec, Probes


def usable_devices(probes: Probes) -> list[str]:
    return ["cpu"] + (["cuda"] if probes["torch"].get("cuda") and probes["triton"]["ok"] else [])


SPEC = BackendSpec(
    name="torch", label="torch", loader="layercascade.runtime.torch.loader",
    modules=("torch",), install="pip install 'layercascade[torch]', or use --backend ort",
    probes=("torch",), usable_devices=usable_devices, devices=("cpu", "cuda"),
    options=("precision", "cuda_graph", "input_size", "kernels"), precisions=("fp32", "fp16"),
    precision_note="default fp32; fp16 on CUDA",
    claims=lambda source: source.suffix == ".pt", claimed="is a checkpoint (lc-train)",
    peer="layercascade.runtime.torch.peer:dense_peer",
    # OpenMP threads that spin while idle steal the cores the next layer needs as soon as anything else runs on
    # the machine; like the ONNX Runtime backend, wait passively. OpenMP reads this when torch loads it, so it is
    # set before the backend's modules load (a user's setting stays).
    environment=(("OMP_WAIT_POLICY", "PASSIVE"),),
)
