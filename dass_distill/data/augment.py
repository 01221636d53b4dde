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


class TimeShift(nn.Module):
    """Roll each example along time by its own whole number of frames, uniform in
    ``[-max_frames, max_frames]`` (PANNs / EfficientAT's random roll): a sound may start
    anywhere in the clip, which a model with absolute positions (AST) must learn from data.

    Operates on (B, T, F) batches; draws from the global torch generator (as SpecAugment),
    so checkpoints restore it.
    """

    def __init__(self, max_frames: int) -> None:
        super().__init__()
        self.max_frames = max_frames

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.max_frames <= 0:
            return feats
        B, T = feats.shape[:2]
        shifts = torch.randint(-self.max_frames, self.max_frames + 1, (B, 1))
        index = (torch.arange(T).unsqueeze(0) - shifts) % T  # out[t] = in[t - shift]
        return feats.gather(1, index.to(feats.device).unsqueeze(-1).expand(-1, -1, feats.shape[2]))
