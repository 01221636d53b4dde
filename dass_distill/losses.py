"""Distillation losses.

DASS loss (Bhati et al. 2024, following Gong et al.'s PSLA/CMKD):

    L = (1 - w) * BCEWithLogits(s, y) + w * KL(softmax(t / T) || softmax(s))

with the KL over classes averaged over the batch ("batchmean") and the temperature
applied to the teacher only, as in the public DASS code. w = 0 is plain supervised
training.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DistillationLoss(nn.Module):
    """(1 - w) * BCE(student, labels) + w * KL(softmax(teacher / T) || softmax(student))."""

    def __init__(self, kd_weight: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.kd_weight = kd_weight
        self.temperature = temperature

    def forward(
        self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean over the batch. Rows whose teacher logits are NaN (no cached target)
        get the label loss alone."""
        s = student_logits.float()
        bce_rows = F.binary_cross_entropy_with_logits(s, labels.float(), reduction="none").mean(dim=-1)
        bce = bce_rows.mean()
        if self.kd_weight == 0.0 or teacher_logits is None:
            return {"loss": bce, "bce": bce}
        t = teacher_logits.float()
        has_teacher = torch.isfinite(t).all(dim=-1)
        kd_rows = kl_rows(s, torch.where(has_teacher[:, None], t, 0.0), self.temperature)
        w = self.kd_weight * has_teacher.float()
        loss = ((1 - w) * bce_rows + w * kd_rows).mean()
        kd = kd_rows[has_teacher].mean() if has_teacher.any() else kd_rows.new_zeros(())
        return {"loss": loss, "bce": bce, "kd": kd}


def kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per row: KL(softmax(t / T) || softmax(s)) summed over classes."""
    log_p_student = F.log_softmax(student_logits, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=-1)


def kl_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s)) over classes, mean over the batch ("batchmean")."""
    return kl_rows(student_logits, teacher_logits, temperature).mean()
