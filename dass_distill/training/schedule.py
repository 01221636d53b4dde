"""Learning-rate schedule of the DASS/AST recipe: linear warm-up, then per-epoch decay."""

from __future__ import annotations

import math


def lr_factor(step: int, steps_per_epoch: int, warmup_steps: int, decay_start_epoch: int, decay: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based).

    Warm-up ramps linearly over ``warmup_steps``; from epoch ``decay_start_epoch``
    (1-based, as in the recipe: "halved each epoch from epoch 2") the rate is
    multiplied by ``decay`` once per epoch.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    epoch = step // max(1, steps_per_epoch) + 1
    return warm * decay ** max(0, epoch - decay_start_epoch + 1)


def cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then half a cosine from 1 to 0 over the remaining steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))
