"""Fine-tuning an AST from a released checkpoint, as the original AST code does it.

The original (``ASTModel(audioset_pretrain=True)``) keeps every transformer weight,
including the patch projection (its 16x16 kernel does not depend on the stride),
adapts the position table to the new patch grid and starts a new head
(LayerNorm + Linear). The position table of the F0 x T0 grid is cut from the middle
where the new grid is smaller and bilinearly interpolated where it is larger, time
first, then frequency (``src/models/ast_models.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import ASTConfig

from dass_distill.checkpoint_files import CheckpointError

from .ast import ASTClassifier


_POS = "ast.audio_spectrogram_transformer.embeddings.position_embeddings"
_ARCH = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size")


def patch_grid(config: ASTConfig) -> tuple[int, int]:
    """(frequency, time) patches of an AST config (what its conv patch embedding yields)."""
    f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    t = (config.max_length - config.patch_size) // config.time_stride + 1
    return f, t


def resize_positions(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """(1, 2 + F0*T0, D) position table -> (1, 2 + F*T, D): cls and distillation rows kept,
    the patch rows cut from the middle or bilinearly interpolated, time axis first."""
    (f0, t0), (f, t) = src, dst
    if pos.shape[1] != 2 + f0 * t0:
        raise ValueError(f"position table has {pos.shape[1]} rows, expected 2 + {f0}x{t0}")
    dim = pos.shape[2]
    grid = pos[:, 2:, :].detach().reshape(1, f0 * t0, dim).transpose(1, 2).reshape(1, dim, f0, t0)
    if t < t0:
        grid = grid[:, :, :, t0 // 2 - t // 2: t0 // 2 - t // 2 + t]
    else:
        grid = F.interpolate(grid, size=(f0, t), mode="bilinear")
    if f < f0:
        grid = grid[:, :, f0 // 2 - f // 2: f0 // 2 - f // 2 + f, :]
    elif f > f0:
        grid = F.interpolate(grid, size=(f, t), mode="bilinear")
    grid = grid.reshape(1, dim, f * t).transpose(1, 2)
    return torch.cat([pos[:, :2, :].detach(), grid], dim=1)


def init_from_pretrained_ast(model: ASTClassifier, source: ASTClassifier, path: str, keep_head: bool) -> dict:
    """Copy a released AST (``source``, already loaded strictly) into ``model`` for fine-tuning.

    Both must share the transformer's layout; strides, input length and class count may
    differ. The head is copied only when ``keep_head`` (same label set); otherwise
    ``model`` keeps its freshly initialised one. Returns what was done.
    """
    dst_cfg, src_cfg = model.config, source.config
    for key in _ARCH:
        if getattr(dst_cfg, key) != getattr(src_cfg, key):
            raise CheckpointError(
                f"pretrained={path} is an AST with {key}={getattr(src_cfg, key)}, but the model to train has "
                f"{getattr(dst_cfg, key)}; train the matching size (--model ast_base for the released AudioSet AST)")
    state = dict(source.state_dict())
    src_grid, dst_grid = patch_grid(src_cfg), patch_grid(dst_cfg)
    state[_POS] = resize_positions(state[_POS], src_grid, dst_grid)
    head = {k for k in state if k.startswith("ast.classifier.")}
    if keep_head and source.config.num_labels != dst_cfg.num_labels:
        keep_head = False
    if keep_head:  # the original's head LayerNorm keeps torch's eps, unlike its blocks
        model.ast.classifier.layernorm.eps = source.ast.classifier.layernorm.eps
    else:
        for k in head:
            state.pop(k)
    missing, unexpected = model.load_state_dict(state, strict=False)
    leftover = [k for k in missing if not k.startswith("ast.classifier.")] or list(unexpected)
    if leftover:
        raise CheckpointError(f"pretrained={path}: weight '{leftover[0]}' does not fit the model to train")
    return {"position_grid": {"from": list(src_grid), "to": list(dst_grid)}, "head": "kept" if keep_head else "new"}
