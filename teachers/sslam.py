"""SSLAM (Alex et al., ICLR 2025) teacher: the EAT / data2vec 2.0 ViT-B fine-tuned on AudioSet.

Our own implementation of the released classifier (fairseq's
``mae_image_classification`` wrapping a ``data2vec_multi`` model with one IMAGE
modality encoder), with the module tree named so that its ``state_dict()`` keys are
the original checkpoint's keys:

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

Checkpoints:

* fairseq ``.pt``: ``{"cfg", "model", "optimizer_history", "extra_state", ...}`` with
  the weights above stored in fp16 (the rounding is part of the released model, the
  original loads them into fp32 modules, and so do we). Only ``num_heads`` (and the
  clip length) cannot be read from the shapes; they come from ``cfg``.
* the Hugging Face port (``config.json`` of ``model_type: eat`` + ``model.safetensors``):
  ``model.local_encoder.*``, ``model.extra_tokens``, ``model.fixed_positional_encoder.positions``,
  ``model.pre_norm.*`` (= ``context_encoder.norm``), ``model.blocks.*``, ``model.fc_norm.*``,
  ``model.head.*``; a bare ``.safetensors`` file in that layout also loads.
"""

from __future__ import annotations

import argparse
import json
import types
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import (CheckpointError, SpecMask, Teacher, load_strict, read_checkpoint, sha256_of, tensors_of,
                   wrong_kind_hint)
from .frontends import KaldiFbank

TEACHER = "sslam"
# EAT / SSLAM inference normalisation (the rounded AudioSet statistics of their scripts)
NORM_MEAN, NORM_STD = -4.268, 4.569
FC_NORM_EPS = 1e-6  # hard-coded in the fine-tuning model, independent of the backbone's norm_eps

IMAGE = "model.modality_encoders.IMAGE."
POSITIONS = IMAGE + "fixed_positional_encoder.positions"
HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"
META_KEY = "sslam_config"  # our config, kept in the safetensors header so a bare file reloads

# fairseq prefix -> Hugging Face prefix, most specific first
_TO_HF = (
    (IMAGE + "context_encoder.norm.", "model.pre_norm."),
    (IMAGE, "model."),
    ("model.blocks.", "model.blocks."),
    ("fc_norm.", "model.fc_norm."),
    ("head.", "model.head."),
)
_FROM_HF = (
    ("model.pre_norm.", IMAGE + "context_encoder.norm."),
    ("model.blocks.", "model.blocks."),
    ("model.fc_norm.", "fc_norm."),
    ("model.head.", "head."),
    ("model.", IMAGE),  # local_encoder, extra_tokens, fixed_positional_encoder
)


def _rename(key: str, table: Sequence[tuple[str, str]]) -> str:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def to_hf_key(key: str) -> str:
    """Original fairseq key -> the Hugging Face port's key."""
    return _rename(key, _TO_HF)


def from_hf_key(key: str) -> str:
    """Hugging Face port key -> original fairseq key."""
    return _rename(key, _FROM_HF)


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


class _HFView(nn.Module):
    """The classifier under the Hugging Face key names, so strict loading names the file's own keys."""

    def __init__(self, model: SSLAMClassifier) -> None:
        super().__init__()
        self.inner = model

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {to_hf_key(k): v for k, v in self.inner.state_dict().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,  # type: ignore[override]
                        assign: bool = False):
        return self.inner.load_state_dict({from_hf_key(k): v for k, v in state_dict.items()}, strict=strict)


def front_end_for(config: SSLAMConfig) -> KaldiFbank:
    return KaldiFbank(target_length=config.target_length, num_mel_bins=config.num_mel_bins,
                      mean=NORM_MEAN, std=NORM_STD)


def _model_of(teacher_or_model: "SSLAMTeacher | SSLAMClassifier") -> SSLAMClassifier:
    model = teacher_or_model
    if not isinstance(model, SSLAMClassifier):  # a teacher: its classifier
        model = getattr(model, "model", None)
    if not isinstance(model, SSLAMClassifier):
        raise TypeError(f"expected an SSLAMTeacher or SSLAMClassifier, got {type(teacher_or_model).__name__}")
    return model


def fairseq_cfg(config: SSLAMConfig) -> dict:
    """The parts of a fine-tuning run's fairseq ``cfg`` that describe the model, as plain dicts."""
    rows = config.max_positions // config.grid[1]
    image = {"in_chans": config.in_chans, "patch_size": config.patch_size, "embed_dim": config.embed_dim,
             "num_extra_tokens": config.num_extra_tokens, "prenet_depth": 0, "fixed_positions": True,
             "use_alibi_encoder": False, "target_length": config.target_length, "max_length": rows}
    backbone = {"_name": "data2vec_multi", "embed_dim": config.embed_dim, "depth": config.depth,
                "num_heads": config.num_heads, "mlp_ratio": config.mlp_ratio, "norm_eps": config.norm_eps,
                "layer_norm_first": False, "supported_modality": "IMAGE", "modalities": {"image": image}}
    return {
        "common": {"fp16": True},
        "task": {"_name": "mae_image_classification", "audio_mae": True, "target_length": config.target_length},
        "model": {"_name": "mae_image_classification", "num_classes": config.num_classes, "audio_mae": True,
                  "use_fc_norm": True, "prediction_mode": "CLS_TOKEN", "target_length": config.target_length,
                  "pretrained_model_args": {"model": backbone}},
    }


def hf_config(config: SSLAMConfig) -> dict:
    """``config.json`` of the Hugging Face port (``EATConfig``, fine-tuned variant)."""
    return {
        "architectures": ["EATModel"], "model_type": "eat", "model_variant": "finetune",
        "embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_ratio, "patch_size": config.patch_size, "stride": config.patch_size,
        "in_chans": config.in_chans, "mel_bins": config.num_mel_bins,
        "max_length": config.max_positions // config.grid[1], "num_classes": config.num_classes,
        "qkv_bias": True, "layer_norm_first": False, "norm_eps": config.norm_eps, "norm_affine": True,
        "fixed_positions": True, "img_size": [config.target_length, config.num_mel_bins],
    }


def save_sslam_checkpoint(teacher_or_model: "SSLAMTeacher | SSLAMClassifier", path: str | Path) -> Path:
    """Write the original fairseq layout: plain-dict ``cfg`` and fp16 weights under ``model``."""
    model = _model_of(teacher_or_model)
    weights = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": fairseq_cfg(model.config), "model": weights, "optimizer_history": [], "extra_state": {}}, path)
    return path


def save_sslam_safetensors(teacher_or_model: "SSLAMTeacher | SSLAMClassifier", path: str | Path,
                           dtype: torch.dtype = torch.float32) -> Path:
    """Write the Hugging Face layout: a folder (``config.json`` + ``model.safetensors``), or
    just the weights when ``path`` ends in ``.safetensors``. Returns the weight file."""
    from safetensors.torch import save_file

    model = _model_of(teacher_or_model)
    path = Path(path)
    if path.suffix == ".safetensors":
        file = path
    else:
        path.mkdir(parents=True, exist_ok=True)
        file = path / HF_WEIGHTS
        (path / HF_CONFIG).write_text(json.dumps(hf_config(model.config), indent=2))
    file.parent.mkdir(parents=True, exist_ok=True)
    weights = {to_hf_key(k): (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in model.state_dict().items()}
    save_file(weights, str(file), metadata={"format": "pt", META_KEY: json.dumps(asdict(model.config))})
    return file


# ---------------------------------------------------------------- checkpoint reading


def _plain(obj: Any) -> Any:
    """A cfg as nested plain dicts: fairseq stores dicts, omegaconf objects or a Namespace."""
    if type(obj).__name__ in ("DictConfig", "ListConfig"):
        try:
            from omegaconf import OmegaConf

            return OmegaConf.to_container(obj, resolve=False, enum_to_str=True)
        except Exception:  # omegaconf missing or the cfg is odd: fall back to shapes and defaults
            return {}
    if isinstance(obj, Enum):
        return obj.name
    if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _sub(d: Any, *keys: str) -> dict:
    for key in keys:
        d = d.get(key) if isinstance(d, dict) else None
    return d if isinstance(d, dict) else {}


def _num(value: Any, kind: type) -> Any:
    """A usable number from a cfg value (skips unresolved '${...}' interpolations and the like)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def _fairseq_hyper(cfg: Any, path: Path) -> dict:
    """num_heads, target_length, norm_eps from a fine-tuning cfg; refuse variants we do not implement."""
    cfg = _plain(cfg)
    head = _sub(cfg, "model")
    backbone = _sub(head, "pretrained_model_args", "model")
    image = _sub(backbone, "modalities", "image")
    mode = str(head.get("prediction_mode", "CLS_TOKEN"))
    unsupported = [
        ("CLS_TOKEN" not in mode, f"prediction_mode {mode} (only CLS_TOKEN is implemented)"),
        (head.get("use_fc_norm", True) is False, "use_fc_norm: false"),
        (backbone.get("layer_norm_first") is True, "layer_norm_first: true (pre-LN blocks)"),
        (bool(image.get("use_alibi_encoder")), "use_alibi_encoder: true"),
        ((_num(image.get("prenet_depth"), int) or 0) > 0, "prenet_depth > 0"),
    ]
    for bad, what in unsupported:
        if bad:
            raise CheckpointError(f"{TEACHER} teacher: {path} was trained with {what}, "
                                  "which this teacher does not implement")
    out = {
        "num_heads": _num(backbone.get("num_heads"), int),
        "target_length": _num(head.get("target_length"), int) or _num(image.get("target_length"), int),
        "norm_eps": _num(backbone.get("norm_eps"), float),
    }
    return {k: v for k, v in out.items() if v is not None}


def _hf_hyper(cfg: dict, path: Path) -> dict:
    """num_heads, target_length, mel bins, norm_eps from the port's ``config.json``."""
    if cfg.get("model_type", "eat") != "eat":
        raise CheckpointError(f"{TEACHER} teacher: {path} holds a '{cfg.get('model_type')}' model, not EAT/SSLAM")
    if cfg.get("model_variant") == "pretrain":
        raise CheckpointError(f"{TEACHER} teacher: {path} is a pre-training checkpoint, not a fine-tuned classifier "
                              "(config.json says model_variant: pretrain)")
    if cfg.get("layer_norm_first") is True:
        raise CheckpointError(f"{TEACHER} teacher: {path} uses pre-LN blocks (layer_norm_first), not implemented")
    if cfg.get("stride", cfg.get("patch_size")) != cfg.get("patch_size"):
        raise CheckpointError(f"{TEACHER} teacher: {path} uses overlapping patches (stride {cfg.get('stride')}), "
                              "not implemented")
    img = cfg.get("img_size")
    out = {
        "num_heads": _num(cfg.get("num_heads"), int),
        "target_length": _num(img[0], int) if isinstance(img, (list, tuple)) and img else None,
        "num_mel_bins": _num(cfg.get("mel_bins"), int),
        "norm_eps": _num(cfg.get("norm_eps"), float),
    }
    return {k: v for k, v in out.items() if v is not None}


def _meta_hyper(file: Path) -> dict | None:
    """Our own config from a safetensors header, if this file was written by us."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        raw = (f.metadata() or {}).get(META_KEY)
    if not raw:
        return None
    # only what shapes cannot tell; everything else is still read from the weights
    return {k: v for k, v in json.loads(raw).items() if k in ("num_heads", "target_length", "num_mel_bins", "norm_eps")}


# Keys that only a pre-training (data2vec_multi with EMA teacher and decoder) checkpoint has.
_PRETRAIN_MARKS = ("_ema", "decoder.", "recon_proj.", "cls_proj.", "shared_decoder.")


def _refuse_pretraining(keys: Sequence[str], path: Path) -> None:
    marks = [k for k in keys if k.startswith("_ema") or any(m in k for m in _PRETRAIN_MARKS[1:])]
    # the bare data2vec_multi model (keys without the classifier's 'model.' prefix), or the
    # Hugging Face port without fc_norm/head; a fine-tuned file that lost its head is a missing key
    bare = any(k.startswith("modality_encoders.") for k in keys)
    hf_headless = (any(k.startswith("model.local_encoder.") for k in keys)
                   and not any(k.startswith(("model.head.", "model.fc_norm.")) for k in keys))
    headless = bare or hf_headless
    if marks or headless:
        why = f"it has '{marks[0]}'" if marks else "it has no classifier head"
        raise CheckpointError(f"{TEACHER} teacher: {path} is a pre-training checkpoint, not a fine-tuned classifier "
                              f"({why}); use the AudioSet fine-tuned SSLAM checkpoint")


def _unwrap(obj: Any) -> tuple[Any, Any]:
    """(weights, cfg) of a loaded checkpoint object."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key], obj.get("cfg", obj.get("args"))
    return obj, None


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """(weight file, HF config.json or None) for a file or a Hugging Face folder."""
    if not path.exists():
        raise CheckpointError(f"{TEACHER} teacher: checkpoint {path} not found")
    if path.is_dir():
        if not (path / HF_WEIGHTS).is_file():
            raise CheckpointError(f"{TEACHER} teacher: {path} needs {HF_WEIGHTS} (and {HF_CONFIG}) "
                                  "to load as a Hugging Face folder")
        return path / HF_WEIGHTS, (path / HF_CONFIG if (path / HF_CONFIG).is_file() else None)
    return path, None


def load_sslam_classifier(path: str | Path, allow_pickle: bool = False) -> tuple[SSLAMClassifier, Path]:
    """An ``SSLAMClassifier`` from a fairseq ``.pt``, a ``.safetensors`` file or an HF folder,
    strictly loaded; also returns the weight file (for the fingerprint)."""
    path = Path(path)
    file, config_json = _resolve(path)
    raw, cfg = _unwrap(read_checkpoint(file, TEACHER, allow_pickle))
    if isinstance(raw, dict):
        _refuse_pretraining([str(k) for k in raw], file)
    sd = tensors_of(raw, TEACHER, file, containers=())
    keys = list(sd)
    if any(k.startswith(IMAGE) for k in keys):
        hf = False
    elif any(k.startswith("model.local_encoder.") for k in keys):
        hf = True
    else:
        raise CheckpointError(f"{TEACHER} teacher: {file} is not an SSLAM/EAT classifier (no '{IMAGE}*' or "
                              f"Hugging Face 'model.local_encoder.*' weights){wrong_kind_hint(keys, TEACHER)}")
    if hf:
        hyper = _meta_hyper(file) if file.suffix == ".safetensors" else None
        if hyper is None and config_json is not None:
            try:
                hyper = _hf_hyper(json.loads(config_json.read_text()), config_json)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{TEACHER} teacher: {config_json} is not valid JSON ({e})") from None
        hyper = hyper or {}
    else:
        hyper = _fairseq_hyper(cfg, file) if cfg is not None else {}
    named = {from_hf_key(k): v for k, v in sd.items()} if hf else sd
    try:
        config = SSLAMConfig.from_state_dict(named, **hyper)
    except ValueError as e:
        raise CheckpointError(f"{TEACHER} teacher: {file}: {e}") from None
    model = SSLAMClassifier(config)
    if POSITIONS not in named:  # a converted copy may drop the fixed table; the original formula rebuilds it
        sd = {**sd, (to_hf_key(POSITIONS) if hf else POSITIONS): model.state_dict()[POSITIONS]}
    load_strict(_HFView(model) if hf else model, sd, TEACHER, file)
    return model.eval(), file


class SSLAMTeacher(Teacher):
    """SSLAM with its Kaldi-fbank front end; outputs are positional (AudioSet order)."""

    kind = "sslam"

    def __init__(self, model: SSLAMClassifier, name: str = "sslam", front_end: KaldiFbank | None = None) -> None:
        front_end = front_end or front_end_for(model.config)
        super().__init__(name, front_end.sample_rate, model.config.num_classes)
        self.model = model.eval()
        self.front_end = front_end

    @classmethod
    def from_config(cls, config: SSLAMConfig, name: str = "sslam") -> "SSLAMTeacher":
        """A randomly initialised teacher (for tests and smoke runs)."""
        return cls(SSLAMClassifier(config), name)

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str = "sslam", allow_pickle: bool = False) -> "SSLAMTeacher":
        """Load a fairseq ``.pt``, a ``.safetensors`` file or a Hugging Face folder."""
        model, file = load_sslam_classifier(path, allow_pickle)
        teacher = cls(model, name)
        teacher.checkpoint = str(Path(path).resolve())
        teacher.checkpoint_sha256 = sha256_of([file])
        return teacher

    @property
    def config(self) -> SSLAMConfig:
        return self.model.config

    @property
    def window_samples(self) -> int:
        return self.front_end.window_samples

    def front_end_params(self) -> dict:
        return self.front_end.params()

    def short_clip_rule(self) -> str:
        return (f"fbank zero-padded to {self.front_end.target_length} frames before normalisation "
                "(as the original EAT/SSLAM inference)")

    def centre_frequencies(self) -> torch.Tensor:
        return self.front_end.centre_frequencies()

    def frame_shift_ms(self) -> float:
        return self.front_end.frame_shift

    @torch.inference_mode()
    def window_logits(self, waveforms: Sequence[torch.Tensor],
                      masks: Sequence[SpecMask | None] | None = None) -> torch.Tensor:
        feats = self.front_end([w.to(self.device) for w in waveforms])  # fp32 front end
        feats = self.mask_features(feats, masks)  # on the normalised fbank
        with self.model_precision():
            return self.model(feats).float()
