"""The label prior of a training set, and the reference levels it sets.

A multi-label tagger trained with BCE first learns each class's frequency. If its output
bias starts at 0 (probability 0.5) while the classes occur in ~10% of the clips, the
largest gradient of the first steps is the same for every clip ("lower every logit");
Adam moves the bias by only ~lr per step, so the backbone does that job instead, and a
network whose features are normalised per position (DASS's LayerNorm2d, a transformer's
final LayerNorm) does it fastest by making its pooled features identical for every
input. That collapse removes the input-dependent gradient the model needs to learn
anything else (observed: ``dass_tiny``'s pooled features went from 0.2 to 0.001 std
across clips in 25 steps and stayed there). Starting the output bias at the prior's
logit (as RetinaNet does for rare classes) takes that job off the backbone.
"""

from __future__ import annotations

import numpy as np

#: Priors are clipped to [PRIOR_FLOOR, 1 - PRIOR_FLOOR]: a class absent from the
#: training set would otherwise get an infinite bias.
PRIOR_FLOOR = 1e-4


def label_prior(targets: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-class positive rate of (N, C) targets, under per-clip sampling ``weights``
    (balanced sampling draws clips with these weights), clipped away from 0 and 1."""
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2 or not len(targets):
        raise ValueError(f"targets must be a non-empty (clips, classes) array, got shape {targets.shape}")
    if weights is None:
        prior = targets.mean(axis=0)
    else:
        w = np.asarray(weights, dtype=np.float64)
        prior = (w[:, None] * targets).sum(axis=0) / w.sum()
    return np.clip(prior, PRIOR_FLOOR, 1.0 - PRIOR_FLOOR)


def prior_logits(prior: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)): the output bias whose sigmoid is the prior (p clipped as in label_prior)."""
    prior = np.clip(np.asarray(prior, dtype=np.float64), PRIOR_FLOOR, 1.0 - PRIOR_FLOOR)
    return np.log(prior) - np.log1p(-prior)


def prior_bce(prior: np.ndarray) -> float:
    """Mean binary entropy of the prior (nats): the BCE of a model that predicts each
    class's frequency for every clip, i.e. has learned nothing about the input."""
    p = np.clip(np.asarray(prior, dtype=np.float64), PRIOR_FLOOR, 1.0 - PRIOR_FLOOR)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log1p(-p))))


def chance_average_precision(positives: int, total: int) -> float:
    """Expected AP of a random ranking of ``total`` items with ``positives`` positives.

    With r the rank of a positive (uniform on 1..N) and the other R - 1 positives spread
    at random, E[precision at r] = (R-1)/(N-1) + (N-R) / ((N-1) r), and E[1/r] = H_N / N.
    """
    n, r = int(total), int(positives)
    if not 0 < r <= n:
        raise ValueError(f"need 0 < positives <= total, got {positives} of {total}")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (r - 1) / (n - 1) + (n - r) * harmonic / (n * (n - 1))


def chance_map(targets: np.ndarray) -> float:
    """Expected mAP of random scores on (N, C) binary targets (classes with positives only,
    as the evaluation does)."""
    t = np.asarray(targets) > 0.5
    counts = t.sum(axis=0)
    aps = [chance_average_precision(int(c), t.shape[0]) for c in counts if c > 0]
    if not aps:
        raise ValueError("no class has a positive clip")
    return float(np.mean(aps))
