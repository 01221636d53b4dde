"""Teacher ensembles: members run and cached separately, combined only when used.

Keeping each member's logits lets the combination be chosen at training time:

* ``prob_mean`` (what published AudioSet ensembles do): the weighted mean of the
  members' sigmoid probabilities, mapped back to logits,
  ``t = logit(sum_i w_i * sigmoid(t_i))`` with the probability clamped to
  ``[1e-7, 1 - 1e-7]``;
* ``logit_mean``: ``t = sum_i w_i * t_i``.

Weights are normalised to sum to one. The distillation temperature is applied by
the loss to the combined logits ``t``. A clip that any member lacks (NaN row) stays
NaN, so it is trained on labels only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torchaudio.functional as AF

from .base import Teacher

CombineMode = Literal["prob_mean", "logit_mean"]
COMBINE_MODES: tuple[str, ...] = ("prob_mean", "logit_mean")
_EPS = 1e-7


def normalised_weights(num: int, weights: Sequence[float] | None) -> torch.Tensor:
    if weights is None:
        return torch.full((num,), 1.0 / num, dtype=torch.float64)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if len(w) != num or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"ensemble weights must be {num} non-negative numbers with a positive sum, got {list(weights)}")
    return w / w.sum()


def combine_logits(member_logits: torch.Tensor, mode: str = "prob_mean",
                   weights: Sequence[float] | None = None) -> torch.Tensor:
    """(M, B, C) logits of M members -> (B, C) combined logits (formulas in the module doc)."""
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown ensemble combination '{mode}'; choose one of {', '.join(COMBINE_MODES)}")
    w = normalised_weights(member_logits.shape[0], weights).view(-1, 1, 1)
    x = member_logits.double()
    if mode == "logit_mean":
        out = (w * x).sum(0)
    else:
        p = (w * torch.sigmoid(x)).sum(0).clamp(_EPS, 1 - _EPS)
        out = torch.log(p) - torch.log1p(-p)
    return out.to(member_logits.dtype)


@dataclass
class Ensemble:
    """Named members with a default combination (the cache stores members, not the mix)."""

    name: str
    members: list[Teacher]
    combine: str = "prob_mean"
    weights: list[float] | None = None
    member_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError(f"ensemble '{self.name}' has no members")
        self.member_names = [m.name for m in self.members]
        if len(set(self.member_names)) != len(self.member_names):
            raise ValueError(f"ensemble '{self.name}' members need unique names, got {self.member_names}; "
                             "give each member a 'name'")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"ensemble '{self.name}': unknown combination '{self.combine}' "
                             f"(choose {', '.join(COMBINE_MODES)})")
        normalised_weights(len(self.members), self.weights)

    def identity(self) -> dict:
        """What each member's provenance records about the ensemble it belongs to."""
        return {"name": self.name, "members": self.member_names, "default_combine": self.combine,
                "default_weights": self.weights}

    def member_logits(self, waveforms: Sequence[torch.Tensor], sample_rate: int) -> torch.Tensor:
        """Waveforms at ``sample_rate`` -> (M, B, C), each member fed at its own rate."""
        outs = []
        for m in self.members:
            waves = [w if sample_rate == m.sample_rate else AF.resample(w, sample_rate, m.sample_rate)
                     for w in waveforms]
            outs.append(m.logits(waves))
        return torch.stack(outs)

    def logits(self, waveforms: Sequence[torch.Tensor], sample_rate: int, combine: str | None = None,
               weights: Sequence[float] | None = None) -> torch.Tensor:
        return combine_logits(self.member_logits(waveforms, sample_rate), combine or self.combine,
                              weights if weights is not None else self.weights)
