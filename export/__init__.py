"""Per-stage ONNX export of a Layer Cascade checkpoint (lc-export); see docs/export.md."""
