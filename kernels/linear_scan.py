"""Chunked first-order linear recurrence ``h_t = a_t * h_{t-1} + b_t`` on CPU (and any device).

A Python loop over ``L`` time steps costs ``L`` tiny ops, hopeless for ``L`` in the
hundreds of thousands. Here ``L`` is split into ``T`` chunks of ``K ~ sqrt(L)`` positions
and stored as a ``(K, M, T)`` buffer (``M`` = all leading dims flattened), so that the
``k``-th position of every chunk of every channel is one contiguous slice. Then
("reduce, then scan"):

1. reduce: a loop over ``K`` positions gives each chunk's end state from a zero start,
   and one ``prod`` gives each chunk's total decay;
2. the ``T`` chunk carries are themselves a linear recurrence of length ``T``: solved by
   calling the same routine recursively;
3. scan: a second loop over ``K`` positions replays each chunk starting from its carry,
   writing the output in place.

So about ``2 * sqrt(L)`` large ops instead of ``L`` tiny ones, and every position is
computed by the same multiply-add chain as the sequential loop (no ``exp(cumsum(log a))``),
so it is exact for any ``a`` (negative, zero, or ``|a| > 1``).

The backward pass is the same recurrence run backwards in time (see ``_LinearScanFn``).
``linear_scan_ref`` is the sequential loop it is tested against.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["linear_scan", "linear_scan_ref", "linear_scan_static", "promote_to_compute_dtype", "STATIC_MAX_LEN"]

# Below this length the chunked form has more Python-level ops than the plain loop.
_SEQUENTIAL_MAX_LEN = 24


@contextlib.contextmanager
def _single_threaded(device: torch.device) -> Iterator[None]:
    """Run the step loops' CPU ops on one intra-op thread.

    Each step is a mid-sized op (~1e5 elements), so intra-op threading buys little there,
    but every parallel op ends in a barrier: with the cores shared (data-loader workers,
    another job) a descheduled worker thread stalls each of the ~2*sqrt(L) steps for a
    scheduler tick, which made the scan ~10x slower than single-threaded. Under torch's
    OpenMP backend the setting is per calling thread, so other threads are unaffected.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def linear_scan_ref(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Sequential reference: ``h_t = a_t * h_{t-1} + b_t`` along the last dim, ``h_{-1} = h0``."""
    a, b = torch.broadcast_tensors(a, b)
    h = torch.zeros_like(b[..., 0]) if h0 is None else h0.to(b.dtype).expand(b.shape[:-1])
    out = []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, dim=-1)


def promote_to_compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the scans compute in: at least fp32; float64 stays float64."""
    dt = torch.float32
    for d in dtypes:
        dt = torch.promote_types(dt, d)
    return dt


def _sequential_(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """In-place sequential scan of ``b`` (``(M, L)``); for short ``L`` only."""
    L = b.shape[-1]
    steps = range(L - 1, -1, -1) if reverse else range(L)
    prev = h0
    with _single_threaded(b.device):
        for t in steps:
            if prev is not None:
                b[:, t].addcmul_(a[:, t], prev)
            prev = b[:, t]
    return b


def _chunk_len(L: int) -> int:
    """Chunk length ``K ~ sqrt(L)``; a divisor of ``L`` near it if there is one (no padding)."""
    k0 = math.isqrt(L - 1) + 1  # ceil(sqrt(L))
    for dk in range(k0 // 2 + 1):
        for k in (k0 - dk, k0 + dk):
            if L % k == 0:
                return k
    return k0


def _to_chunks(x: Tensor, K: int, T: int, fill: float, dtype: torch.dtype) -> Tensor:
    """``(M, Lx)`` -> new ``(K, M, T)`` buffer with ``buf[k, m, t] = x[m, t*K + k]``.

    Positions ``>= Lx`` (up to ``T*K``) get ``fill``: ``a = 1, b = 0`` leaves the state
    unchanged, so padding never alters the real positions in either direction. The
    layout change is a single 2-D transpose ``(M*T, K) -> (K, M*T)``, which torch copies
    with a cache-blocked kernel (a general 3-D permute copy is ~4x slower here).
    """
    M, Lx = x.shape
    if Lx != T * K or x.dtype != dtype:
        padded = torch.empty(M, T * K, dtype=dtype, device=x.device)
        padded[:, :Lx] = x
        padded[:, Lx:] = fill
        x = padded
    # Always a fresh buffer (the scan works in place in it), never a view of the input.
    buf = torch.empty(K, M * T, dtype=dtype, device=x.device)
    buf.copy_(x.reshape(M * T, K).t())
    return buf.view(K, M, T)


def _from_chunks(buf: Tensor, L: int, spare: Tensor) -> Tensor:
    """Inverse of ``_to_chunks``: ``(K, M, T)`` -> contiguous ``(M, L)`` without the padding.

    ``spare`` is a dead ``(K, M, T)`` buffer whose storage receives the result when there is
    no padding to cut off (one large allocation fewer: fresh pages cost as much as the copy).
    """
    K, M, T = buf.shape
    out = spare.view(M * T, K) if L == T * K else torch.empty(M * T, K, dtype=buf.dtype, device=buf.device)
    out.copy_(buf.view(K, M * T).t())  # a 2-D transpose copy, like _to_chunks
    out = out.view(M, T * K)
    return out if L == T * K else out[:, :L].contiguous()


def _chunked_scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None,
    L: int,
    reverse: bool = False,
) -> Tensor:
    """Scan of ``(M, L)`` data; ``a`` may be shorter than ``L`` (missing tail = 1).

    Forward: ``h_t = a_t h_{t-1} + b_t``, ``h_{-1} = h0``. Reverse: ``h_t = a_t h_{t+1} + b_t``,
    ``h_L = h0``. Returns a fresh ``(M, L)`` tensor in the compute dtype of ``b``.
    """
    dtype = b.dtype
    M = b.shape[0]
    if L <= _SEQUENTIAL_MAX_LEN:
        a_full = a if a.shape[-1] == L else torch.cat([a, a.new_ones(M, L - a.shape[-1])], -1)
        return _sequential_(a_full.to(dtype), b.to(dtype, copy=True), h0, reverse)

    K = _chunk_len(L)
    T = -(-L // K)
    A = _to_chunks(a, K, T, 1.0, dtype)
    B = _to_chunks(b, K, T, 0.0, dtype)
    ks = range(K - 1, -1, -1) if reverse else range(K)
    first, rest = ks[0], ks[1:]

    # 1. Each chunk's state at its last position, starting from zero (size (M, T)).
    # Ping-pong buffers: addcmul with out= aliasing an input takes a much slower path.
    end, spare = B[first].clone(), torch.empty_like(B[first])
    with _single_threaded(b.device):
        for k in rest:
            torch.addcmul(B[k], A[k], end, out=spare)
            end, spare = spare, end
    decay = A.prod(dim=0)  # total decay across each chunk, (M, T)

    # 2. Carry into chunk t = state after chunk t-1 (in scan order), itself a scan of length T.
    carry = torch.empty(M, T, dtype=dtype, device=b.device)
    if reverse:
        if h0 is None:
            carry[:, -1] = 0
        else:
            carry[:, -1] = h0
        if T > 1:
            carry[:, :-1] = _chunked_scan(decay[:, 1:], end[:, 1:], h0, T - 1, reverse=True)
    else:
        if h0 is None:
            carry[:, 0] = 0
        else:
            carry[:, 0] = h0
        if T > 1:
            carry[:, 1:] = _chunked_scan(decay[:, :-1], end[:, :-1], h0, T - 1)

    # 3. Replay every chunk from its carry, in place in B.
    B[first].addcmul_(A[first], carry)
    prev = B[first]
    with _single_threaded(b.device):
        for k in rest:
            B[k].addcmul_(A[k], prev)
            prev = B[k]
    return _from_chunks(B, L, spare=A)  # A is dead now


class _LinearScanFn(torch.autograd.Function):
    """``h = scan(a, b, h0)`` with the analytic backward.

    With ``g_t = dL/db_t`` (the total derivative through the recurrence):
    ``g_t = dh_t + a_{t+1} g_{t+1}`` (a reverse scan), ``dL/da_t = g_t h_{t-1}``,
    ``dL/dh0 = a_0 g_0``. Only ``a``, ``h`` and ``h0`` are saved.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:  # type: ignore[override]
        shape, L = b.shape, b.shape[-1]
        dtype = promote_to_compute_dtype(a.dtype, b.dtype, *(() if h0 is None else (h0.dtype,)))
        a2, b2 = a.reshape(-1, L), b.reshape(-1, L)
        h0_2 = None if h0 is None else h0.reshape(-1).to(dtype)
        h = _chunked_scan(a2, b2, h0_2, L)
        ctx.save_for_backward(a2, h, h0_2)
        ctx.shape = shape
        ctx.dtypes = (a.dtype, b.dtype, None if h0 is None else h0.dtype)
        return h.view(shape).to(torch.promote_types(a.dtype, b.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, dh: Tensor):  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        a_dtype, b_dtype, h0_dtype = ctx.dtypes
        M, L = h.shape
        dh = dh.reshape(M, L).to(h.dtype)
        # g_t = a_{t+1} g_{t+1} + dh_t: reverse scan with a shifted left by one.
        g = _chunked_scan(a[:, 1:], dh, None, L, reverse=True)
        grad_a = grad_b = grad_h0 = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.empty_like(g)
            torch.mul(g[:, 1:], h[:, :-1], out=grad_a[:, 1:])
            if h0 is None:
                grad_a[:, 0] = 0
            else:
                torch.mul(g[:, 0], h0, out=grad_a[:, 0])
            grad_a = grad_a.view(ctx.shape).to(a_dtype)
        if ctx.needs_input_grad[2]:
            grad_h0 = (a[:, 0] * g[:, 0]).view(ctx.shape[:-1]).to(h0_dtype)
        if ctx.needs_input_grad[1]:
            grad_b = g.view(ctx.shape).to(b_dtype)
        return grad_a, grad_b, grad_h0


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """First-order linear recurrence along the last dim: ``h_t = a_t * h_{t-1} + b_t``.

    Args:
        a: decays, ``(..., L)``; any sign or magnitude.
        b: inputs, broadcastable with ``a``.
        h0: initial state ``h_{-1}``, broadcastable to ``(...)``; zero if ``None``.

    Returns:
        ``h``, ``(..., L)``, in the promoted dtype of ``a`` and ``b``. Computed in fp32
        at least (float64 stays float64). Differentiable in ``a``, ``b`` and ``h0``.
    """
    if a.shape[-1] != b.shape[-1] and 1 not in (a.shape[-1], b.shape[-1]):
        raise ValueError(f"a and b disagree in length: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise TypeError("linear_scan needs floating-point a and b")
    if a.shape != b.shape:
        a, b = torch.broadcast_tensors(a, b)
    if b.shape[-1] == 0:
        return b.to(torch.promote_types(a.dtype, b.dtype), copy=True)
    if h0 is not None:
        h0 = h0.expand(b.shape[:-1])
    return _LinearScanFn.apply(a, b, h0)


# linear_scan_static: fixed chunk length and a fixed number of doubling steps, so the
# op count never depends on L.
_STATIC_CHUNK = 16
_STATIC_DOUBLINGS = 20
STATIC_MAX_LEN = _STATIC_CHUNK * 2**_STATIC_DOUBLINGS  # 16.7M positions (~5.8 h of audio at DASS stage 1)


def linear_scan_static(a: Tensor, b: Tensor) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` along the last dim with a graph whose ops do not depend on ``L``.

    For graph capture (``torch.export``, ONNX with a dynamic time axis): ``linear_scan``
    picks its chunking from ``L``, which ties a captured graph to one length. Here every
    size is symbolic and no branch depends on it: the sequence is padded to whole chunks
    of 16, each chunk is scanned by 16 unrolled steps, and the chunk carries by 20
    doubling steps (Hillis-Steele: after step j every carry includes the 2^j chunks
    before it), built from shifts by constant amounts. One graph serves every ``L`` up
    to ``STATIC_MAX_LEN``. Forward only (inference); exact up to fp rounding (no logs or
    divisions), tested against ``linear_scan_ref``.
    """
    shape = torch.broadcast_shapes(a.shape, b.shape)
    dtype = promote_to_compute_dtype(a.dtype, b.dtype)
    L = shape[-1]
    a2 = a.to(dtype).expand(shape).reshape(-1, L)
    b2 = b.to(dtype).expand(shape).reshape(-1, L)
    M, K = a2.shape[0], _STATIC_CHUNK
    # At least two chunks and K+1..2K positions of padding, whatever L: a tracer then
    # never meets a size that might be 1 or 0 (it would specialise on either). Explicit
    # sizes, no -1 in reshapes (that makes it guard on divisibility).
    T = L // K + 2
    a3 = _append(a2, 1.0, T * K - L).reshape(M, T, K)  # a = 1, b = 0 leaves the state unchanged
    b3 = _append(b2, 0.0, T * K - L).reshape(M, T, K)
    hs, ps = [b3[..., 0]], [a3[..., 0]]
    for k in range(1, K):
        hs.append(a3[..., k] * hs[-1] + b3[..., k])  # state from a zero start at the chunk's begin
        ps.append(ps[-1] * a3[..., k])  # decay from the chunk's begin
    h, p = torch.stack(hs, -1), torch.stack(ps, -1)
    # Chunk ends from a zero start -> true chunk ends, by doubling over the chunk axis.
    end, decay = h[..., -1], p[..., -1]
    chunk = torch.arange(T, device=end.device)
    for j in range(_STATIC_DOUBLINGS):
        s = 1 << j
        end = decay * _shift(end, chunk, s, 0.0) + end
        decay = decay * _shift(decay, chunk, s, 1.0)
    carry = _shift(end, chunk, 1, 0.0)  # state entering each chunk
    h = h + p * carry.unsqueeze(-1)
    return h.reshape(M, T * K)[:, :L].reshape(shape).to(torch.promote_types(a.dtype, b.dtype))


def _append(x: Tensor, value: float, n) -> Tensor:
    """``x`` (M, L) with ``n`` columns of ``value`` appended (a concat: ONNX Runtime's Pad
    with a symbolic width is ~100x slower than Concat)."""
    return torch.cat([x, x.new_full((x.shape[0], n), value)], dim=-1)


def _shift(x: Tensor, index: Tensor, s: int, value: float) -> Tensor:
    """``x`` (M, T) moved ``s`` places right along the last dim, ``value`` filling in.

    A gather from clamped positions plus a mask: every tensor keeps the size ``(M, T)``,
    for any ``T`` (even ``T <= s``), so a tracer needs no guard and records no new
    symbolic size (serialised graphs with many distinct size expressions load slowly).
    ``index`` is ``arange(T)``.
    """
    shifted = x.index_select(-1, (index - s).clamp_min(0))
    return torch.where(index >= s, shifted, value)
