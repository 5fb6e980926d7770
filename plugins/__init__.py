"""Region-convolution kernels and their TensorRT / ONNX Runtime bindings; see DESIGN §6–8.

``kernels`` — Triton kernels on NHWC rows (list form: :func:`~.kernels.active_list` +
:func:`~.kernels.region_conv`; single-launch mask form for TensorRT AOT:
:func:`~.kernels.region_conv_masked`) and the block-size table; ``reference`` — the same
calls in PyTorch (DESIGN §4); ``ptx`` — AOT compilation to PTX for sm_80–sm_90 without a
GPU; ``check`` — ``python -m layercascade.plugins.check [--json] [--quick]``; ``trt_plugin``
— the TensorRT plugin ``lc::RegionConv`` (docs/tensorrt.md). Importing this package imports
neither torch nor triton.
"""
