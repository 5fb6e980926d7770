"""Per-stage ONNX export of a Layer Cascade checkpoint (lc-export); see DESIGN §5–6."""
