"""The Layer Cascade network in PyTorch, region semantics, training, data sets and metrics.

Importing this package does not import torch: data sets and metrics are numpy-only so the
runtime can evaluate exported models with them. Torch modules live in submodules
(``region``, ``network``, ``backbones``, ``train``, ``checkpoint``).
"""
