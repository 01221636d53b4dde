"""Causal depthwise conv1d (Mamba's short convolution): reference, torch path, dispatcher.

Layout (the causal-conv1d package's): ``x`` ``(batch, dim, L)``, ``weight`` ``(dim, width)``,
``bias`` ``(dim,)``. Output step ``t`` sees inputs ``t - width + 1 .. t`` only::

    y[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k]

optionally followed by SiLU.

- ``causal_conv1d_ref``: a sum over the ``width`` shifted copies, the oracle.
- ``causal_conv1d_torch``: one grouped ``F.conv1d`` on the left-padded input; any device,
  differentiable, and what tracing and export see.
- ``causal_conv1d``: the causal-conv1d package's CUDA kernel for CUDA tensors when it is
  installed, otherwise ``causal_conv1d_torch``. The package is imported lazily and never
  for CPU tensors.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_torch"]

_ACTIVATIONS = (None, "silu", "swish")


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> None:
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"x must be (batch, dim, L) and weight (dim, width), "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"bias must be (dim={x.shape[1]},), got {tuple(bias.shape)}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Shift-and-add reference (no convolution op)."""
    _check(x, weight, bias, activation)
    width, L = weight.shape[1], x.shape[-1]
    padded = F.pad(x, (width - 1, 0))
    y = sum(weight[:, k, None] * padded[..., k:k + L] for k in range(width))
    if bias is not None:
        y = y + bias[:, None]
    return F.silu(y) if activation else y


def causal_conv1d_torch(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Grouped ``F.conv1d`` over the input padded by ``width - 1`` on the left."""
    _check(x, weight, bias, activation)
    width = weight.shape[1]
    y = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(y) if activation else y


@functools.cache
def _cuda_causal_conv1d_fn() -> Callable[..., Tensor] | None:
    """causal-conv1d's CUDA kernel, or ``None`` (warned once) when it cannot be imported."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except (ImportError, OSError) as exc:
        warnings.warn(f"causal-conv1d's CUDA kernel is unavailable ({exc}); using F.conv1d on CUDA tensors. "
                      "Install the 'gpu' extra.", RuntimeWarning, stacklevel=3)
        return None
    return causal_conv1d_fn


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Causal depthwise conv1d dispatched on the device of ``x`` (see the module docstring)."""
    if x.is_cuda and weight.shape[1] in (2, 3, 4):  # the widths the CUDA kernel is built for
        fn = _cuda_causal_conv1d_fn()
        if fn is not None:
            _check(x, weight, bias, activation)
            return fn(x.contiguous(), weight.contiguous(), bias, activation=activation)
    return causal_conv1d_torch(x, weight, bias, activation)
