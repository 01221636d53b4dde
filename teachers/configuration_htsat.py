"""HTS-AT configuration: ``HTSATConfig``, the released AudioSet model's hyper-parameters by default
or those a state dict's weight shapes imply (``from_state_dict``), and the state-dict keys of the
three front-end matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

STFT_REAL = "spectrogram_extractor.stft.conv_real.weight"
STFT_IMAG = "spectrogram_extractor.stft.conv_imag.weight"
MEL = "logmel_extractor.melW"
FRONT_END_MATRICES = (STFT_REAL, STFT_IMAG, MEL)


@dataclass(frozen=True)
class HTSATConfig:
    """Everything the forward needs; defaults are the released AudioSet model (config.py)."""

    sample_rate: int = 32000
    n_fft: int = 1024              # config.window_size (win_length = n_fft)
    hop: int = 320
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0
    clip_samples: int = 320000     # 10 s
    spec_size: int = 256
    patch_size: int = 4
    patch_stride: tuple[int, int] = (4, 4)
    freq_ratio: int = 4            # the original derives it as spec_size // mel_bins
    in_chans: int = 1
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ape: bool = False              # absolute position embedding (off in the released model)
    num_classes: int = 527
    amin: float = 1e-10            # power_to_db: 10*log10(max(x, amin)) - 10*log10(max(amin, ref))
    ref: float = 1.0
    norm_eps: float = 1e-5         # nn.LayerNorm / nn.BatchNorm2d defaults
    drop_path_rate: float = 0.1    # stochastic depth of the last block when training (none at inference)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_stride", tuple(self.patch_stride))
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "num_heads", tuple(self.num_heads))
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"HTS-AT config: {len(self.depths)} stage depths but {len(self.num_heads)} head counts")
        if self.freq_ratio != self.spec_size // self.mel_bins:
            raise ValueError(f"HTS-AT config: freq_ratio must be spec_size // mel_bins = "
                             f"{self.spec_size // self.mel_bins}, got {self.freq_ratio}")
        for i, heads in enumerate(self.num_heads):
            if self.stage_dim(i) % heads:
                raise ValueError(f"HTS-AT config: stage {i} width {self.stage_dim(i)} is not divisible by {heads} heads")
        grid = self.grid
        if grid[0] % 2 ** (self.num_stages - 1) or grid[1] % 2 ** (self.num_stages - 1):
            raise ValueError(f"HTS-AT config: a {grid} patch grid cannot be halved {self.num_stages - 1} times")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def num_features(self) -> int:
        return self.stage_dim(self.num_stages - 1)

    @property
    def grid(self) -> tuple[int, int]:
        return self.spec_size // self.patch_stride[0], self.spec_size // self.patch_stride[1]

    @property
    def num_frames(self) -> int:
        """STFT frames of one window (centred): 1001 for 10 s at hop 320."""
        return self.clip_samples // self.hop + 1

    def stage_dim(self, i: int) -> int:
        return self.embed_dim * 2 ** i

    def stage_resolution(self, i: int) -> tuple[int, int]:
        return self.grid[0] // 2 ** i, self.grid[1] // 2 ** i

    @property
    def tscam_kernel_height(self) -> int:
        return self.spec_size // 2 ** (self.num_stages - 1) // self.patch_stride[0] // self.freq_ratio

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], **overrides) -> "HTSATConfig":
        """Infer the architecture from weight shapes (``sed_model.`` already stripped).

        Not in the weights, so taken from the defaults (or ``overrides``): sample rate, hop,
        fmin/fmax, clip length and patch stride (= patch size). ``spec_size`` comes from
        ``layers.0.blocks.1.attn_mask`` (its window count) when there is one. Raises ValueError
        naming the key it needed.
        """
        def need(key: str) -> torch.Tensor:
            if key not in sd:
                raise ValueError(f"no '{key}'")
            return sd[key]

        proj = need("patch_embed.proj.weight")                       # (embed_dim, in_chans, ph, pw)
        embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
        stages: dict[int, set[int]] = {}
        for k in sd:
            parts = k.split(".")
            if len(parts) > 3 and parts[0] == "layers" and parts[2] == "blocks" and parts[1].isdigit() \
                    and parts[3].isdigit():
                stages.setdefault(int(parts[1]), set()).add(int(parts[3]))
        if not stages:
            raise ValueError("no 'layers.0.blocks.0.*' weights")
        if sorted(stages) != list(range(len(stages))):
            raise ValueError(f"stage indices {sorted(stages)} are not 0..{len(stages) - 1}")
        depths = []
        for i in range(len(stages)):
            if sorted(stages[i]) != list(range(len(stages[i]))):
                raise ValueError(f"block indices {sorted(stages[i])} of stage {i} are not contiguous")
            depths.append(len(stages[i]))
        heads = tuple(need(f"layers.{i}.blocks.0.attn.relative_position_bias_table").shape[1] for i in range(len(depths)))
        rows = need("layers.0.blocks.0.attn.relative_position_bias_table").shape[0]   # (2w-1)^2
        side = math.isqrt(rows)
        if side * side != rows or side % 2 == 0:
            raise ValueError(f"'layers.0.blocks.0.attn.relative_position_bias_table' has {rows} rows, not (2w-1)^2")
        window = (side + 1) // 2
        fc1 = need("layers.0.blocks.0.mlp.fc1.weight")
        mel_bins = need("bn0.weight").shape[0]
        fields = dict(
            embed_dim=embed_dim, in_chans=in_chans, patch_size=patch, patch_stride=(patch, patch),
            depths=tuple(depths), num_heads=heads, window_size=window, mlp_ratio=fc1.shape[0] / embed_dim,
            qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd, ape="absolute_pos_embed" in sd,
            num_classes=need("tscam_conv.weight").shape[0], mel_bins=mel_bins,
        )
        if STFT_REAL in sd:
            fields["n_fft"] = sd[STFT_REAL].shape[-1]
        fields.update(overrides)
        stride = fields["patch_stride"]
        mask = sd.get("layers.0.blocks.1.attn_mask")                  # (windows, w*w, w*w)
        if "spec_size" not in overrides and mask is not None and mask.dim() == 3:
            per_side = math.isqrt(mask.shape[0])
            fields["spec_size"] = per_side * fields["window_size"] * stride[0]
        spec_size = fields.get("spec_size", cls.spec_size)
        fields.setdefault("freq_ratio", spec_size // fields["mel_bins"])
        return cls(**fields)
