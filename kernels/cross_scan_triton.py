"""Cross-scan / cross-merge as Triton kernels (reference: ``cross_scan.cross_scan_ref``).

Same maths as the reference: ``cross_scan`` reads a feature map once and writes it in the
four scan orders (row-major, column-major, both reversed); ``cross_merge`` reads the four
sequences and writes their sum at the row-major positions. Each is the other's adjoint and
hence the other's backward (``CrossScanTriton`` / ``CrossMergeTriton``); the backward goes
through the other Function, so double backward works too.

Layouts (``L = H * W``; positions are always numbered row-major, ``l = h * W + w``):

==================  =========================  ======================  ====================
``channels_last``   ``cross_scan`` input       scan output / merge in  ``cross_merge`` out
==================  =========================  ======================  ====================
``False``           ``(B, C, H, W)``           ``(B, 4, C, L)``        ``(B, C, L)``
``True``            ``(B, H, W, C)``           ``(B, 4, C, L)``        ``(B, L, C)``
==================  =========================  ======================  ====================

The sequences stay ``(B, 4, C, L)`` in both cases because that is what the selective scan
consumes (mamba-ssm's ``(batch, dim, L)``); the merge returns the map in the layout the
scan took, flattened over ``(H, W)``, so that scan and merge stay exact adjoints. With
``channels_last=True`` the results equal the reference applied to ``x.permute(0, 3, 1, 2)``.

Kernel design:

- One program copies a ``BLOCK_C x BLOCK_H x BLOCK_W`` tile of the map; ``C``, ``H`` and
  ``W`` are runtime arguments, so a new length never compiles a new kernel (Triton only
  specialises integers on ``== 1`` and ``% 16 == 0``, a bounded set of variants). Tails
  are masked. The grid is 1-D (no 65535 limit on the batch or channel tiles).
- The map is read once and the sequences written once (merge: read 4x, write once), the
  minimum traffic. The column-major directions are stored from the tile permuted to
  ``(c, w, h)``: Triton gives the fastest thread axis to the most contiguous pointer
  axis, ties going to the last axis. The reversed orders have no provable contiguity, so
  the permutation makes ``h`` the last axis and keeps those stores coalesced. (Checked
  on sm_90 PTX: loads and forward-order stores are 128-bit vectors; reversed-order
  accesses are scalar but warp-coalesced. ``tl.flip`` of the tile would vectorise them
  too, at the cost of shuffles: the lever to try if the benchmark falls short.)
- Block sizes are fixed by a rule, not autotuned (autotuning with several configs fails
  under ``TRITON_INTERPRET=1``, and tuning per length would compile per length): about
  4096 elements per program, spatial blocks capped at the map's size rounded up to a
  power of two, and the spare room given to channels. Past a small size the blocks stop
  changing (``H, W > 16``, e.g. DASS stage 1 at any clip length), so longer audio reuses
  the compiled kernel. See ``block_sizes``.
- The merge sums in fp32 and stores in the input dtype; fp32, fp16 and bf16 are supported.
- Launches run under ``torch.cuda.device(tensor.device)``: Triton launches on the
  *current* device, which is not the tensor's on multi-GPU machines.

On a CPU tensor the kernels run only under the Triton interpreter (``TRITON_INTERPRET=1``
set before ``triton`` is imported); the public functions here launch on whatever device
the tensor is on. ``cross_scan`` / ``cross_merge`` in ``cross_scan.py`` are the
dispatchers that pick this module for CUDA tensors only.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "BlockSizes",
    "CrossMergeTriton",
    "CrossScanTriton",
    "block_sizes",
    "cross_merge_triton",
    "cross_scan_triton",
    "launch_cross_merge",
    "launch_cross_scan",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NUM_DIRECTIONS = 4
# Elements of the map per program: enough bytes in flight per SM for a copy kernel while
# the permuted tile (16 KiB in fp32) still fits shared memory comfortably.
_TILE_ELEMENTS = 4096
_NUM_WARPS = 8


@triton.jit
def _tile_indices(pid, C, H, W, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Batch index and the tile's first channel / row / column for a 1-D program id."""
    n_w = tl.cdiv(W, BLOCK_W)
    n_h = tl.cdiv(H, BLOCK_H)
    n_c = tl.cdiv(C, BLOCK_C)
    # w fastest: neighbouring programs touch neighbouring memory.
    pid_w = pid % n_w
    rest = pid // n_w
    pid_h = rest % n_h
    rest = rest // n_h
    pid_c = rest % n_c
    pid_b = rest // n_c
    return pid_b, pid_c * BLOCK_C, pid_h * BLOCK_H, pid_w * BLOCK_W


@triton.jit
def _cross_scan_kernel(
    x_ptr,
    y_ptr,
    C,
    H,
    W,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """x ``(B, C, H, W)`` or ``(B, H, W, C)`` -> y ``(B, 4, C, H*W)``; one tile per program."""
    pid_b, c0, h0, w0 = _tile_indices(tl.program_id(0), C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    L = H * W
    # (c, h, w) arrangement: rows of the map along the last axis.
    c = c0 + tl.arange(0, BLOCK_C)[:, None, None]
    h = h0 + tl.arange(0, BLOCK_H)[None, :, None]
    w = w0 + tl.arange(0, BLOCK_W)[None, None, :]
    mask = (c < C) & (h < H) & (w < W)
    # (c, w, h) arrangement for the column-major directions: columns along the last axis.
    h_t = h0 + tl.arange(0, BLOCK_H)[None, None, :]
    w_t = w0 + tl.arange(0, BLOCK_W)[None, :, None]
    mask_t = (c < C) & (h_t < H) & (w_t < W)

    # Batch/direction bases in int64 (B * 4 * C * L may pass 2**31); in-slab offsets are
    # int32, the wrapper checks C * L < 2**31.
    b = pid_b.to(tl.int64)
    if CHANNELS_LAST:
        x_offs = (h * W + w) * C + c
    else:
        x_offs = c * L + h * W + w
    tile = tl.load(x_ptr + b * C * L + x_offs, mask=mask)
    tile_t = tl.permute(tile, (0, 2, 1))

    row = c * L + h * W + w
    row_rev = c * L + (L - 1 - h * W - w)
    col = c * L + w_t * H + h_t
    col_rev = c * L + (L - 1 - w_t * H - h_t)
    tl.store(y_ptr + (b * 4 + 0) * C * L + row, tile, mask=mask)
    tl.store(y_ptr + (b * 4 + 1) * C * L + col, tile_t, mask=mask_t)
    tl.store(y_ptr + (b * 4 + 2) * C * L + row_rev, tile, mask=mask)
    tl.store(y_ptr + (b * 4 + 3) * C * L + col_rev, tile_t, mask=mask_t)


@triton.jit
def _cross_merge_kernel(
    y_ptr,
    out_ptr,
    C,
    H,
    W,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """y ``(B, 4, C, H*W)`` -> out ``(B, C, H*W)`` or ``(B, H*W, C)``, summed in fp32."""
    pid_b, c0, h0, w0 = _tile_indices(tl.program_id(0), C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)
    L = H * W
    c = c0 + tl.arange(0, BLOCK_C)[:, None, None]
    h = h0 + tl.arange(0, BLOCK_H)[None, :, None]
    w = w0 + tl.arange(0, BLOCK_W)[None, None, :]
    mask = (c < C) & (h < H) & (w < W)
    h_t = h0 + tl.arange(0, BLOCK_H)[None, None, :]
    w_t = w0 + tl.arange(0, BLOCK_W)[None, :, None]
    mask_t = (c < C) & (h_t < H) & (w_t < W)

    b = pid_b.to(tl.int64)
    row = c * L + h * W + w
    row_rev = c * L + (L - 1 - h * W - w)
    col = c * L + w_t * H + h_t
    col_rev = c * L + (L - 1 - w_t * H - h_t)
    # Same association as the reference: (y0 + y2) + (y1 + y3).
    rows = tl.load(y_ptr + (b * 4 + 0) * C * L + row, mask=mask).to(tl.float32)
    rows += tl.load(y_ptr + (b * 4 + 2) * C * L + row_rev, mask=mask).to(tl.float32)
    cols = tl.load(y_ptr + (b * 4 + 1) * C * L + col, mask=mask_t).to(tl.float32)
    cols += tl.load(y_ptr + (b * 4 + 3) * C * L + col_rev, mask=mask_t).to(tl.float32)
    acc = rows + tl.permute(cols, (0, 2, 1))

    if CHANNELS_LAST:
        out_offs = (h * W + w) * C + c
    else:
        out_offs = c * L + h * W + w
    tl.store(out_ptr + b * C * L + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


class BlockSizes(NamedTuple):
    """Compile-time tile of one program (powers of two)."""

    BLOCK_C: int
    BLOCK_H: int
    BLOCK_W: int


def block_sizes(C: int, H: int, W: int, channels_last: bool) -> BlockSizes:
    """The tile for a ``(C, H, W)`` map: ~4096 elements, contiguous axes first.

    Channel-first maps are contiguous along ``w`` (reads, row-major writes) and ``h``
    (column-major writes): a 32 x 32 spatial tile keeps every access >= 128 B wide in
    fp32; small maps shrink it to their size and the room goes to channels. Channel-last
    maps are contiguous along ``c`` in the map and along positions in the sequences, so
    the tile is 16 x 16 x 16 (every run >= 32 B, one memory sector, even in bf16).
    ``H`` and ``W`` enter only through ``min(next_pow2(H), cap)`` and
    ``min(next_pow2(W), cap')``: a handful of variants per layout and dtype, each compiled
    once; for a given ``C``, all maps with ``H, W > 16`` (or 1-D maps longer than 1024)
    share one.
    """
    p2 = triton.next_power_of_2
    if channels_last:
        block_c = min(p2(C), 16)
        block_h = min(p2(H), 16)
        block_w = min(p2(W), _TILE_ELEMENTS // (block_c * block_h))
    else:
        block_h = min(p2(H), 32)
        block_w = min(p2(W), 1024 // block_h)
        block_c = min(p2(C), _TILE_ELEMENTS // (block_h * block_w))
    return BlockSizes(block_c, block_h, block_w)


def _device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    # Triton launches on the current CUDA device; CPU tensors only occur under the interpreter.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _grid_and_blocks(
    B: int, C: int, H: int, W: int, channels_last: bool, blocks: BlockSizes | None
) -> tuple[tuple[int], BlockSizes]:
    if C * H * W >= 2**31:
        raise ValueError(f"cross-scan kernels need C*H*W < 2**31 per batch element, got {C}*{H}*{W}")
    if blocks is None:
        blocks = block_sizes(C, H, W, channels_last)
    elif any(b < 1 or b & (b - 1) for b in blocks):
        raise ValueError(f"block sizes must be powers of two, got {blocks}")
    cdiv = triton.cdiv
    n = B * cdiv(C, blocks.BLOCK_C) * cdiv(H, blocks.BLOCK_H) * cdiv(W, blocks.BLOCK_W)
    return (n,), blocks


def _check_dtype(t: Tensor, op: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op} supports float32, float16 and bfloat16, got {t.dtype}")


def launch_cross_scan(
    x: Tensor, out: Tensor, channels_last: bool = False, blocks: BlockSizes | None = None
) -> Tensor:
    """Runs the scan kernel into ``out`` (contiguous ``(B, 4, C, H*W)``); no autograd.

    ``x`` is contiguous ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``channels_last``. Works
    on any device Triton can launch on (CPU tensors need ``TRITON_INTERPRET=1``).
    ``blocks`` overrides ``block_sizes`` (tests use small tiles to get many programs).
    """
    _check_dtype(x, "cross_scan_triton")
    if x.dim() != 4 or not x.is_contiguous():
        raise ValueError(f"expected a contiguous 4-D map, got shape {list(x.shape)}")
    if channels_last:
        B, H, W, C = x.shape
    else:
        B, C, H, W = x.shape
    if out.shape != (B, _NUM_DIRECTIONS, C, H * W) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {(B, 4, C, H * W)} {x.dtype}, got {list(out.shape)} {out.dtype}")
    if x.numel() == 0:
        return out
    grid, blocks = _grid_and_blocks(B, C, H, W, channels_last, blocks)
    with _device_guard(x):
        _cross_scan_kernel[grid](x, out, C, H, W, CHANNELS_LAST=channels_last, **blocks._asdict(), num_warps=_NUM_WARPS)
    return out


def launch_cross_merge(
    y: Tensor, out: Tensor, H: int, W: int, channels_last: bool = False, blocks: BlockSizes | None = None
) -> Tensor:
    """Runs the merge kernel into ``out``; no autograd.

    ``y`` is contiguous ``(B, 4, C, H*W)``; ``out`` contiguous ``(B, C, H*W)``, or
    ``(B, H*W, C)`` with ``channels_last``. ``blocks`` as in ``launch_cross_scan``.
    """
    _check_dtype(y, "cross_merge_triton")
    if y.dim() != 4 or y.shape[1] != _NUM_DIRECTIONS or y.shape[-1] != H * W or not y.is_contiguous():
        raise ValueError(f"expected contiguous (B, 4, C, {H}*{W}), got shape {list(y.shape)}")
    B, _, C, L = y.shape
    expected = (B, L, C) if channels_last else (B, C, L)
    if out.shape != expected or out.dtype != y.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {expected} {y.dtype}, got {list(out.shape)} {out.dtype}")
    if y.numel() == 0:
        return out
    grid, blocks = _grid_and_blocks(B, C, H, W, channels_last, blocks)
    with _device_guard(y):
        _cross_merge_kernel[grid](y, out, C, H, W, CHANNELS_LAST=channels_last, **blocks._asdict(), num_warps=_NUM_WARPS)
    return out


def _scan(x: Tensor, channels_last: bool) -> Tensor:
    x = x.contiguous()
    B, C = x.shape[0], x.shape[3 if channels_last else 1]
    out = x.new_empty(B, _NUM_DIRECTIONS, C, x.shape[1] * x.shape[2] if channels_last else x.shape[2] * x.shape[3])
    return launch_cross_scan(x, out, channels_last)


def _merge(y: Tensor, H: int, W: int, channels_last: bool) -> Tensor:
    y = y.contiguous()
    B, _, C, L = y.shape
    out = y.new_empty((B, L, C) if channels_last else (B, C, L))
    return launch_cross_merge(y, out, H, W, channels_last)


class CrossScanTriton(torch.autograd.Function):
    """``cross_scan`` with the Triton kernel; backward is ``CrossMergeTriton``."""

    @staticmethod
    def forward(ctx, x: Tensor, channels_last: bool = False) -> Tensor:
        ctx.map_shape = x.shape
        ctx.channels_last = channels_last
        return _scan(x, channels_last)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, None]:
        H, W = ctx.map_shape[1:3] if ctx.channels_last else ctx.map_shape[2:4]
        grad_x = CrossMergeTriton.apply(grad_y, H, W, ctx.channels_last)
        return grad_x.view(ctx.map_shape), None


class CrossMergeTriton(torch.autograd.Function):
    """``cross_merge`` with the Triton kernel; backward is ``CrossScanTriton``."""

    @staticmethod
    def forward(ctx, y: Tensor, H: int, W: int, channels_last: bool = False) -> Tensor:
        if y.dim() != 4 or y.shape[1] != _NUM_DIRECTIONS or y.shape[-1] != H * W:
            raise ValueError(f"cross_merge expects (B, 4, C, {H}*{W}), got shape {list(y.shape)}")
        ctx.hw = (H, W)
        ctx.channels_last = channels_last
        return _merge(y, H, W, channels_last)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        H, W = ctx.hw
        B = grad_out.shape[0]
        if ctx.channels_last:
            grad_map = grad_out.reshape(B, H, W, grad_out.shape[2])
        else:
            grad_map = grad_out.reshape(B, grad_out.shape[1], H, W)
        return CrossScanTriton.apply(grad_map, ctx.channels_last), None, None, None


def cross_scan_triton(x: Tensor, channels_last: bool = False) -> Tensor:
    """``(B, C, H, W)`` (or ``(B, H, W, C)`` with ``channels_last``) -> ``(B, 4, C, H*W)``."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects a 4-D map, got shape {list(x.shape)}")
    return CrossScanTriton.apply(x, channels_last)


def cross_merge_triton(y: Tensor, H: int, W: int, channels_last: bool = False) -> Tensor:
    """``(B, 4, C, H*W)`` -> ``(B, C, H*W)`` (or ``(B, H*W, C)`` with ``channels_last``)."""
    return CrossMergeTriton.apply(y, H, W, channels_last)
