"""Region-convolution kernels and their TensorRT / ONNX Runtime bindings; see docs/tensorrt.md.

``kernels`` — Triton kernels on NHWC rows (list form: :func:`~.kernels.active_list` +
:func:`~.kernels.region_conv`; single-launch mask form for TensorRT AOT:
:func:`~.kernels.region_conv_masked`) and the block-size table; ``reference`` — the same
calls in PyTorch (the region semantics of docs/architecture.md); ``ptx`` — AOT compilation to
PTX for sm_80–sm_90 without a GPU; ``check`` — ``python -m layercascade.plugins.check [--json]
[--quick]``; ``trt_plugin`` — the TensorRT plugin ``lc::RegionConv`` (docs/tensorrt.md);
``nvidia`` — the one module that imports TensorRT and cuda-python, and asks the driver about the
GPU. Importing this package imports neither torch nor triton.
"""
