"""Distillation losses.

Notation, per batch row b (B rows, C classes): student logits s, labels y, teacher
logits t, temperature T (applied to the teacher only, as in the public DASS code) and
w = kd_weight.

Loss (rows without a teacher target get w = 0, i.e. the label term alone):

    labels=True:   L = 1/B sum_b [ (1 - w) * BCE_b + w * k * KD_b ]
    labels=False:  L = 1/B sum_b [ k * KD_b ]          (CED style, label free; kd_weight unused,
                                                         rows without a teacher add 0)

    BCE_b = 1/C sum_c BCEWithLogits(s_bc, y_bc)
    k     = T^2 if t2_scaling else 1                    (Hinton's scaling; DASS does not use it)

KD term, ``kind``:

    kl_softmax  (DASS):      KD_b = sum_c p_bc (log p_bc - log softmax(s_b)_c),  p_b = softmax(t_b / T)
                             (KL(p || softmax(s)) summed over classes, "batchmean" over rows)
    bce_sigmoid (EfficientAT / CED):
                             KD_b = 1/C sum_c BCEWithLogits(s_bc, q_bc),         q_b = sigmoid(t_b / T)

Mixup of teacher targets: with the partner clip's teacher logits t' and the mixing weight
lam_b, the target is the mixture of the two teachers' distributions,

    p_b = lam_b * softmax(t_b / T) + (1 - lam_b) * softmax(t'_b / T)
    q_b = lam_b * sigmoid(t_b / T) + (1 - lam_b) * sigmoid(t'_b / T)

(the caller mixes the labels). lam_b = 1 gives exactly the unmixed target. A row has a teacher
target when its teacher logits are finite and, unless lam_b = 1, so are its partner's; a row
without one (a NaN row: a clip missing from the cache) gets the label loss alone, or nothing
when labels=False.

Everything is computed in float32 (bf16 inputs are upcast), in log-softmax / logits form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from dass_distill.training.config import DistillConfig

KD_LOSSES = ("kl_softmax", "bce_sigmoid")


class DistillationLoss(nn.Module):
    """Label BCE plus a KD term (formulas in the module docstring).

    ``forward`` returns ``loss`` (to optimise), ``bce`` (label BCE, batch mean; logged even when
    labels=False) and ``kd`` (the KD term as it enters the loss, T^2 included, mean over the rows
    that have a teacher target; 0 when none has). All are 0-dim float32 tensors.
    """

    def __init__(self, kd_weight: float = 0.5, temperature: float = 1.0, kind: str = "kl_softmax",
                 t2_scaling: bool = False, labels: bool = True) -> None:
        super().__init__()
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if kind not in KD_LOSSES:
            raise ValueError(f"unknown KD loss '{kind}'; choose one of {', '.join(KD_LOSSES)}")
        if not labels and kd_weight == 0.0:
            raise ValueError("label-free distillation (labels=False) needs kd_weight > 0")
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.kind = kind
        self.t2_scaling = t2_scaling
        self.labels = labels

    @classmethod
    def from_config(cls, cfg: DistillConfig, distilling: bool) -> DistillationLoss:
        """The loss a ``distill`` config section asks for; ``distilling=False`` (no teacher) gives
        plain label BCE."""
        if not distilling:
            return cls(0.0, cfg.temperature)
        return cls(cfg.kd_weight, cfg.temperature, cfg.kd_loss, cfg.t2_scaling, cfg.labels)

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, partner_logits: torch.Tensor | None = None,
                lam: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, C) student logits and labels, optional (B, C) teacher logits (NaN rows: no target);
        for mixup, the partner clips' (B, C) teacher logits and the (B,) weights ``lam`` of the
        first clip. Without teacher logits, partner_logits and lam are ignored (labels-only mixup)."""
        if teacher_logits is not None and (partner_logits is None) != (lam is None):
            raise ValueError("mixup of teacher targets needs both partner_logits and lam")
        s = student_logits.float()
        bce_rows = F.binary_cross_entropy_with_logits(s, labels.float(), reduction="none").mean(dim=-1)
        bce = bce_rows.mean()
        if self.labels and (self.kd_weight == 0.0 or teacher_logits is None):
            return {"loss": bce, "bce": bce, "kd": bce.new_zeros(())}

        B = s.shape[0]
        t, has_teacher = _finite_rows(teacher_logits, s)
        if teacher_logits is not None and partner_logits is not None:
            lam = torch.as_tensor(lam, dtype=torch.float32, device=s.device).expand(B)
            partner, partner_ok = _finite_rows(partner_logits, s)
            has_teacher &= partner_ok | (lam == 1)
        else:
            partner = None
        kd_rows = KD_ROWS[self.kind](s, t, self.temperature, partner, lam)
        if self.t2_scaling:
            kd_rows = kd_rows * self.temperature**2

        if self.labels:
            w = self.kd_weight * has_teacher.float()
            loss = ((1 - w) * bce_rows + w * kd_rows).mean()
        else:  # kd_rows is finite everywhere (missing rows were zero-filled): masked rows add 0, keep grad
            loss = (has_teacher.float() * kd_rows).mean()
        n = has_teacher.sum().clamp(min=1)
        kd = (kd_rows.detach() * has_teacher).sum() / n
        return {"loss": loss, "bce": bce, "kd": kd}


def _finite_rows(x: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits with non-finite rows zero-filled, and the (B,) mask of the finite rows."""
    if x is None:
        return torch.zeros_like(like), torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
    x = x.detach().float()
    ok = torch.isfinite(x).all(dim=-1)
    return torch.where(ok[:, None], x, 0.0), ok


def softmax_target_log_probs(teacher_logits: torch.Tensor, temperature: float = 1.0,
                             partner_logits: torch.Tensor | None = None,
                             lam: torch.Tensor | None = None) -> torch.Tensor:
    """log p, p = softmax(t / T), or with mixup lam * softmax(t / T) + (1 - lam) * softmax(t' / T)
    (as a log-sum-exp, so lam = 1 gives log_softmax(t / T) exactly)."""
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    if partner_logits is None:
        return log_p
    lam = lam[:, None]
    log_p_partner = F.log_softmax(partner_logits / temperature, dim=-1)
    return torch.logaddexp(log_p + torch.log(lam), log_p_partner + torch.log1p(-lam))


def sigmoid_target_probs(teacher_logits: torch.Tensor, temperature: float = 1.0,
                         partner_logits: torch.Tensor | None = None, lam: torch.Tensor | None = None) -> torch.Tensor:
    """q = sigmoid(t / T), or with mixup lam * sigmoid(t / T) + (1 - lam) * sigmoid(t' / T)."""
    q = torch.sigmoid(teacher_logits / temperature)
    if partner_logits is None:
        return q
    lam = lam[:, None]
    return lam * q + (1 - lam) * torch.sigmoid(partner_logits / temperature)


def kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            partner_logits: torch.Tensor | None = None, lam: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: KL(p || softmax(s)) = sum_c p_c (log p_c - log softmax(s)_c), p from
    :func:`softmax_target_log_probs`."""
    log_p = softmax_target_log_probs(teacher_logits, temperature, partner_logits, lam)
    return (log_p.exp() * (log_p - F.log_softmax(student_logits, dim=-1))).sum(dim=-1)


def sigmoid_bce_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                     partner_logits: torch.Tensor | None = None, lam: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: mean over classes of BCEWithLogits(s, q), q from :func:`sigmoid_target_probs`.
    Its minimum (at sigmoid(s) = q) is q's binary entropy, not 0; the gradient is sigmoid(s) - q."""
    q = sigmoid_target_probs(teacher_logits, temperature, partner_logits, lam)
    return F.binary_cross_entropy_with_logits(student_logits, q, reduction="none").mean(dim=-1)


KD_ROWS = {"kl_softmax": kl_rows, "bce_sigmoid": sigmoid_bce_rows}


def kl_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s)) over classes, mean over the batch ("batchmean")."""
    return kl_rows(student_logits.float(), teacher_logits.float(), temperature).mean()
