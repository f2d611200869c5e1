"""Learning-rate schedule of QMRITools ``TrainSegmentationNetwork``.

Multiplier of the base rate per batch index t of T total batches, with n1 = 0.25 T,
n2 = 0.40 T, n3 = 0.95 T: cosine warm-up from 0.2 to 1 before n1, 1 until n2, cosine decay
from 1 to 0.1 until n3, then 0.1.
"""
from __future__ import annotations

import math

WARMUP_END, PLATEAU_END, DECAY_END = 0.25, 0.40, 0.95
WARMUP_START, FINAL = 0.2, 0.1


def lr_multiplier(step: int, total_steps: int) -> float:
    """Learning-rate multiplier at batch ``step`` (0-based) of ``total_steps``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    n1, n2, n3 = WARMUP_END * total_steps, PLATEAU_END * total_steps, DECAY_END * total_steps
    if step < n1:
        return WARMUP_START + (1 - WARMUP_START) * 0.5 * (1 - math.cos(math.pi * step / n1))
    if step < n2:
        return 1.0
    if step < n3:
        return FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * (step - n2) / (n3 - n2)))
    return FINAL


def learning_rate(step: int, total_steps: int, base_rate: float) -> float:
    """``base_rate * lr_multiplier(step, total_steps)``."""
    return base_rate * lr_multiplier(step, total_steps)
