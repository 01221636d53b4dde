"""Vision Mamba (ViM) building blocks shared by the AuM and SSAMBA students.

Both models cut a (B, T, F) filterbank into 16 x 16 patches with a strided conv over the
(F, T) image (tokens frequency-major: ``index = f * T_grid + t``), add a learned absolute
position per patch, and run a stack of pre-norm Mamba blocks that carry the residual
stream separately ("add -> norm -> mixer", as mamba-ssm's ``Block``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, lecun_normal_, trunc_normal_

from .bimamba import VARIANTS, BiMamba


@dataclass
class AudioMambaConfig:
    """Architecture of an Audio Mamba student (the keys of an exported ``config.json``).

    ``target_length`` and the strides fix the grid the position table was trained for;
    other lengths resize it (see each model's ``positions``).
    """

    embed_dim: int = 384
    depth: int = 24
    variant: str = "bi-bi"
    num_classes: int = 527
    num_mel_bins: int = 128
    target_length: int = 1024
    patch_size: int = 16
    fstride: int = 16
    tstride: int = 16
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-5
    head: str = "cls"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        for name in ("embed_dim", "depth", "fstride", "tstride", "patch_size", "d_state"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.num_mel_bins, self.target_length) < self.patch_size:
            raise ValueError(f"{self.patch_size}x{self.patch_size} patches need at least {self.patch_size} frames "
                             f"and mel bins, got {self.target_length} x {self.num_mel_bins}")

    def grid(self, frames: int | None = None) -> tuple[int, int]:
        """(frequency, time) patches for ``frames`` frames (default ``target_length``)."""
        frames = self.target_length if frames is None else frames
        return ((self.num_mel_bins - self.patch_size) // self.fstride + 1,
                (frames - self.patch_size) // self.tstride + 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AudioMambaConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class PatchEmbed(nn.Module):
    """(B, T, F) filterbank -> (B, N, D) patch tokens, frequency-major, and the (F, T) grid."""

    def __init__(self, cfg: AudioMambaConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(1, cfg.embed_dim, cfg.patch_size, stride=(cfg.fstride, cfg.tstride))

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if fbank.dim() != 3 or min(fbank.shape[1:]) < self.patch_size:
            raise ValueError(f"expected a (batch, frames >= {self.patch_size}, mel bins) filterbank, "
                             f"got {tuple(fbank.shape)}")
        x = self.proj(fbank.transpose(1, 2).unsqueeze(1))  # (B, D, F', T')
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class MambaBlock(nn.Module):
    """``residual += drop_path(hidden)``; ``hidden = mixer(norm(residual))`` (mamba-ssm's Block)."""

    def __init__(self, cfg: AudioMambaConfig, norm: nn.Module, drop_path: float, residual_in_fp32: bool) -> None:
        super().__init__()
        self.mixer = BiMamba(cfg.embed_dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                             variant=cfg.variant, divide_out=True)
        self.norm = norm
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(hidden), residual


def mamba_layers(cfg: AudioMambaConfig, norm: type[nn.Module], residual_in_fp32: bool) -> nn.ModuleList:
    """``cfg.depth`` blocks, each with its own ``norm(embed_dim, eps)`` and ViM's drop-path rate."""
    rates = layer_drop_rates(cfg)
    return nn.ModuleList(MambaBlock(cfg, norm(cfg.embed_dim, eps=cfg.norm_eps), rates[i], residual_in_fp32)
                         for i in range(cfg.depth))


def layer_drop_rates(cfg: AudioMambaConfig) -> list[float]:
    """ViM's per-layer drop-path rates: layer 0 none, layer i ``linspace(0, rate, depth)[i - 1]``."""
    steps = max(cfg.depth - 1, 1)
    return [0.0, *(cfg.drop_path_rate * i / steps for i in range(cfg.depth))][: cfg.depth]


@torch.no_grad()
def init_vim_weights(model: nn.Module, depth: int) -> None:
    """mamba-ssm's model init: Linear biases zeroed (except dt_proj's), every ``out_proj`` weight
    kaiming-uniform scaled by 1/sqrt(depth) (one residual branch per layer)."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
        if isinstance(module, BiMamba):
            nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            module.out_proj.weight /= math.sqrt(depth)


def init_patch_embed(patch_embed: PatchEmbed) -> None:
    lecun_normal_(patch_embed.proj.weight)
    nn.init.zeros_(patch_embed.proj.bias)


def init_head(head: nn.Linear) -> None:
    trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)


def grid_rows(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, F*T, D) position rows -> (1, D, F, T)."""
    return table.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)


def flat_rows(table: torch.Tensor) -> torch.Tensor:
    """(1, D, F, T) -> (1, F*T, D)."""
    return table.flatten(2).transpose(1, 2)


def resize_bilinear_antialias(rows: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """AuM's (timm's ``resample_abs_pos_embed``) resize of patch position rows: one 2-D bilinear
    interpolation with antialiasing over the whole grid."""
    if not torch.compiler.is_compiling() and tuple(old) == tuple(new):
        return rows
    # A captured graph (torch.export, ONNX) always resizes, so one graph serves every length
    # (bilinear to the same size is the identity).
    table = F.interpolate(grid_rows(rows.float(), old), size=new, mode="bilinear", antialias=True)
    return flat_rows(table).to(rows.dtype)


def resize_crop_or_interpolate(rows: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """SSAST's / SSAMBA's resize of patch position rows: the time axis first, then frequency; an
    axis that shrinks is centre-cropped, one that grows is bilinearly interpolated (no antialias).
    (The original's frequency crop ends at ``start + t_dim``; this crops ``f_dim`` rows.)"""
    if tuple(old) == tuple(new):
        return rows
    table = grid_rows(rows.float(), old)
    (f_old, t_old), (f_new, t_new) = old, new
    if t_new < t_old:
        start = t_old // 2 - t_new // 2
        table = table[:, :, :, start:start + t_new]
    elif t_new > t_old:
        table = F.interpolate(table, size=(f_old, t_new), mode="bilinear")
    if f_new < f_old:
        start = f_old // 2 - f_new // 2
        table = table[:, :, start:start + f_new, :]
    elif f_new > f_old:
        table = F.interpolate(table, size=(f_new, t_new), mode="bilinear")
    return flat_rows(table).to(rows.dtype)
