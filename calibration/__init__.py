"""Cascade-aware INT8 calibration of exported stage graphs (lc-calibrate); see docs/calibration.md."""
