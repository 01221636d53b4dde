import math

import numpy as np
import pytest
import torch

from dass_distill.losses import DistillationLoss, kl_distillation
from dass_distill.metrics import average_precision, d_prime, roc_auc, tagging_metrics


def hand_loss(s, y, t, w, T):
    """The DASS loss written out elementwise in float64."""
    B, C = len(s), len(s[0])
    bce = 0.0
    for b in range(B):
        for c in range(C):
            p = 1 / (1 + math.exp(-s[b][c]))
            bce -= y[b][c] * math.log(p) + (1 - y[b][c]) * math.log(1 - p)
    bce /= B * C
    kl = 0.0
    for b in range(B):
        zt = [math.exp(v / T) for v in t[b]]
        zs = [math.exp(v) for v in s[b]]
        pt = [v / sum(zt) for v in zt]
        ps = [v / sum(zs) for v in zs]
        kl += sum(pt[c] * math.log(pt[c] / ps[c]) for c in range(C))
    kl /= B
    return (1 - w) * bce + w * kl


@pytest.mark.parametrize("w, T", [(0.5, 1.0), (0.3, 2.5), (0.0, 1.0), (1.0, 0.7)])
def test_distillation_loss_matches_hand_computation(w, T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, generator=g) * 2, torch.randn(4, 6, generator=g) * 3
    y = (torch.rand(4, 6, generator=g) < 0.4).float()
    got = DistillationLoss(w, T)(s, y, t)["loss"].item()
    assert got == pytest.approx(hand_loss(s.tolist(), y.tolist(), t.tolist(), w, T), rel=1e-5)


def test_rows_without_teacher_use_labels_only():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    y = (torch.rand(3, 5, generator=g) < 0.5).float()
    t_missing = t.clone()
    t_missing[1] = float("nan")
    loss = DistillationLoss(0.5, 1.0)(s, y, t_missing)["loss"]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="none").mean(1)
    kl = torch.stack([kl_distillation(s[i : i + 1], t[i : i + 1]) for i in range(3)])
    expected = (0.5 * bce[0] + 0.5 * kl[0] + bce[1] + 0.5 * bce[2] + 0.5 * kl[2]) / 3
    torch.testing.assert_close(loss, expected)
    assert torch.isfinite(loss)


def test_loss_rejects_bad_settings():
    with pytest.raises(ValueError):
        DistillationLoss(1.5)
    with pytest.raises(ValueError):
        DistillationLoss(0.5, 0.0)


def test_metrics_match_sklearn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random((300, 9)) < 0.25).astype(float)
    s = rng.random((300, 9)).round(2) + 0.4 * y  # rounding makes ties, as real scores have
    y[:, 8] = 0  # a class with no positive is left out of the mean
    ap, auc = average_precision(s, y), roc_auc(s, y)
    for c in range(8):
        assert ap[c] == pytest.approx(average_precision_score(y[:, c], s[:, c]), abs=1e-12)
        assert auc[c] == pytest.approx(roc_auc_score(y[:, c], s[:, c]), abs=1e-12)
    assert np.isnan(ap[8]) and np.isnan(auc[8])
    m = tagging_metrics(s, y)
    assert m["mAP"] == pytest.approx(np.mean(ap[:8]))
    assert m["d_prime"] == pytest.approx(math.sqrt(2) * 0.0 + d_prime(np.mean(auc[:8])))


def test_d_prime_values():
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    assert d_prime(0.9) == pytest.approx(math.sqrt(2) * 1.2815515655446004)
