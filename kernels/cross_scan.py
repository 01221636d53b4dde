"""Cross-scan / cross-merge of VMamba's SS2D block, torch reference.

``cross_scan`` unfolds a feature map into four 1-D sequences (row-major, column-major,
and both reversed); ``cross_merge`` folds four sequences back by summing them at their
row-major positions. Each is the other's adjoint, hence the other's backward.

These are plain torch ops (flatten / transpose / flip / stack), so autograd, TorchScript
and ONNX export work unchanged; no parameters, purely memory-bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cross_scan", "cross_merge"]


def cross_scan(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, 4, C, H*W)``.

    Direction 0: row-major (``x.flatten(2)``); 1: column-major
    (``x.transpose(2, 3).flatten(2)``); 2 and 3: directions 0 and 1 reversed.
    """
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects (B, C, H, W), got shape {list(x.shape)}")
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: Tensor, H: int, W: int) -> Tensor:
    """``(B, 4, C, H*W)`` -> ``(B, C, H*W)`` in row-major order: the adjoint of ``cross_scan``."""
    # Shapes are traced values under torch.jit.trace (ONNX export): check only in eager/script.
    if not torch.jit.is_tracing() and (y.dim() != 4 or y.shape[1] != 4 or y.shape[-1] != H * W):
        raise ValueError(f"cross_merge expects (B, 4, C, {H}*{W}), got shape {list(y.shape)}")
    B, _, C, L = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)  # column-major positions: index w*H + h
    return rows + cols.reshape(B, C, W, H).transpose(2, 3).reshape(B, C, L)
