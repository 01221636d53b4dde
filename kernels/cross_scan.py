"""Cross-scan / cross-merge of VMamba's SS2D block: torch reference and device dispatch.

``cross_scan`` unfolds a feature map into four 1-D sequences (row-major, column-major,
and both reversed); ``cross_merge`` folds four sequences back by summing them at their
row-major positions. Each is the other's adjoint, hence the other's backward.

The references ``cross_scan_ref`` / ``cross_merge_ref`` are plain torch ops (flatten /
transpose / flip / stack), so autograd, TorchScript and ONNX export work unchanged; no
parameters, purely memory-bound.

Dispatch: in eager mode, CUDA tensors (fp32/fp16/bf16) go to the Triton kernels of
``cross_scan_triton.py`` (one read and one write of the data, instead of the reference's
several passes). Everything else (CPU tensors, float64, TorchScript, tracing for ONNX,
``torch.compile``/``torch.export``) runs the reference. Triton is imported lazily, on the
first CUDA call, so CPU users never import it.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["cross_merge", "cross_merge_ref", "cross_scan", "cross_scan_ref"]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _triton_ops() -> ModuleType | None:
    """The Triton kernels module, or ``None`` (warned once) when Triton cannot be imported."""
    try:
        from . import cross_scan_triton
    except ImportError as exc:  # no triton wheel for this platform, or a broken install
        warnings.warn(
            f"Triton is unavailable ({exc}); cross_scan/cross_merge use the torch reference "
            "on CUDA tensors (correct but slower).",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return cross_scan_triton


def _use_triton(t: Tensor) -> ModuleType | None:
    """The Triton module when ``t`` should take the kernel path (eager CUDA), else ``None``."""
    if not t.is_cuda or t.dtype not in _TRITON_DTYPES:
        return None
    # Traced / compiled graphs keep the reference: it exports (ONNX) and inductor fuses it.
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    return _triton_ops()


def cross_scan_ref(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, 4, C, H*W)``, plain torch ops on any device.

    Direction 0: row-major (``x.flatten(2)``); 1: column-major
    (``x.transpose(2, 3).flatten(2)``); 2 and 3: directions 0 and 1 reversed.
    """
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects (B, C, H, W), got shape {list(x.shape)}")
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge_ref(y: Tensor, H: int, W: int) -> Tensor:
    """``(B, 4, C, H*W)`` -> ``(B, C, H*W)`` in row-major order, plain torch ops on any device."""
    _check_sequences(y, H, W)
    B, _, C, L = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)  # column-major positions: index w*H + h
    return rows + cols.reshape(B, C, W, H).transpose(2, 3).reshape(B, C, L)


def _check_sequences(y: Tensor, H: int, W: int) -> None:
    # Shapes are traced values under torch.jit.trace (ONNX export): check only in eager/script.
    if not torch.jit.is_tracing() and (y.dim() != 4 or y.shape[1] != 4 or y.shape[-1] != H * W):
        raise ValueError(f"cross_merge expects (B, 4, C, {H}*{W}), got shape {list(y.shape)}")


def cross_scan(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, 4, C, H*W)`` (see ``cross_scan_ref``), dispatched on device."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects (B, C, H, W), got shape {list(x.shape)}")
    # is_scripting() first: TorchScript skips this branch, so it never sees the Python dispatch.
    if not torch.jit.is_scripting():
        ops = _use_triton(x)
        if ops is not None:
            if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                # A channels_last tensor is a contiguous (B, H, W, C) map: no copy needed.
                return ops.cross_scan_triton(x.permute(0, 2, 3, 1), channels_last=True)
            return ops.cross_scan_triton(x)
    return cross_scan_ref(x)


def cross_merge(y: Tensor, H: int, W: int) -> Tensor:
    """``(B, 4, C, H*W)`` -> ``(B, C, H*W)``: the adjoint of ``cross_scan``, dispatched on device."""
    _check_sequences(y, H, W)
    if not torch.jit.is_scripting():
        ops = _use_triton(y)
        if ops is not None:
            return ops.cross_merge_triton(y, H, W)
    return cross_merge_ref(y, H, W)
