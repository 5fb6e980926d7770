"""The FLOP-ideal speedup of a cascade over its dense network (torch-free, shared)."""

from __future__ import annotations

from collections.abc import Sequence


def ideal_speedup(backbone: Sequence[float], head: Sequence[float], active: Sequence[float]) -> float:
    """Dense cost over cascade cost.

    The dense network runs every stage's backbone on every pixel and only the final head;
    the cascade runs stage 1 with its head on every pixel and stage k ≥ 2 with its head on
    the share ``active[k - 2]`` of pixels that reach it.
    """
    dense = sum(backbone) + head[-1]
    cascade = backbone[0] + head[0] + sum(a * (b + h) for a, b, h in zip(active, backbone[1:], head[1:]))
    return dense / cascade
