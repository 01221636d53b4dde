"""Reading checkpoint files, for teachers and students alike.

Checkpoints are untrusted files: safetensors, or ``torch.load(weights_only=True)``; a file
that needs arbitrary unpickling is refused unless the caller opts in (``allow_pickle``).
Every problem is one line naming the model, the file and the first offending key, in the
same words for every model: missing keys first, then unexpected keys, then shapes.

This module imports nothing of the toolkit but its error type, so every package
(teachers, students, the glue) reads checkpoints through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from dass_distill.errors import UserError

PICKLE_OPT_IN = ("allow_pickle: true in a teacher YAML, --allow-pickle on the command line, or "
                 "allow_pickle=True in Python")


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded; the message names the model, the file and the key."""


def read_checkpoint(path: str | Path, owner: str, allow_pickle: bool = False) -> object:
    """The object stored in a checkpoint file (``owner``, e.g. ``"ast teacher"``, starts every message)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{owner}: checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{owner}: {path} is not a readable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # truncated zips, foreign pickles and plain garbage raise many types
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not allow_pickle and "weights_only" in str(e):
            raise CheckpointError(f"{owner}: {path} stores Python objects besides tensors and cannot be loaded "
                                  f"safely; if you trust the file, opt in ({PICKLE_OPT_IN})") from None
        raise CheckpointError(f"{owner}: cannot read {path}: truncated or not a checkpoint ({text})") from None


def state_dict_in(obj: object, owner: str, path: str | Path,
                  containers: Sequence[str] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (the first container key present is unwrapped)."""
    for key in containers:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        where = f" (looked under {', '.join(repr(c) for c in containers)})" if containers else ""
        raise CheckpointError(f"{owner}: {path} holds no state dict of tensors{where}")
    return obj


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Drop the first matching prefix from every key (``module.``, ``sed_model.``, ...)."""
    out = {}
    for k, v in state_dict.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def check_fit(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], owner: str, path: str | Path,
              allow_missing: Sequence[str] = (), hint: str = "") -> None:
    """Raise on the first key of ``state`` that does not fit a model whose state dict is ``own``.

    Keys starting with one of ``allow_missing`` may be absent (e.g. a new head); ``hint`` is
    appended to the missing-key message (e.g. "it looks like an htsat checkpoint").
    """
    missing = [k for k in own if k not in state and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(f"{owner}: {path} lacks weight '{missing[0]}' ({len(missing)} missing){hint}")
    if unexpected:
        raise CheckpointError(f"{owner}: {path} has unexpected weight '{unexpected[0]}' ({len(unexpected)} unexpected)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{owner}: {path} weight '{k}' has shape {tuple(v.shape)}, the model needs "
                                  f"{tuple(own[k].shape)}")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], owner: str, path: str | Path,
                allow_missing: Sequence[str] = (), hint: str = "") -> None:
    """``check_fit``, then load (each tensor cast to the module's dtype)."""
    own = module.state_dict()
    check_fit(own, state, owner, path, allow_missing, hint)
    module.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()},
                           strict=not allow_missing)
