"""Loading released weights into :class:`DASS`: key remapping in one place (timm style).

Handled layouts:

* released DASS training checkpoints: DataParallel state dicts, keys ``module.v.<vmamba key>``;
* the Hugging Face port of DASS: keys ``dass.<vmamba key>`` and the head as ``head.*``;
* VMamba ImageNet checkpoints (``{"model": state_dict}``, 3-channel stem, 1000-class
  head) as initialisation: the stem's RGB weights are summed into one channel and the
  head is left to the new task.

Checkpoints are untrusted files: ``.pth``/``.pt``/``.bin`` are read with
``torch.load(weights_only=True)``, ``.safetensors`` with safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dass_distill.errors import UserError

from .dass import DASS

_PREFIXES = ("module.v.", "module.", "v.", "dass.", "model.")
_HEAD_RENAMES = (("head.", "classifier.head."), ("norm.", "classifier.norm."))


class WeightsError(UserError):
    """Weights that do not fit the model; the message names the file and the first key."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``model`` / ``state_dict`` / ``module`` containers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files and foreign pickles raise many types
        raise WeightsError(f"cannot read {path} as a weights file ({type(e).__name__}: {e})".splitlines()[0]) from None
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return obj


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: DASS) -> dict[str, torch.Tensor]:
    """Map a DASS / VMamba state dict onto this model's key names and input channels."""
    out = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        for old, new in _HEAD_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    stem = out.get("patch_embed.0.weight")
    in_chans = model.config.in_chans
    if stem is not None and stem.shape[1] != in_chans and in_chans == 1:
        out["patch_embed.0.weight"] = stem.sum(dim=1, keepdim=True)  # RGB filters -> one channel
    return out


def load_dass_weights(model: DASS, path: str | Path, strict: bool = True) -> DASS:
    """Load released DASS weights (original or HF-port keys); every key must match when ``strict``."""
    state = checkpoint_filter_fn(read_state_dict(path), model)
    _check_fit(model, state, path, allow_missing=() if strict else None)
    model.load_state_dict(state, strict=False)
    return model


def init_from_vmamba(model: DASS, path: str | Path) -> DASS:
    """Initialise from a VMamba ImageNet checkpoint: everything but the classifier head."""
    state = checkpoint_filter_fn(read_state_dict(path), model)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.head.")}
    _check_fit(model, state, path, allow_missing=("classifier.head.",))
    model.load_state_dict(state, strict=False)
    return model


def _check_fit(model: DASS, state: dict, path, allow_missing: tuple[str, ...] | None) -> None:
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise WeightsError(f"{path}: unexpected key '{unexpected[0]}' (+{len(unexpected) - 1} more) for this DASS config")
    mismatched = sorted(k for k in state if state[k].shape != own[k].shape)
    if mismatched:
        k = mismatched[0]
        raise WeightsError(f"{path}: shape of '{k}' is {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}; "
                           f"check the model size and num_classes")
    if allow_missing is not None:
        missing = sorted(k for k in set(own) - set(state) if not k.startswith(allow_missing))
        if missing:
            raise WeightsError(f"{path}: missing key '{missing[0]}' (+{len(missing) - 1} more) for this DASS config")
