"""Training-time augmentation of filterbank batches."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchaudio.transforms as T


class SpecAugment(nn.Module):
    """Independent frequency and time masks per example (Park et al., 2019), as in AST/DASS.

    Operates on (B, T, F) batches; widths up to ``freq_mask`` bins and ``time_mask`` frames.
    """

    def __init__(self, freq_mask: int = 48, time_mask: int = 192) -> None:
        super().__init__()
        self.freq = T.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask > 0 else None
        self.time = T.TimeMasking(time_mask, iid_masks=True) if time_mask > 0 else None

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T): torchaudio's layout for per-example masks
        if self.freq is not None:
            x = self.freq(x)
        if self.time is not None:
            x = self.time(x)
        return x.squeeze(1).transpose(1, 2)
