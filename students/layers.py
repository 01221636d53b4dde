"""Small reusable layers of the VMamba / DASS student (channel-first layout), and Mamba's
initialisation of the selective scan's constants, shared by SS2D and the bidirectional mixer."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A Linear layer applied per pixel of a (B, C, H, W) tensor (a 1x1 conv).

    The weight keeps nn.Linear's (out, in) shape so checkpoints of VMamba's
    channel-first models load without reshaping.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class Mlp(nn.Module):
    """Per-pixel MLP: fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear2d(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


@torch.no_grad()
def init_dt_bias_(bias: torch.Tensor, dt_min: float, dt_max: float, floor: float) -> None:
    """Mamba's dt init: dt ~ logUniform[dt_min, dt_max] (clamped at ``floor``), stored as its
    inverse softplus so that ``softplus(bias) = dt``."""
    dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))


@torch.no_grad()
def init_A_log_(A_log: torch.Tensor) -> None:
    """A = -(1..N) for every channel: ``A_log[d, n] = log(n + 1)``."""
    A_log.copy_(torch.log(torch.arange(1, A_log.shape[-1] + 1, dtype=torch.float32)).expand_as(A_log))
