"""SSLAM (Alex et al., ICLR 2025) modules: our own implementation of the released classifier, the
EAT / data2vec 2.0 ViT-B fine-tuned on AudioSet (fairseq's ``mae_image_classification`` wrapping a
``data2vec_multi`` model with one IMAGE modality encoder), with the module tree named so that
``SSLAMClassifier.state_dict()`` keys are the original checkpoint's keys:

    model.modality_encoders.IMAGE.local_encoder.proj.{weight,bias}   16x16 conv, stride 16
    model.modality_encoders.IMAGE.extra_tokens                       (1, 1, D) cls token
    model.modality_encoders.IMAGE.fixed_positional_encoder.positions (1, 6144, D) sin-cos table
    model.modality_encoders.IMAGE.context_encoder.norm.{weight,bias} LayerNorm before block 0
    model.blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}
    fc_norm.{weight,bias}, head.{weight,bias}

Forward (EAT ``ImageEncoder`` + ``AltBlock`` with ``layer_norm_first=False``): the
normalised fbank (B, T, F) becomes a (B, 1, T, F) image; the conv's (B, D, T/16, F/16)
output is flattened time-major (token = t * F/16 + f); the first T/16 * F/16 rows of
the position table are added; the cls token (no position) is prepended; LayerNorm;
post-LN blocks ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``; no final norm;
logits = head(fc_norm(x[:, 0])). LayerNorm eps 1e-6 throughout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .configuration_sslam import SSLAMConfig

FC_NORM_EPS = 1e-6  # hard-coded in the fine-tuning model, independent of the backbone's norm_eps


def sincos_positions(embed_dim: int, rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, embed_dim) fixed 2-D sin-cos table, computed as EAT does.

    Row-major over (time, frequency); the first half of the channels encodes the
    frequency (column) index, the second half the time (row) index, each as
    [sin | cos]. numpy float32 like the original, so the table is bit-identical.
    """
    col, row = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    table = np.concatenate([_sincos_1d(embed_dim // 2, col), _sincos_1d(embed_dim // 2, row)], axis=1)
    return torch.from_numpy(table).float()


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


class PatchEmbed(nn.Module):
    """``local_encoder``: (B, 1, T, F) -> (B, T/16 * F/16, D), tokens time-major."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)


class FixedPositions(nn.Module):
    """``fixed_positional_encoder``: the sin-cos table, stored in the checkpoint (not trained)."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        rows = cfg.max_positions // cfg.grid[1]
        self.register_buffer("positions", sincos_positions(cfg.embed_dim, rows, cfg.grid[1]).unsqueeze(0))

    def forward(self, num_tokens: int) -> torch.Tensor:
        return self.positions[:, :num_tokens]


class ContextEncoder(nn.Module):
    """``context_encoder`` with EAT's ``prenet_depth: 0``: just the LayerNorm before block 0."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ImageEncoder(nn.Module):
    """``modality_encoders.IMAGE``: fbank -> [cls; patches + positions], normalised."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.local_encoder = PatchEmbed(cfg)
        self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, cfg.embed_dim))
        nn.init.normal_(self.extra_tokens, std=0.02)
        self.fixed_positional_encoder = FixedPositions(cfg)
        self.context_encoder = ContextEncoder(cfg)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.local_encoder(fbank.unsqueeze(1))  # (B, T, F) -> (B, 1, T, F): time is the image height
        x = x + self.fixed_positional_encoder(x.shape[1])
        cls = self.extra_tokens.expand(x.shape[0], -1, -1).to(x.dtype)  # prepended after positions: it has none
        return self.context_encoder(torch.cat([cls, x], dim=1))


class Attention(nn.Module):
    """Fused-qkv multi-head self-attention (``AltAttention``, qkv bias on)."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """timm's Mlp: fc1, exact GELU, fc2."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """``AltBlock`` with ``layer_norm_first=False``: each norm follows its residual."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class Backbone(nn.Module):
    """The ``data2vec_multi`` model after ``remove_pretraining_modules``: encoder + blocks, no final norm."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.modality_encoders = nn.ModuleDict({"IMAGE": ImageEncoder(cfg)})
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.modality_encoders["IMAGE"](fbank)
        for block in self.blocks:
            x = block(x)
        return x


class SSLAMClassifier(nn.Module):
    """Normalised fbank (B, T, F) -> logits (B, C); state dict keys are the fairseq checkpoint's."""

    def __init__(self, config: SSLAMConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.fc_norm = nn.LayerNorm(config.embed_dim, eps=FC_NORM_EPS)
        self.head = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.model(fbank)[:, 0]))

    def get_classifier(self) -> nn.Linear:
        """The output layer (timm's name), e.g. to re-initialise its bias."""
        return self.head

    @torch.no_grad()
    def init_weights(self) -> "SSLAMClassifier":
        """data2vec's ``init_bert_params`` for training from scratch: Linear and conv weights
        N(0, 0.02), zero biases, LayerNorms at identity (released weights replace all of it)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("cls_token") or "extra_tokens" in name:
                nn.init.normal_(p, std=0.02)
        return self
