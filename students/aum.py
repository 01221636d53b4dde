"""AuM, Audio Mamba (Erol et al., 2024): bidirectional Mamba over spectrogram patches.

16 x 16 patches (frequency-major) with one class token inserted in the middle of the
sequence, learned absolute positions (the class token's row is row 0 of the table), a stack
of pre-norm Mamba blocks with RMSNorm and an fp32 residual stream, a final RMSNorm of
``residual + hidden``, and a linear head on the middle class token. Parameter names are the
original's, so its checkpoints load with no renaming.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, trunc_normal_

from .vim import (AudioMambaConfig, PatchEmbed, init_head, init_patch_embed, init_vim_weights, mamba_layers,
                  resize_bilinear_antialias)


class PosEmbed(nn.Module):
    """The position table, ``(1, 1 + F*T, D)`` with the class row first (the original's
    ``pos_embed.pos_embed``)."""

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_rows, dim))


class AuM(nn.Module):
    """(B, T, F) filterbank -> (B, num_classes) logits."""

    def __init__(self, cfg: AudioMambaConfig) -> None:
        super().__init__()
        self.config = cfg
        D = cfg.embed_dim
        self.grid = cfg.grid()
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = PosEmbed(1 + self.grid[0] * self.grid[1], D)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.layers = mamba_layers(cfg, nn.RMSNorm, residual_in_fp32=True)
        self.drop_path = DropPath(cfg.drop_path_rate) if cfg.drop_path_rate > 0 else nn.Identity()
        self.norm_f = nn.RMSNorm(D, eps=cfg.norm_eps)
        self.num_features = D
        self.head = nn.Linear(D, cfg.num_classes)
        init_head(self.head)
        trunc_normal_(self.cls_token, std=0.02)
        init_vim_weights(self, cfg.depth)
        init_patch_embed(self.patch_embed)
        trunc_normal_(self.pos_embed.pos_embed, std=0.02)

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """timm's idiom; only ``0`` (no classifier: pretraining) is supported."""
        if num_classes != 0:
            raise ValueError("AuM's classifier is set by its config (num_classes); reset_classifier takes only 0")
        self.head = nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed.pos_embed"} | {
            n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for a ``grid`` of patches: the trained one resized as AuM resizes it."""
        table = self.pos_embed.pos_embed
        return torch.cat([table[:, :1], resize_bilinear_antialias(table[:, 1:], self.grid, grid)], dim=1)

    def patchify(self, fbank: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, T, F) -> (B, N, D) patch tokens (before positions) and their (F, T) grid."""
        return self.patch_embed(fbank)

    def encode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """(B, N, D) patch tokens -> the (B, N + 1, D) normalised sequence and the class token's index."""
        B, N, _ = tokens.shape
        pos = self.positions(grid)
        # The class token takes row 0 of the table but sits at N // 2 in the sequence.
        x = tokens + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(B, -1, -1)
        middle = N // 2
        hidden = self.pos_drop(torch.cat([x[:, :middle], cls, x[:, middle:]], dim=1))
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = residual + self.drop_path(hidden)
        return self.norm_f(residual.to(self.norm_f.weight.dtype)), middle

    def encode_patches(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) patch tokens -> (B, N, D) outputs at the patches (the class token left out)."""
        hidden, middle = self.encode(tokens, grid)
        return torch.cat([hidden[:, :middle], hidden[:, middle + 1:]], dim=1)

    def forward_features(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, D): the normalised class token."""
        hidden, middle = self.encode(*self.patch_embed(fbank))
        return hidden[:, middle]

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(fbank))
