"""SSAMBA, self-supervised audio Mamba (Shams et al., 2024), fine-tuning model.

The SSAST recipe on a Vision Mamba backbone (``v``): 16 x 16 patches (frequency-major,
stride 10 for fine-tuning), the class token first, learned absolute positions, and
LayerNorm Mamba blocks (Bi-Bi mixers) run in pairs: the second block of each pair sees the
reversed sequence and its residual, and the pair returns the sum of both directions. The
final LayerNorm ``norm_f`` is applied twice (as the original does), then the head
(LayerNorm + Linear) reads the mean of the patch tokens (``head="avgtok"``) or the class
token (``"cls"``). Names are the original's without its ``module.`` prefix.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, trunc_normal_

from .vim import AudioMambaConfig, PatchEmbed, init_vim_weights, mamba_layers, resize_crop_or_interpolate

HEADS = ("avgtok", "cls")


def check_config(cfg: AudioMambaConfig) -> AudioMambaConfig:
    """Raise ``ValueError`` for what an SSAMBA cannot be built with."""
    if cfg.head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {cfg.head!r}")
    if cfg.variant != "bi-bi":
        raise ValueError(f"SSAMBA's mixers are Bi-Bi; variant {cfg.variant!r} is an AuM option")
    if cfg.depth % 2:
        raise ValueError(f"SSAMBA runs its layers in forward/backward pairs: depth must be even, got {cfg.depth}")
    return cfg


class VimBackbone(nn.Module):
    """The ViM encoder of SSAMBA (the original's ``v``), without ViM's unused ImageNet head."""

    def __init__(self, cfg: AudioMambaConfig) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.grid = cfg.grid()
        self.patch_embed = PatchEmbed(cfg)  # default conv init: SSAMBA replaces ViM's patch conv
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], D))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.layers = mamba_layers(cfg, nn.LayerNorm, residual_in_fp32=False)
        self.drop_path = DropPath(cfg.drop_path_rate) if cfg.drop_path_rate > 0 else nn.Identity()
        self.norm_f = nn.LayerNorm(D, eps=cfg.norm_eps)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        init_vim_weights(self, cfg.depth)

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for a ``grid`` of patches: the trained one resized as SSAST resizes it."""
        table = self.pos_embed
        return torch.cat([table[:, :1], resize_crop_or_interpolate(table[:, 1:], self.grid, grid)], dim=1)

    def encode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) patch tokens -> (B, 1 + N, D) encoded tokens, class token first, after ``norm_f`` twice."""
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1) + self.positions(grid)
        hidden, residual = self.pos_drop(x), None
        for forward, backward in zip(self.layers[0::2], self.layers[1::2]):
            h_f, r_f = forward(hidden, residual)
            h_b, r_b = backward(hidden.flip(1), None if residual is None else residual.flip(1))
            hidden, residual = h_f + h_b.flip(1), r_f + r_b.flip(1)
        residual = residual + self.drop_path(hidden)
        hidden = self.norm_f(residual.to(self.norm_f.weight.dtype))
        return self.norm_f(hidden)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.patch_embed(fbank)
        return self.encode(tokens, grid)


class SSAMBA(nn.Module):
    """(B, T, F) filterbank -> (B, num_classes) logits."""

    def __init__(self, cfg: AudioMambaConfig) -> None:
        super().__init__()
        self.config = check_config(cfg)
        self.v = VimBackbone(cfg)
        self.num_features = cfg.embed_dim
        self.mlp_head = nn.Sequential(nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, cfg.num_classes))

    def get_classifier(self) -> nn.Linear:
        return self.mlp_head[1]

    def reset_classifier(self, num_classes: int) -> None:
        """timm's idiom; only ``0`` (no classifier: pretraining) is supported."""
        if num_classes != 0:
            raise ValueError("SSAMBA's classifier is set by its config (num_classes); reset_classifier takes only 0")
        self.mlp_head = nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {"v.cls_token", "v.pos_embed"} | {
            n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def patchify(self, fbank: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, T, F) -> (B, N, D) patch tokens (before positions) and their (F, T) grid."""
        return self.v.patch_embed(fbank)

    def encode_patches(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) patch tokens -> (B, N, D) outputs at the patches (the class token left out)."""
        return self.v.encode(tokens, grid)[:, 1:]

    def forward_features(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, D): the pooled tokens the head reads."""
        x = self.v(fbank)
        return x[:, 1:].mean(dim=1) if self.config.head == "avgtok" else x[:, 0]

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.mlp_head(self.forward_features(fbank))
