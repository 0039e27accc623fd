"""Step-indexed schedules (pure functions of the step, so a resumed run follows the same curve)."""

from __future__ import annotations

import math


def exp_decay(step: int, total: int, lr_init: float, lr_final: float, warmup: int = 0) -> float:
    """Log-linear interpolation from ``lr_init`` (step 0) to ``lr_final`` (step ``total``), as 3DGS decays
    its position learning rate; held at ``lr_final`` after ``total``.

    ``warmup`` > 0 multiplies the rate by a linear ramp (step + 1) / warmup over the first ``warmup`` steps,
    so a parameter starts moving gently (used for poses while the Gaussians are still blurry).
    """
    if lr_init <= 0:
        return 0.0
    t = min(max(step / max(total, 1), 0.0), 1.0)
    lr = math.exp((1 - t) * math.log(lr_init) + t * math.log(max(lr_final, 1e-30)))
    if warmup > 0 and step < warmup:
        lr *= (step + 1) / warmup
    return lr


def sh_degree_at(step: int, max_degree: int, every: int) -> int:
    """Active SH degree at ``step``: one more band every ``every`` steps (3DGS: 1000), up to the maximum."""
    if every <= 0:
        return max_degree
    return min(max_degree, step // every)


def resolution_level(step: int, total: int, levels: int, fraction: float) -> int:
    """Coarse-to-fine downsampling exponent k at ``step`` (images at 1/2^k): ``levels`` equal shares of the
    first ``fraction`` of ``total`` steps count down from ``levels`` to 1, then 0 (full resolution)."""
    if levels <= 0 or fraction <= 0 or total <= 0:
        return 0
    coarse_steps = fraction * total
    if step >= coarse_steps:
        return 0
    return levels - int(step * levels // coarse_steps)
