"""HTS-AT (Chen et al., 2022) modules: the torchlibrosa-style front end, the Swin backbone and
``HTSATModel``, with the module names of RetroCirce/HTS-Audio-Transformer (``model/htsat.py``,
``HTSAT_Swin_Transformer`` with ``enable_tscam=True``), so a released state dict loads strictly:

- front end (torchlibrosa, frozen): ``spectrogram_extractor.stft.conv_real/conv_imag``
  (the DFT times a periodic Hann window, as Conv1d weights), ``logmel_extractor.melW``
  (librosa's default, i.e. Slaney-scale Slaney-normalised, mel matrix), ``bn0``
  (BatchNorm2d over the mel bins). Both matrices are ``nn.Parameter`` in torchlibrosa,
  so they are stored in every checkpoint; we load them, and only compute them (same
  formulas) when a state dict has none of them;
- ``patch_embed``, ``layers.i.blocks.j.*`` (Swin blocks with the shifted-window
  ``attn_mask`` and ``relative_position_index`` as persistent buffers), ``layers.i.downsample``,
  ``norm``, ``tscam_conv`` (token-semantic head) and ``head`` (unused with tscam, kept
  because the checkpoints carry it).

Logits are the pre-sigmoid time average of ``tscam_conv``'s output; the original's
``clipwise_output`` is their sigmoid. ``HTSATBackbone`` is everything after the front end;
``HTSATFbankClassifier`` puts the toolkit's Kaldi filterbank before it instead (the
trainable ``htsat_*`` models), with the original's weight init and stochastic depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .configuration_htsat import HTSATConfig

# ---------------------------------------------------------------- front end (torchlibrosa layout)

def stft_matrices(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchlibrosa's STFT Conv1d weights, (n_fft//2+1, 1, n_fft) each: Re and Im of the DFT
    ``exp(-2*pi*i*k*n/N)`` times a periodic Hann window (``librosa get_window('hann', fftbins=True)``)."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    # reduce k*n mod N first: exact phases, as float64 cos of large angles loses digits
    angle = 2 * math.pi * torch.remainder(k[:, None] * n[None, :], n_fft) / n_fft
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    real = (torch.cos(angle) * window).float()[:, None, :]
    imag = (-torch.sin(angle) * window).float()[:, None, :]
    return real, imag


def mel_matrix(config: HTSATConfig) -> torch.Tensor:
    """librosa.filters.mel's default (Slaney scale, Slaney area norm), transposed: (n_fft//2+1, mel_bins)."""
    import torchaudio.functional as AF

    return AF.melscale_fbanks(config.n_fft // 2 + 1, float(config.fmin), float(config.fmax), config.mel_bins,
                              config.sample_rate, norm="slaney", mel_scale="slaney").float()


class STFT(nn.Module):
    """Centred, reflect-padded STFT with the DFT as two frozen Conv1d kernels (torchlibrosa's ``STFT``)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        real, imag = stft_matrices(n_fft)
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_(real)
            self.conv_imag.weight.copy_(imag)
        self.requires_grad_(False)

    def forward(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, samples) -> real, imag: (B, frames, n_fft//2+1)."""
        x = F.pad(waves[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")[:, 0]
        # frames @ kernels is the strided Conv1d without its slow large-kernel path on CPU
        frames = x.unfold(-1, self.n_fft, self.hop)                        # (B, T, n_fft)
        kernels = torch.cat([self.conv_real.weight[:, 0], self.conv_imag.weight[:, 0]], 0)
        out = frames @ kernels.T
        return out.split(self.conv_real.weight.shape[0], dim=-1)


class Spectrogram(nn.Module):
    """Power spectrogram real^2 + imag^2 (torchlibrosa ``Spectrogram``, power=2)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.stft = STFT(n_fft, hop)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(waves)
        return real ** 2 + imag ** 2


class LogmelFilterBank(nn.Module):
    """Mel projection and ``10*log10(max(x, amin)) - 10*log10(max(amin, ref))``, no top_db (torchlibrosa)."""

    def __init__(self, config: HTSATConfig) -> None:
        super().__init__()
        self.amin, self.ref = config.amin, config.ref
        self.melW = nn.Parameter(mel_matrix(config), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = power @ self.melW
        return 10.0 * torch.log10(mel.clamp(min=self.amin)) - 10.0 * math.log10(max(self.amin, self.ref))


# ---------------------------------------------------------------- Swin backbone

class PatchEmbed(nn.Module):
    """Conv patches of the (B, 1, S, S) image -> LayerNorm'd tokens (B, H*W, C), row-major."""

    def __init__(self, config: HTSATConfig) -> None:
        super().__init__()
        p, s = config.patch_size, config.patch_stride
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, p, stride=s, padding=((p - s[0]) // 2, (p - s[1]) // 2))
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(img).flatten(2).transpose(1, 2))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, ws*ws, C), windows row-major within each clip."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_merge(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * windows, ws*ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) row of the bias table for each query/key pair in a window."""
    pos = torch.arange(ws * ws)
    dy = (pos // ws)[:, None] - (pos // ws)[None, :]
    dx = (pos % ws)[:, None] - (pos % ws)[None, :]
    return (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)


def shifted_window_mask(H: int, W: int, ws: int, shift: int) -> torch.Tensor:
    """(windows, ws*ws, ws*ws) additive mask, -100 between tokens that the cyclic shift brought
    together from different regions (the value the original uses)."""
    def region(n: int) -> torch.Tensor:
        r = torch.arange(n)
        return (r >= n - ws).long() + (r >= n - shift).long()       # 0 | 1 | 2 along one axis

    label = (region(H)[:, None] * 3 + region(W)[None, :]).float()
    lw = window_partition(label[None, :, :, None], ws)[..., 0]       # (windows, ws*ws)
    return (lw[:, None, :] != lw[:, :, None]).float() * -100.0


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        n = self.ws * self.ws
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)          # (heads, n, n)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        Bw, N, C = x.shape
        q, k, v = self.qkv(x).reshape(Bw, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.position_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(Bw // nw, nw, self.heads, N, N) + mask[None, :, None]).view(Bw, self.heads, N, N)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(Bw, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention block. Windows no smaller than the feature map
    shrink to it and do not shift, as in the original."""

    def __init__(self, config: HTSATConfig, stage: int, index: int) -> None:
        super().__init__()
        dim = config.stage_dim(stage)
        self.resolution = H, W = config.stage_resolution(stage)
        ws, shift = config.window_size, (config.window_size // 2 if index % 2 else 0)
        if min(H, W) <= ws:
            ws, shift = min(H, W), 0
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = WindowAttention(dim, ws, config.num_heads[stage], config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        # stochastic depth rising linearly over all blocks, as the original (training only)
        rate = config.drop_path_rate * (sum(config.depths[:stage]) + index) / max(sum(config.depths) - 1, 1)
        self.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
        # persistent like the original's, so shifted blocks carry 'attn_mask' in the checkpoint
        self.register_buffer("attn_mask", shifted_window_mask(H, W, ws, shift) if shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H, W = self.resolution
        y = self.norm1(x).view(B, H, W, C)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = window_merge(self.attn(window_partition(y, self.ws), self.attn_mask), self.ws, H, W)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (order (0,0), (1,0), (0,1), (1,1) as (row, col)), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int, resolution: tuple[int, int], eps: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H, W = self.resolution
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)   # (B, H/2, W/2, col, row, C)
        return self.reduction(self.norm(x.reshape(B, L // 4, 4 * C)))


class SwinStage(nn.Module):
    """``layers.i``: the blocks of one stage, then patch merging except in the last stage."""

    def __init__(self, config: HTSATConfig, stage: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(config, stage, j) for j in range(config.depths[stage]))
        last = stage == config.num_stages - 1
        self.downsample = None if last else PatchMerging(config.stage_dim(stage), config.stage_resolution(stage),
                                                         config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


# ---------------------------------------------------------------- the model

class HTSATBackbone(nn.Module):
    """HTS-AT from the (B, 1, S, S) image to logits: patches, Swin stages, the token-semantic head.

    ``to_image`` folds a (B, 1, T, F) spectrogram into that image; ``HTSATModel`` puts the
    original's waveform front end before it and ``HTSATFbankClassifier`` the toolkit's filterbank.
    """

    def __init__(self, config: HTSATConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        if config.ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, config.grid[0] * config.grid[1], config.embed_dim))
        self.layers = nn.ModuleList(SwinStage(config, i) for i in range(config.num_stages))
        self.norm = nn.LayerNorm(config.num_features, eps=config.norm_eps)
        self.tscam_conv = nn.Conv2d(config.num_features, config.num_classes, (config.tscam_kernel_height, 3),
                                    padding=(0, 1))
        self.head = nn.Linear(config.num_classes, config.num_classes)  # unused with tscam; in every checkpoint

    def init_weights(self) -> "HTSATBackbone":
        """The original's ``_init_weights`` (Swin's): normal(0, 0.02) cut at +-2 (``trunc_normal_``'s
        defaults, as there) for linear weights, position tables and the absolute positions; zero
        biases; LayerNorm at identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        if self.config.ape:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        return self

    def to_image(self, feats: torch.Tensor) -> torch.Tensor:
        """``reshape_wav2img``: (B, 1, T, F) -> bicubic stretch to (spec_size*freq_ratio, spec_size//freq_ratio),
        then the time axis cut into freq_ratio chunks stacked along frequency: (B, 1, S, S)."""
        cfg = self.config
        target_t, target_f = cfg.spec_size * cfg.freq_ratio, cfg.spec_size // cfg.freq_ratio
        B, C, T, Fb = feats.shape
        if T > target_t or Fb > target_f:
            raise ValueError(f"HTS-AT: {T}x{Fb} features exceed the {target_t}x{target_f} the model folds")
        with torch.autocast(feats.device.type, enabled=False):
            x = feats.float()
            if T < target_t:
                x = F.interpolate(x, (target_t, Fb), mode="bicubic", align_corners=True)
            if Fb < target_f:
                x = F.interpolate(x, (x.shape[2], target_f), mode="bicubic", align_corners=True)
            x = x.transpose(2, 3)                                          # (B, C, F, T)
            x = x.reshape(B, C, target_f, cfg.freq_ratio, target_t // cfg.freq_ratio).transpose(2, 3)
            return x.reshape(B, C, cfg.spec_size, cfg.spec_size)          # rows: chunk-major, then mel bin

    def tokens(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> final normalised tokens (B, H*W, C)."""
        x = self.patch_embed(img)
        if self.config.ape:
            x = x + self.absolute_pos_embed
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def tscam(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token-semantic head: (B, N, C) -> frame logits (B, classes, time steps)."""
        cfg = self.config
        B, N, C = tokens.shape
        sf, st = cfg.stage_resolution(cfg.num_stages - 1)
        x = tokens.transpose(1, 2).reshape(B, C, sf, st)
        # undo the frequency stacking: the freq_ratio row groups are consecutive time chunks
        rows = sf // cfg.freq_ratio
        x = x.reshape(B, C, cfg.freq_ratio, rows, st).transpose(2, 3).reshape(B, C, rows, cfg.freq_ratio * st)
        return self.tscam_conv(x).flatten(2)

    def forward_image(self, img: torch.Tensor) -> torch.Tensor:
        return self.tscam(self.tokens(img)).mean(dim=-1)


class HTSATModel(HTSATBackbone):
    """HTS-AT with the original's module names: waveforms (B, clip_samples) -> logits (B, classes)."""

    def __init__(self, config: HTSATConfig) -> None:
        super().__init__(config)
        self.spectrogram_extractor = Spectrogram(config.n_fft, config.hop)
        self.logmel_extractor = LogmelFilterBank(config)
        self.bn0 = nn.BatchNorm2d(config.mel_bins, eps=config.norm_eps)

    def logmel(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> bn0-normalised log-mel (B, 1, frames, mel_bins), in fp32."""
        with torch.autocast(waves.device.type, enabled=False):
            x = self.logmel_extractor(self.spectrogram_extractor(waves.float()))
            bn = self.bn0
            # always the running statistics, whatever mode the module is in (a teacher never trains)
            x = F.batch_norm(x.transpose(1, 2), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            return x.transpose(1, 2)[:, None]

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.forward_image(self.to_image(self.logmel(waves)))


class HTSATFbankClassifier(HTSATBackbone):
    """HTS-AT's backbone on the toolkit's normalised Kaldi filterbank: (B, T, mel_bins) -> logits.

    The trainable form (``train --model htsat_tiny``): the released model's waveform front end
    (32 kHz torchlibrosa log-mel and ``bn0``) is replaced by the filterbank every trainable
    model takes, so the features are those of AST and the students; the rest is HTS-AT's.
    """

    def get_classifier(self) -> nn.Module:
        return self.tscam_conv

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.forward_image(self.to_image(fbank[:, None]))
