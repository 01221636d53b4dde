"""DASS: a VMamba-style 2D selective-scan audio tagger (Bhati et al., 2024).

The input is a (B, T, F) log-mel filterbank, seen as a one-channel image with
H = frequency and W = time. There is no positional embedding, so any number of
frames works. Module names follow VMamba ("v2v" config) so its checkpoints map
onto this model with key renames only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from timm.layers import DropPath, trunc_normal_

from .layers import LayerNorm2d, Mlp
from .ss2d import SS2D


@dataclass
class DassConfig:
    """Architecture of a DASS student (the keys of an exported ``config.json``)."""

    depths: list[int] = field(default_factory=lambda: [2, 2, 8, 2])
    dims: list[int] = field(default_factory=lambda: [96, 192, 384, 768])
    num_classes: int = 527
    in_chans: int = 1
    d_state: int = 1
    ssm_ratio: float = 1.0
    dt_rank: int | str = "auto"
    d_conv: int = 3
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DassConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, cfg: DassConfig, drop_path: float) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, dt_rank=cfg.dt_rank, d_conv=cfg.d_conv)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), drop=cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _downsample(dim: int, out_dim: int) -> nn.Sequential:
    # Index 0 is VMamba's (identity) permute, kept so checkpoint keys line up.
    return nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(out_dim))


class DASS(nn.Module):
    """Stem (stride 4) -> 4 stages of VSS blocks with stride-2 downsampling -> pooled linear head."""

    def __init__(self, cfg: DassConfig) -> None:
        super().__init__()
        self.config = cfg
        d0 = cfg.dims[0]
        self.patch_embed = nn.Sequential(
            nn.Conv2d(cfg.in_chans, d0 // 2, 3, stride=2, padding=1),
            nn.Identity(),
            LayerNorm2d(d0 // 2),
            nn.Identity(),
            nn.GELU(),
            nn.Conv2d(d0 // 2, d0, 3, stride=2, padding=1),
            nn.Identity(),
            LayerNorm2d(d0),
        )
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            start = sum(cfg.depths[:i])
            blocks = nn.Sequential(*(VSSBlock(dim, cfg, rates[start + j]) for j in range(depth)))
            down = _downsample(dim, cfg.dims[i + 1]) if i + 1 < len(cfg.dims) else nn.Identity()
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=down)))
        self.num_features = cfg.dims[-1]
        self.classifier = nn.Sequential(
            OrderedDict(
                norm=LayerNorm2d(self.num_features),
                permute=nn.Identity(),
                avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                head=nn.Linear(self.num_features, cfg.num_classes),
            )
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Linear:
        """The output layer (timm's name), e.g. to re-initialise its bias."""
        return self.classifier.head

    def no_weight_decay(self) -> set[str]:
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def forward_features(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) filterbank -> (B, C, F/32, T/32) feature map."""
        x = fbank.transpose(1, 2).unsqueeze(1)  # H = frequency, W = time
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) filterbank -> (B, num_classes) logits."""
        return self.classifier(self.forward_features(fbank))
