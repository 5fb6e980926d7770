"""Region-convolution kernels and their TensorRT / ONNX Runtime bindings; see DESIGN §6–8."""
