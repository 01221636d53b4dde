"""SSLAM checkpoint formats: key renaming between the fairseq and Hugging Face layouts (``to_hf_key``,
``from_hf_key``, ``_HFView``), the writers (``save_sslam_checkpoint``, ``save_sslam_safetensors``) and
the reader (``load_sslam_classifier``) with its hyper-parameter parsing and refusal of pre-training
checkpoints.

Checkpoints:

* fairseq ``.pt``: ``{"cfg", "model", "optimizer_history", "extra_state", ...}`` with
  the weights (``modeling_sslam``'s keys) stored in fp16 (the rounding is part of the released model, the
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
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn as nn

from dass_distill.checkpoint_files import CheckpointError, load_strict, read_checkpoint, state_dict_in

from .base import wrong_kind_hint
from .configuration_sslam import IMAGE, POSITIONS, SSLAMConfig
from .modeling_sslam import SSLAMClassifier

if TYPE_CHECKING:
    from .sslam import SSLAMTeacher

TEACHER = "sslam"
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
    raw, cfg = _unwrap(read_checkpoint(file, f"{TEACHER} teacher", allow_pickle))
    if isinstance(raw, dict):
        _refuse_pretraining([str(k) for k in raw], file)
    sd = state_dict_in(raw, f"{TEACHER} teacher", file, containers=())
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
    load_strict(_HFView(model) if hf else model, sd, f"{TEACHER} teacher", file, hint=wrong_kind_hint(list(sd), TEACHER))
    return model.eval(), file
