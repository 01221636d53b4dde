"""A plain CNN tagger: the baseline every recipe is measured against.

Not a state-space model and not a distillation target of its own: it answers "does
this recipe learn as much as the simplest reasonable model on the same data and
budget?". Four blocks of Conv 3x3 + BatchNorm + ReLU + 2x2 max-pool, then global
average pooling and a linear head; it takes the same (B, T, F) filterbank as DASS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn


@dataclass
class CNNConfig:
    """Architecture of the CNN baseline."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # ~99k parameters
    num_classes: int = 527
    drop_rate: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CNNConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class CNNBaseline(nn.Module):
    """(B, T, F) filterbank -> (B, num_classes) logits."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.config = cfg
        blocks, c_in = [], 1
        for c in cfg.channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(c_in, cfg.num_classes)

    def get_classifier(self) -> nn.Linear:
        return self.head

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.features(fbank.transpose(1, 2).unsqueeze(1))  # H = frequency, W = time, as DASS
        return self.head(self.drop(x.mean(dim=(2, 3))))
