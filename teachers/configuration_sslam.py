"""SSLAM / EAT configuration: ``SSLAMConfig``, the shape of the classifier (defaults: the released
ViT-B AudioSet model), also read from a state dict's weight shapes (``from_state_dict``), and the
original checkpoint's key names it reads them from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch

IMAGE = "model.modality_encoders.IMAGE."
POSITIONS = IMAGE + "fixed_positional_encoder.positions"


@dataclass(frozen=True)
class SSLAMConfig:
    """Shape of an SSLAM / EAT classifier. Defaults: the released ViT-B AudioSet model."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    in_chans: int = 1
    target_length: int = 1024
    num_mel_bins: int = 128
    num_classes: int = 527
    max_positions: int = 6144  # 768 time rows (EAT's max_length) x 8 frequency patches
    num_extra_tokens: int = 1
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        rows, cols = self.grid
        problems = [
            (self.embed_dim % self.num_heads != 0,
             f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads"),
            (self.embed_dim % 4 != 0, f"embed_dim {self.embed_dim} must be a multiple of 4 for 2-D sin-cos positions"),
            (rows < 1 or cols < 1, f"a {self.target_length}x{self.num_mel_bins} fbank holds no {self.patch_size}x"
                                   f"{self.patch_size} patch"),
            (cols > 0 and self.max_positions % cols != 0,
             f"position table of {self.max_positions} rows is not a whole number of {cols}-patch time steps"),
            (rows * cols > self.max_positions,
             f"{rows * cols} patches do not fit the {self.max_positions}-row position table"),
            (self.num_extra_tokens < 1, "the classifier needs a cls token"),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(f"SSLAM config: {message}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along (time, frequency)."""
        return self.target_length // self.patch_size, self.num_mel_bins // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], num_heads: int | None = None,
                        **overrides: Any) -> "SSLAMConfig":
        """The config a state dict (original fairseq key names) describes.

        Shapes give width, depth, MLP ratio, patch size, classes, extra tokens and the
        position table's length; missing keys keep the defaults (strict loading names
        them later). Heads cannot be read from shapes: pass ``num_heads`` (else ViT's
        64-wide heads are assumed).
        """
        base = cls()
        found: dict[str, Any] = {}
        proj = sd.get(IMAGE + "local_encoder.proj.weight")
        if proj is not None and proj.dim() == 4:
            found.update(embed_dim=proj.shape[0], in_chans=proj.shape[1], patch_size=proj.shape[-1])
        extra = sd.get(IMAGE + "extra_tokens")
        if extra is not None and extra.dim() == 3:
            found.update(embed_dim=extra.shape[-1], num_extra_tokens=extra.shape[1])
        blocks = {int(k.split(".")[2]) for k in sd if k.startswith("model.blocks.") and k.split(".")[2].isdigit()}
        if blocks:
            found["depth"] = max(blocks) + 1
        embed = found.get("embed_dim", base.embed_dim)
        fc1 = sd.get("model.blocks.0.mlp.fc1.weight")
        if fc1 is not None and fc1.dim() == 2 and embed:
            found["mlp_ratio"] = fc1.shape[0] / embed
        head = sd.get("head.weight")
        if head is not None and head.dim() == 2:
            found["num_classes"] = head.shape[0]
        positions = sd.get(POSITIONS)
        if positions is not None and positions.dim() == 3:
            found["max_positions"] = positions.shape[1]
        if num_heads is None:
            num_heads = embed // 64 if embed % 64 == 0 else None
        if num_heads is None:
            raise ValueError(f"cannot tell the number of attention heads of a {embed}-wide model from its weights "
                             "(the checkpoint's cfg / config.json does not say)")
        found["num_heads"] = num_heads
        return replace(base, **{**found, **overrides})
