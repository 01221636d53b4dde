"""Selective scan (Mamba S6) for the SS2D block: reference, fast CPU paths, dispatcher.

Layout (mamba-ssm's): ``u, delta`` ``(batch, dim, L)``; ``A`` ``(dim, N)``; ``B, C``
``(batch, G, N, L)`` with ``G | dim`` (channel ``d`` reads group ``d // (dim // G)``;
``(batch, N, L)`` means ``G = 1``); ``D, delta_bias`` ``(dim,)``. With
``dt = softplus(delta + delta_bias)`` (softplus and bias optional)::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t      (per state n)
    y_t = sum_n C_t,n h_t,n + D * u_t

- ``selective_scan_ref``: sequential loop over time, the oracle (mamba-ssm's algorithm).
- ``selective_scan_fused_cpu``: the fused C++ kernel (``csrc/selective_scan_cpu.cpp``,
  built on first use), forward and backward in one pass each; any ``N``.
- ``selective_scan_torch``: the same math as a handful of large torch ops around the
  chunked ``linear_scan``; differentiable through torch autograd, any device, and the
  path that tracing, ``torch.export`` and ONNX see (no custom ops in the graph).
- ``selective_scan_cpu``: the fused kernel when it applies (eager CPU tensors, kernel
  built), otherwise ``selective_scan_torch``.
- ``selective_scan``: mamba-ssm's CUDA kernel for CUDA tensors when installed, otherwise
  ``selective_scan_cpu``. mamba-ssm is imported lazily and never for CPU tensors (it
  cannot even be imported without CUDA).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from torch.autograd.function import once_differentiable

from .cpu_extension import cpu_kernel
from .linear_scan import linear_scan, linear_scan_static, promote_to_compute_dtype

__all__ = [
    "selective_scan",
    "selective_scan_cpu",
    "selective_scan_fused_cpu",
    "selective_scan_ref",
    "selective_scan_torch",
]


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32, or float64 when any input is float64 (fp16/bf16 are computed in fp32)."""
    return promote_to_compute_dtype(*(t.dtype for t in tensors if t is not None))


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """Validates the layout; returns ``B, C`` as ``(batch, G, N, L)``."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must be (batch, dim, L) alike, got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    batch, dim, L = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    out = []
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3:
            M = M.unsqueeze(1)
        if M.dim() != 4 or M.shape[0] != batch or M.shape[2:] != (N, L) or dim % M.shape[1]:
            raise ValueError(
                f"{name} must be (batch={batch}, G, N={N}, L={L}) with G dividing dim={dim}, "
                f"got {tuple(M.shape)}"
            )
        out.append(M)
    return out[0], out[1]


def _graph_capture() -> bool:
    """True while tracing, scripting, exporting or compiling: those must see torch ops only."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def _dt(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Sequential reference (a Python loop over ``L``). Returns ``(batch, dim, L)`` in ``u.dtype``."""
    B, C = _check_shapes(u, delta, A, B, C)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    batch, dim, L = u.shape
    u_c = u.to(dtype)
    dt = _dt(delta, delta_bias, delta_softplus, dtype)
    B = B.to(dtype).repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N, L)
    C = C.to(dtype).repeat_interleave(dim // C.shape[1], dim=1)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A.to(dtype)))
    dBu = torch.einsum("bdl,bdnl,bdl->bdln", dt, B, u_c)
    h = u_c.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u_c * D.to(dtype)[:, None]
    return y.to(u.dtype)


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Pure-torch selective scan (same signature and result as ``selective_scan_ref``).

    Materialises the decays ``exp(dt*A)`` and inputs ``dt*B*u`` as ``(batch, dim[, N], L)``
    and solves all ``batch*dim*N`` recurrences at once with ``linear_scan``. Groups are
    broadcast through views, never repeated in memory; ``N == 1`` drops the state dim.
    """
    B, C = _check_shapes(u, delta, A, B, C)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    batch, dim, L = u.shape
    N = A.shape[1]
    u_c = u.to(dtype)
    dt = _dt(delta, delta_bias, delta_softplus, dtype)
    A = A.to(dtype)
    Gb, Gc = B.shape[1], C.shape[1]
    B, C = B.to(dtype), C.to(dtype)
    dtu = dt * u_c
    # Captured graphs (export, ONNX, tracing) get the fixed-structure scan: one graph, any L.
    scan = linear_scan_static if _graph_capture() else linear_scan
    if N == 1:
        # exp_ in place: exp's backward needs only its result, and the product is a temporary
        # (fewer fresh 25 MB buffers matter: page-faulting new memory costs as much as the op).
        dA = torch.mul(dt, A).exp_()  # A (dim, 1) broadcasts over (batch, dim, L)
        dBu = (dtu.reshape(batch, Gb, dim // Gb, L) * B).view(batch, dim, L)  # B (batch, G, 1, L)
        h = scan(dA, dBu)
        y = (h.view(batch, Gc, dim // Gc, L) * C).view(batch, dim, L)
    else:
        dA = torch.mul(dt.unsqueeze(2), A.unsqueeze(-1)).exp_()  # (batch, dim, N, L)
        dBu = (dtu.reshape(batch, Gb, dim // Gb, 1, L) * B.unsqueeze(2)).view(batch, dim, N, L)
        h = scan(dA, dBu)
        y = (h.view(batch, Gc, dim // Gc, N, L) * C.unsqueeze(2)).sum(3).view(batch, dim, L)
    if D is not None:
        # Out of place: y is a view, and in-place ops on views cost a full copy in backward.
        y = torch.addcmul(y, u_c, D.to(dtype)[:, None])
    return y.to(u.dtype)


class _FusedSelectiveScanCPU(torch.autograd.Function):
    """The C++ kernel's forward and backward (inputs contiguous, one dtype, fp32 or fp64)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):  # type: ignore[override]
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return cpu_kernel().fwd(u, delta, A, B, C, D, delta_bias, delta_softplus)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias = cpu_kernel().bwd(
            u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, gy.contiguous()
        )
        return du, ddelta, dA, dB, dC, dD if D is not None else None, dbias if delta_bias is not None else None, None


def selective_scan_fused_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The fused C++ CPU kernel (same signature and result as ``selective_scan_ref``).

    Computes in fp32 (fp64 for fp64 inputs); raises ``RuntimeError`` if the kernel is
    unavailable. Differentiable once (no double backward).
    """
    if cpu_kernel() is None:
        raise RuntimeError("the fused CPU selective-scan kernel is unavailable (see the warning when it was built)")
    B, C = _check_shapes(u, delta, A, B, C)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)

    def prep(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype).contiguous()

    y = _FusedSelectiveScanCPU.apply(
        prep(u), prep(delta), prep(A), prep(B), prep(C), prep(D), prep(delta_bias), bool(delta_softplus)
    )
    return y.to(u.dtype)


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Fastest exact CPU path: the fused kernel for eager CPU tensors when it is built,
    ``selective_scan_torch`` otherwise (other devices, tracing/export, kernel disabled)."""
    args = (u, delta, A, B, C, D, delta_bias, delta_softplus)
    if u.device.type == "cpu" and not _graph_capture() and cpu_kernel() is not None:
        return selective_scan_fused_cpu(*args)
    return selective_scan_torch(*args)


@functools.cache
def _cuda_selective_scan_fn() -> Callable[..., Tensor] | None:
    """mamba-ssm's fused CUDA kernel, or ``None`` (warned once) when it cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as exc:  # missing, or built without/against another CUDA
        warnings.warn(
            f"mamba-ssm's CUDA selective scan is unavailable ({exc}); using the pure-torch "
            "selective_scan_torch on CUDA tensors (correct but slower). Install the 'gpu' extra.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return selective_scan_fn


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Selective scan dispatched on the device of ``u`` (see module docstring for shapes).

    CUDA tensors go to mamba-ssm's ``selective_scan_fn`` if it imports (else to
    ``selective_scan_torch``); anything else to ``selective_scan_cpu``. Output is in
    ``u.dtype``.
    """
    if u.is_cuda:
        fn = _cuda_selective_scan_fn()
        if fn is not None:
            B, C = _check_shapes(u, delta, A, B, C)
            return fn(
                u,
                delta,
                A.float(),
                B.contiguous(),
                C.contiguous(),
                D=None if D is None else D.float(),
                delta_bias=None if delta_bias is None else delta_bias.float(),
                delta_softplus=delta_softplus,
            )
        return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return selective_scan_cpu(u, delta, A, B, C, D, delta_bias, delta_softplus)
