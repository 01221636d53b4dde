"""Released AuM and SSAMBA checkpoints -> this package's AuM / SSAMBA.

* AuM: a flat ``torch.save(model.state_dict())`` with the original names (``module.`` when
  saved from a multi-GPU run). Loaded as is; a position table of another grid (another
  clip length or stride) is resized as AuM's loader resizes it.
* SSAMBA fine-tuned: a DataParallel state dict, every key ``module.``-prefixed, the
  backbone under ``module.v.`` (with ViM's unused ImageNet head ``v.head.*``, dropped
  here) and the classifier under ``module.mlp_head.``.
* SSAMBA pretrained (self-supervised, no classifier): ``module.v.*`` plus the pretext
  heads (``mask_embed``, ``cpredlayer``, ``gpredlayer``) and the pretraining input size
  (``p_input_fdim``, ``p_input_tdim``). It initialises a fine-tuning model as the original
  does: the same patch projection at the fine-tuning stride, positions resized by the SSAST
  recipe (centre crop or bilinear, time then frequency), a new head.

A masked-patch pretraining run of this toolkit (``dass-distill pretrain``) initialises either
family the same way (:func:`init_from_pretraining`).

Files are read through :mod:`dass_distill.checkpoint_files` (safe loading, one-line errors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dass_distill.checkpoint_files import (
    CheckpointError,
    load_strict,
    read_checkpoint,
    state_dict_in,
    strip_prefix,
)

from .aum import AuM
from .masked_patches import split_pretraining_state
from .ssamba import SSAMBA
from .vim import resize_bilinear_antialias, resize_crop_or_interpolate

AUM_OWNER, SSAMBA_OWNER = "aum student", "ssamba student"
AUM_HEAD, SSAMBA_HEAD = "head.", "mlp_head."
#: Keys of SSAMBA checkpoints that the fine-tuning model has no use for: ViM's ImageNet head and
#: the pretraining-only parts (pretext heads, mask embedding, pretraining input size).
SSAMBA_UNUSED = ("v.head.", "mask_embed", "cpredlayer.", "gpredlayer.", "p_input_fdim", "p_input_tdim")


def read_state_dict(path: str | Path, owner: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, unwrapped from a ``model`` / ``state_dict`` container, without ``module.``."""
    state = state_dict_in(read_checkpoint(path, owner, allow_pickle), owner, path, containers=("model", "state_dict"))
    return strip_prefix(state, ("module.",))


def _checkpoint_grid(rows: int, model_grid: tuple[int, int], owner: str, path: Path, key: str) -> tuple[int, int]:
    """The (frequency, time) grid of a position table with ``rows`` patch rows: the model's number of
    frequency patches (the mel bins, patch size and stride fix it), the rest time."""
    f = model_grid[0]
    if rows % f:
        raise CheckpointError(f"{owner}: {path} weight '{key}' has {rows} patch positions, not a multiple of the "
                              f"model's {f} frequency patches; check fstride and num_mel_bins")
    return f, rows // f


def _fit_positions(state: dict, key: str, model_grid: tuple[int, int], resize, owner: str, path: Path,
                   source_grid: tuple[int, int] | None = None) -> None:
    """Resize ``state[key]`` (class row first, then the patch rows) to the model's grid, in place."""
    table = state.get(key)
    if table is None or table.dim() != 3:
        return  # absent or malformed: the strict load names it
    if source_grid is None and table.shape[1] - 1 == model_grid[0] * model_grid[1]:
        return
    grid = source_grid or _checkpoint_grid(table.shape[1] - 1, model_grid, owner, path, key)
    if grid[0] * grid[1] != table.shape[1] - 1:
        raise CheckpointError(f"{owner}: {path} weight '{key}' has {table.shape[1] - 1} patch positions, not the "
                              f"{grid[0]} x {grid[1]} grid its input size implies")
    state[key] = torch.cat([table[:, :1], resize(table[:, 1:], grid, model_grid)], dim=1)


def aum_state(model: AuM, path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """An AuM checkpoint's tensors in this model's names, positions fitted to its grid."""
    path = Path(path)
    state = read_state_dict(path, AUM_OWNER, allow_pickle)
    if any(k.startswith("v.") for k in state):
        raise CheckpointError(f"{AUM_OWNER}: {path} looks like an SSAMBA checkpoint (keys 'module.v.*'); "
                              f"use an ssamba_* model")
    _fit_positions(state, "pos_embed.pos_embed", model.grid, resize_bilinear_antialias, AUM_OWNER, path)
    return state


def load_aum_weights(model: AuM, path: str | Path, allow_pickle: bool = False) -> AuM:
    """Load a released AuM checkpoint; every key must match (the position table may be resized)."""
    load_strict(model, aum_state(model, path, allow_pickle), AUM_OWNER, path)
    return model


def init_aum_from_released(model: AuM, path: str | Path, label_ids: list[str] | None = None,
                           allow_pickle: bool = False) -> bool:
    """Start training from an AuM checkpoint: everything, the head only when its classes fit (True)."""
    state = aum_state(model, path, allow_pickle)
    if tuple(state.get(AUM_HEAD + "weight", torch.empty(0)).shape) == tuple(model.head.weight.shape):
        load_strict(model, state, AUM_OWNER, path)
        return True
    state = {k: v for k, v in state.items() if not k.startswith(AUM_HEAD)}
    load_strict(model, state, AUM_OWNER, path, allow_missing=(AUM_HEAD,))
    return False


def is_ssamba_pretrained(state: dict[str, torch.Tensor]) -> bool:
    """A self-supervised SSAMBA checkpoint (pretext heads, no classifier)."""
    return "mask_embed" in state or any(k.startswith(("cpredlayer.", "gpredlayer.")) for k in state)


def ssamba_state(model: SSAMBA, path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], bool]:
    """An SSAMBA checkpoint's tensors in this model's names, positions fitted to its grid, and whether
    it is a pretrained (self-supervised) one."""
    path = Path(path)
    raw = read_state_dict(path, SSAMBA_OWNER, allow_pickle)
    if not any(k.startswith("v.") for k in raw):
        raise CheckpointError(f"{SSAMBA_OWNER}: {path} has no 'module.v.*' backbone weights; is it an AuM "
                              f"checkpoint? (use an aum_* model)")
    pretrained = is_ssamba_pretrained(raw)
    source_grid = None
    if pretrained and "p_input_fdim" in raw and "p_input_tdim" in raw:
        # The pretraining grid: its input size and the 16x16 patches at stride 16 it was cut with.
        kernel = raw["v.patch_embed.proj.weight"].shape[-2:]
        source_grid = (int(raw["p_input_fdim"]) - kernel[0]) // kernel[0] + 1, \
                      (int(raw["p_input_tdim"]) - kernel[1]) // kernel[1] + 1
    state = {k: v for k, v in raw.items() if not k.startswith(SSAMBA_UNUSED)}
    _fit_positions(state, "v.pos_embed", model.v.grid, resize_crop_or_interpolate, SSAMBA_OWNER, path, source_grid)
    return state, pretrained


def load_ssamba_weights(model: SSAMBA, path: str | Path, allow_pickle: bool = False) -> SSAMBA:
    """Load a released fine-tuned SSAMBA checkpoint; every key must match (positions may be resized)."""
    state, pretrained = ssamba_state(model, path, allow_pickle)
    if pretrained:
        raise CheckpointError(f"{SSAMBA_OWNER}: {path} is a self-supervised (pretrained) SSAMBA checkpoint with no "
                              f"classifier; fine-tune it: dass-distill train --model ssamba_... pretrained={path}")
    load_strict(model, state, SSAMBA_OWNER, path)
    return model


def init_ssamba_from_released(model: SSAMBA, path: str | Path, label_ids: list[str] | None = None,
                              allow_pickle: bool = False) -> bool:
    """Start training from an SSAMBA checkpoint, pretrained or fine-tuned: the backbone always, the
    head only from a fine-tuned checkpoint whose classes fit (True)."""
    state, _ = ssamba_state(model, path, allow_pickle)
    head = model.get_classifier().weight
    if tuple(state.get(SSAMBA_HEAD + "1.weight", torch.empty(0)).shape) == tuple(head.shape):
        load_strict(model, state, SSAMBA_OWNER, path)
        return True
    state = {k: v for k, v in state.items() if not k.startswith(SSAMBA_HEAD)}
    load_strict(model, state, SSAMBA_OWNER, path, allow_missing=(SSAMBA_HEAD,))
    return False


def init_from_pretraining(model: AuM | SSAMBA, state: dict[str, torch.Tensor], source: str | Path) -> bool:
    """Start fine-tuning from a masked-patch pretraining state (``dass-distill pretrain``) of the same
    family: the encoder's weights, the positions fitted to the model's grid (as the family resizes
    them), a new head. Returns False (the head is new)."""
    try:
        encoder, (fdim, tdim) = split_pretraining_state(state)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if isinstance(model, SSAMBA):
        owner, key, grid, resize, head = SSAMBA_OWNER, "v.pos_embed", model.v.grid, resize_crop_or_interpolate, \
            SSAMBA_HEAD
        kernel_key = "v.patch_embed.proj.weight"
    else:
        owner, key, grid, resize, head = AUM_OWNER, "pos_embed.pos_embed", model.grid, resize_bilinear_antialias, \
            AUM_HEAD
        kernel_key = "patch_embed.proj.weight"
    if kernel_key not in encoder:
        raise CheckpointError(f"{owner}: {source} was pretrained with another model family (no '{kernel_key}')")
    k_f, k_t = encoder[kernel_key].shape[-2:]  # pretraining patches do not overlap: stride = kernel
    source_grid = ((fdim - k_f) // k_f + 1, (tdim - k_t) // k_t + 1)
    _fit_positions(encoder, key, grid, resize, owner, Path(source), source_grid)
    load_strict(model, encoder, owner, source, allow_missing=(head,))
    return False
