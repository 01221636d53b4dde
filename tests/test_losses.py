"""DistillationLoss against float64 numpy formulas written out by hand."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dass_distill.errors import UserError
from dass_distill.losses import DistillationLoss
from dass_distill.training.config import DistillConfig, load_config

T_VALUES = [1.0, 2.5, 0.7]


# ------------------------------------------------------------------ hand formulas (float64 numpy)
def np_softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_bce(s, q):
    """Elementwise -(q log sigmoid(s) + (1 - q) log(1 - sigmoid(s)))."""
    p = np_sigmoid(s)
    return -(q * np.log(p) + (1 - q) * np.log(1 - p))


def np_kl_rows(s, p):
    """sum_c p log(p / softmax(s)) per row."""
    return (p * np.log(p / np_softmax(s))).sum(axis=-1)


def np_sigmoid_bce_rows(s, q):
    return np_bce(s, q).mean(axis=-1)


def np_loss(s, y, kd_rows, has, w, labels=True):
    bce_rows = np_bce(s, y).mean(axis=-1)
    if not labels:
        return np.where(has, kd_rows, 0.0).mean()
    w_rows = np.where(has, w, 0.0)
    return ((1 - w_rows) * bce_rows + w_rows * np.where(has, kd_rows, 0.0)).mean()


def batch(seed, B=4, C=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g) * 2
    t = torch.randn(B, C, generator=g) * 3
    y = (torch.rand(B, C, generator=g) < 0.4).float()
    return s, y, t


def zero_missing(t):
    """Rows with a non-finite value set to 0 (they are masked; this keeps the numpy side quiet)."""
    return torch.where(torch.isfinite(t).all(-1, keepdim=True), t, 0.0)


def f64(*xs):
    return [x.double().numpy() for x in xs]


# ------------------------------------------------------------------ kl_softmax
@pytest.mark.parametrize("T", T_VALUES)
def test_kl_softmax_batchmean_value_and_gradient(T):
    s, y, t = batch(0)
    s.requires_grad_(True)
    out = DistillationLoss(1.0, T, "kl_softmax")(s, y, t)
    S, Y, Tt = f64(s.detach(), y, t)
    p = np_softmax(Tt / T)  # temperature on the teacher only
    kl = np_kl_rows(S, p).mean()  # sum over classes, mean over rows
    assert out["loss"].item() == pytest.approx(kl, rel=1e-5)
    assert out["kd"].item() == pytest.approx(kl, rel=1e-5)
    assert out["bce"].item() == pytest.approx(np_bce(S, Y).mean(), rel=1e-5)
    out["loss"].backward()
    hand_grad = (np_softmax(S) - p) / len(S)  # d KL_batchmean / d s
    np.testing.assert_allclose(s.grad.numpy(), hand_grad, rtol=1e-4, atol=1e-6)
    # a small step against the gradient lowers the loss
    with torch.no_grad():
        stepped = DistillationLoss(1.0, T)(s - 0.1 * s.grad, y, t)["loss"]
    assert stepped < out["loss"]


@pytest.mark.parametrize("T", [2.0, 0.5])
def test_temperature_applies_to_the_teacher_only(T):
    _, y, t = batch(1)
    loss = DistillationLoss(1.0, T)
    assert loss(t / T, y, t)["kd"].item() == pytest.approx(0.0, abs=1e-6)  # student matches softmax(t / T)
    S, Tt = f64(t, t)
    assert loss(t, y, t)["kd"].item() == pytest.approx(np_kl_rows(S, np_softmax(Tt / T)).mean(), rel=1e-5)
    assert loss(t, y, t)["kd"].item() > 1e-3


@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
@pytest.mark.parametrize("T", T_VALUES)
def test_t2_scaling(kind, T):
    s, y, t = batch(2)
    S, Y, Tt = f64(s, y, t)
    kd = (np_kl_rows(S, np_softmax(Tt / T)) if kind == "kl_softmax"
          else np_sigmoid_bce_rows(S, np_sigmoid(Tt / T)))
    has = np.ones(len(S), bool)
    plain = DistillationLoss(0.3, T, kind)(s, y, t)
    scaled = DistillationLoss(0.3, T, kind, t2_scaling=True)(s, y, t)
    assert plain["loss"].item() == pytest.approx(np_loss(S, Y, kd, has, 0.3), rel=1e-5)
    assert scaled["loss"].item() == pytest.approx(np_loss(S, Y, T**2 * kd, has, 0.3), rel=1e-5)
    assert scaled["kd"].item() == pytest.approx(T**2 * kd.mean(), rel=1e-5)


# ------------------------------------------------------------------ bce_sigmoid
@pytest.mark.parametrize("w, T", [(0.5, 1.0), (1.0, 2.0), (0.2, 0.5)])
def test_bce_sigmoid_value_and_gradient(w, T):
    s, y, t = batch(3)
    s.requires_grad_(True)
    out = DistillationLoss(w, T, "bce_sigmoid")(s, y, t)
    S, Y, Tt = f64(s.detach(), y, t)
    q = np_sigmoid(Tt / T)
    kd = np_sigmoid_bce_rows(S, q)
    assert out["loss"].item() == pytest.approx(np_loss(S, Y, kd, np.ones(4, bool), w), rel=1e-5)
    assert out["kd"].item() == pytest.approx(kd.mean(), rel=1e-5)
    out["loss"].backward()
    B, C = S.shape
    hand_grad = ((1 - w) * (np_sigmoid(S) - Y) + w * (np_sigmoid(S) - q)) / (B * C)
    np.testing.assert_allclose(s.grad.numpy(), hand_grad, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ missing teachers, label-free
@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
def test_nan_teacher_rows_get_labels_only(kind):
    s, y, t = batch(4)
    t[1] = float("nan")
    t[3, 2] = float("inf")
    S, Y, Tt = f64(s, y, zero_missing(t))
    kd = np_kl_rows(S, np_softmax(Tt / 2)) if kind == "kl_softmax" else np_sigmoid_bce_rows(S, np_sigmoid(Tt / 2))
    has = np.array([True, False, True, False])
    out = DistillationLoss(0.6, 2.0, kind)(s, y, t)
    assert out["loss"].item() == pytest.approx(np_loss(S, Y, kd, has, 0.6), rel=1e-5)
    assert out["kd"].item() == pytest.approx(kd[has].mean(), rel=1e-5)


@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
def test_label_free(kind):
    s, y, t = batch(5)
    t[2] = float("nan")
    s.requires_grad_(True)
    out = DistillationLoss(0.1, 1.5, kind, labels=False)(s, y, t)  # kd_weight is unused
    S, Y, Tt = f64(s.detach(), y, zero_missing(t))
    kd = np_kl_rows(S, np_softmax(Tt / 1.5)) if kind == "kl_softmax" else np_sigmoid_bce_rows(S, np_sigmoid(Tt / 1.5))
    has = np.array([True, True, False, True])
    assert out["loss"].item() == pytest.approx(kd[has].sum() / 4, rel=1e-5)  # missing rows add 0, over B
    assert out["kd"].item() == pytest.approx(kd[has].mean(), rel=1e-5)
    assert out["bce"].item() == pytest.approx(np_bce(S, Y).mean(), rel=1e-5)  # still reported
    out["loss"].backward()
    assert torch.all(s.grad[2] == 0) and torch.all(torch.isfinite(s.grad))
    # changing the labels changes nothing
    assert DistillationLoss(0.1, 1.5, kind, labels=False)(s, 1 - y, t)["loss"].item() == out["loss"].item()


@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
@pytest.mark.parametrize("no_teacher", ["nan", "none"])
def test_label_free_without_any_teacher_is_zero_with_grad(kind, no_teacher):
    s, y, t = batch(6)
    s.requires_grad_(True)
    teacher = torch.full_like(t, float("nan")) if no_teacher == "nan" else None
    out = DistillationLoss(1.0, 1.0, kind, labels=False)(s, y, teacher)
    assert out["loss"].item() == 0.0 and out["kd"].item() == 0.0
    assert out["loss"].requires_grad and out["bce"].dim() == 0
    out["loss"].backward()
    assert torch.all(s.grad == 0)


# ------------------------------------------------------------------ mixup of teacher targets
@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
def test_mixup_lam_one_is_exactly_unmixed(kind):
    s, y, t = batch(7)
    partner = torch.randn_like(t) * 3
    partner[0] = float("nan")  # irrelevant where lam == 1
    loss = DistillationLoss(0.5, 2.0, kind)
    plain = loss(s, y, t)
    mixed = loss(s, y, t, partner, torch.ones(4))
    for k in ("loss", "bce", "kd"):
        assert torch.equal(plain[k], mixed[k]), k


@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_mixup_targets_are_mixtures_of_teacher_distributions(kind, T):
    s, y, t = batch(8)
    partner = torch.randn_like(t) * 3
    partner[3] = float("nan")  # lam < 1 with a missing partner: no target for that row
    lam = torch.tensor([0.7, 1.0, 0.0, 0.4])
    S, Y, Ta, Tb = f64(s, y, t, zero_missing(partner))
    L = lam.double().numpy()[:, None]
    if kind == "kl_softmax":
        kd = np_kl_rows(S, L * np_softmax(Ta / T) + (1 - L) * np_softmax(Tb / T))
    else:
        kd = np_sigmoid_bce_rows(S, L * np_sigmoid(Ta / T) + (1 - L) * np_sigmoid(Tb / T))
    has = np.array([True, True, True, False])
    out = DistillationLoss(0.5, T, kind)(s, y, t, partner, lam)
    assert out["loss"].item() == pytest.approx(np_loss(S, Y, kd, has, 0.5), rel=1e-5)
    assert out["kd"].item() == pytest.approx(kd[has].mean(), rel=1e-5)
    free = DistillationLoss(0.5, T, kind, labels=False)(s, y, t, partner, lam)
    assert free["loss"].item() == pytest.approx(np_loss(S, Y, kd, has, 0.5, labels=False), rel=1e-5)


def test_mixup_needs_partner_and_lam():
    s, y, t = batch(9)
    with pytest.raises(ValueError, match="both"):
        DistillationLoss()(s, y, t, partner_logits=t)
    with pytest.raises(ValueError, match="both"):
        DistillationLoss()(s, y, t, lam=torch.ones(4))
    # without a teacher (labels-only mixup; the collate passes lam alone) they are ignored
    lam = torch.tensor([0.3, 1.0, 0.5, 0.0])
    for labels in (True, False):
        loss = DistillationLoss(0.5, 1.0, labels=labels)
        assert torch.equal(loss(s, y, None, None, lam)["loss"], loss(s, y)["loss"])


# ------------------------------------------------------------------ precision, stability
@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
def test_bf16_inputs_computed_in_float32(kind):
    s, y, t = batch(10)
    sb, tb = s.bfloat16(), t.bfloat16()
    out = DistillationLoss(0.5, 2.0, kind)(sb, y, tb)
    ref = DistillationLoss(0.5, 2.0, kind)(sb.float(), y, tb.float())
    assert all(v.dtype == torch.float32 for v in out.values())
    for k in out:
        torch.testing.assert_close(out[k], ref[k])


@pytest.mark.parametrize("kind", ["kl_softmax", "bce_sigmoid"])
def test_extreme_logits_stay_finite(kind):
    s = torch.tensor([[1e4, -1e4, 0.0], [-3e4, 2e4, 5.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [3e4, -2e4, 1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    lam = torch.tensor([0.3, 1.0])
    out = DistillationLoss(0.5, 0.1, kind, t2_scaling=True)(s, y, t, t.flip(0), lam)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(s.grad).all()


# ------------------------------------------------------------------ construction and config
def test_positional_api_and_bad_settings():
    s, y, t = batch(11)
    assert torch.equal(DistillationLoss(0.4, 2.0)(s, y, t)["loss"],
                       DistillationLoss(kd_weight=0.4, temperature=2.0, kind="kl_softmax")(s, y, t)["loss"])
    with pytest.raises(ValueError, match="unknown KD loss"):
        DistillationLoss(0.5, 1.0, "mse")
    with pytest.raises(ValueError, match="kd_weight > 0"):
        DistillationLoss(0.0, 1.0, labels=False)


def test_no_distillation_is_plain_label_bce():
    s, y, t = batch(12)
    out = DistillationLoss(0.0, 3.0)(s, y, t)
    S, Y = f64(s, y)
    assert out["loss"].item() == pytest.approx(np_bce(S, Y).mean(), rel=1e-6)
    assert set(out) == {"loss", "bce", "kd"} and out["kd"].item() == 0.0


def test_from_config(tmp_path):
    cache = tmp_path / "cache.h5"
    cache.touch()
    cfg = DistillConfig(cache=cache, kd_weight=0.7, temperature=2.0, kd_loss="bce_sigmoid",
                        t2_scaling=True, labels=False)
    loss = DistillationLoss.from_config(cfg, distilling=True)
    assert (loss.kd_weight, loss.temperature, loss.kind, loss.t2_scaling, loss.labels) == (
        0.7, 2.0, "bce_sigmoid", True, False)
    plain = DistillationLoss.from_config(cfg, distilling=False)
    assert (plain.kd_weight, plain.labels) == (0.0, True)
    default = DistillConfig()
    assert (default.kd_loss, default.t2_scaling, default.labels) == ("kl_softmax", False, True)


@pytest.mark.parametrize("fields, message", [
    ({"kd_loss": "mse"}, "kl_softmax"),
    ({"t2_scaling": "maybe"}, "bool"),
    ({"labels": False, "kd_weight": 0.0, "cache": "CACHE"}, "kd_weight > 0"),
    ({"labels": False}, "set distill.cache"),
    ({"labels": False, "cache": "CACHE", "missing": "labels_only"}, "distill.missing=skip"),
    ({"kd_temperature": 2.0}, "Extra inputs"),
])
def test_distill_config_validation(tmp_path, fields, message):
    cache = tmp_path / "cache.h5"
    cache.touch()
    fields = {k: (cache if v == "CACHE" else v) for k, v in fields.items()}
    with pytest.raises(ValidationError, match=message):
        DistillConfig(**fields)


def test_load_config_reports_label_free_errors(tmp_path):
    train = tmp_path / "train.jsonl"
    train.touch()
    with pytest.raises(UserError, match=r"command line: distill: labels=false .* needs kd_weight > 0"):
        load_config(None, [f"data.train={train}", f"distill.cache={train}", "distill.labels=false",
                           "distill.kd_weight=0"])
    cfg = load_config(None, [f"data.train={train}", f"distill.cache={train}", "distill.labels=false",
                             "distill.kd_loss=bce_sigmoid"])
    assert not cfg.distill.labels and cfg.distill.kd_loss == "bce_sigmoid"
