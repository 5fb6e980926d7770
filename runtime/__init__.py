"""Inference backends and the stage orchestrator (lc-run, lc-bench); must not import torch."""
