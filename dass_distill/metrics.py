"""Audio tagging metrics: mAP (mean over classes of average precision), AUC, d-prime.

Average precision follows scikit-learn's ``average_precision_score`` (the
definition AST and DASS report): the sum over distinct score thresholds of
precision times the recall step. Classes without a positive example are left out
of the mean; ROC AUC (and so d-prime) also needs a negative example.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _class_curves(scores: np.ndarray, targets: np.ndarray):
    """Per class: (true positives, false positives) at each distinct threshold, high to low."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], targets[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tied run
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    return tps, fps


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per class for (N, C) scores and binary targets; NaN where a class has no positive."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0.5
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = targets[:, c].sum()
        if pos == 0:
            continue
        tps, fps = _class_curves(scores[:, c], targets[:, c])
        precision = tps / (tps + fps)
        recall = tps / pos
        ap[c] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return ap


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """ROC AUC per class; NaN where a class has only positives or only negatives."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0.5
    auc = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos, neg = targets[:, c].sum(), (~targets[:, c]).sum()
        if pos == 0 or neg == 0:
            continue
        tps, fps = _class_curves(scores[:, c], targets[:, c])
        tpr, fpr = np.r_[0.0, tps / pos], np.r_[0.0, fps / neg]
        auc[c] = _trapezoid(tpr, fpr)
    return auc


def d_prime(auc: float) -> float:
    """d' = sqrt(2) * Phi^-1(AUC), the AudioSet convention."""
    return math.sqrt(2.0) * float(torch.special.ndtri(torch.tensor(auc, dtype=torch.float64)))


def tagging_metrics(scores: np.ndarray, targets: np.ndarray) -> dict:
    """mAP, mean AUC, d-prime and per-class AP / AUC / positive counts of (N, C) scores
    against multi-hot targets. Per-class values are NaN where undefined (see the module doc)."""
    ap = average_precision(scores, targets)
    auc = roc_auc(scores, targets)
    mean_auc = float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")
    return {
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc) if math.isfinite(mean_auc) else float("nan"),
        "per_class_ap": ap.tolist(),
        "per_class_auc": auc.tolist(),
        "positives": (np.asarray(targets) > 0.5).sum(axis=0).astype(int).tolist(),
    }
