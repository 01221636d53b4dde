"""Released DASS and VMamba checkpoints -> this package's DASS, with key remapping in one place.

Three layouts load:

* the original DASS training checkpoints: DataParallel state dicts with ``module.v.``
  (the VMamba backbone) and the classifier under ``module.v.classifier.*``;
* the Hugging Face port: ``dass.*`` backbone keys and a top-level ``head.*`` / ``norm.*``;
* VMamba ImageNet checkpoints (``{"model": state_dict}``) for initialisation: the RGB
  stem is summed to one channel and the 1000-class head is left out.

Files are read through :mod:`dass_distill.checkpoint_files` (safe loading, one-line errors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dass_distill.checkpoint_files import (
    load_strict,
    read_checkpoint,
    state_dict_in,
    strip_prefix,
)

from .dass import DASS

OWNER = "dass student"
_PREFIXES = ("module.v.", "module.", "v.", "dass.", "model.")
_HEAD_RENAMES = (("head.", "classifier.head."), ("norm.", "classifier.norm."))
_HEAD = "classifier.head."


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from a ``model`` / ``state_dict`` / ``module`` container."""
    return state_dict_in(read_checkpoint(path, OWNER, allow_pickle), OWNER, path,
                         containers=("model", "state_dict", "module"))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: DASS) -> dict[str, torch.Tensor]:
    """Map a DASS / VMamba state dict onto this model's key names and input channels."""
    out = {}
    for key, value in strip_prefix(state_dict, _PREFIXES).items():
        for old, new in _HEAD_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    stem = out.get("patch_embed.0.weight")
    in_chans = model.config.in_chans
    if stem is not None and stem.shape[1] != in_chans and in_chans == 1:
        out["patch_embed.0.weight"] = stem.sum(dim=1, keepdim=True)  # RGB filters -> one channel
    return out


def load_dass_weights(model: DASS, path: str | Path, allow_pickle: bool = False) -> DASS:
    """Load released DASS weights (original or HF-port keys); every key must match."""
    load_strict(model, checkpoint_filter_fn(read_state_dict(path, allow_pickle), model), OWNER, path)
    return model


def init_from_vmamba(model: DASS, path: str | Path, allow_pickle: bool = False) -> DASS:
    """Initialise from a VMamba ImageNet (or another DASS) checkpoint: everything but the head."""
    state = checkpoint_filter_fn(read_state_dict(path, allow_pickle), model)
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD)}
    load_strict(model, state, OWNER, path, allow_missing=(_HEAD,))
    return model


def init_dass_from_released(model: DASS, path: str | Path, label_ids: list[str] | None = None,
                            allow_pickle: bool = False) -> bool:
    """Start training from a released checkpoint: all weights when its head fits this model's classes
    (True), else the backbone with a new head (False; another label set, or ImageNet VMamba)."""
    state = checkpoint_filter_fn(read_state_dict(path, allow_pickle), model)
    head = model.state_dict()[_HEAD + "weight"]
    if tuple(state.get(_HEAD + "weight", torch.empty(0)).shape) == tuple(head.shape):
        load_strict(model, state, OWNER, path)
        return True
    init_from_vmamba(model, path, allow_pickle)
    return False

