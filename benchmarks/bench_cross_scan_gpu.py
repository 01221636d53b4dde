"""GPU benchmark: Triton cross-scan / cross-merge bandwidth against a device copy.

Cross-scan and cross-merge are pure data movement, so the yardstick is a device-to-device
copy (``torch.clone``) of a large tensor: its bytes read + written per second are what
the GPU can move. Each kernel's achieved bandwidth counts the minimum traffic (scan: the
map read once, four sequences written once; merge: four sequences read once, the map
written once) and is reported as a fraction of the copy's (target >= 80%), with the
speed-up over the torch reference (``cross_scan_ref`` / ``cross_merge_ref``) measured in
the same run. Times are medians of ``triton.testing.do_bench`` (which flushes L2 between
runs). Default shapes are DASS stage 1 for a batch of 32 clips of 10 s: B=32, C=96,
H=32 (128 mel / 4), W=256 (1024 frames / 4).

    python benchmarks/bench_cross_scan_gpu.py [--batch 32 --dim 96 --height 32 --width 256]
        [--dtypes float32 bfloat16] [--blocks C,H,W]

The backward of each op is the other kernel, so these two rows also time the backward.
Needs a CUDA GPU; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TARGET = 0.80


def _bench_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--blocks", help="override the tile as BLOCK_C,BLOCK_H,BLOCK_W (powers of two)")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print(
            "bench_cross_scan_gpu: no CUDA device available; this benchmark needs an NVIDIA GPU "
            "(the CPU path is the torch reference, see tests/kernels for the kernels' correctness).",
            file=sys.stderr,
        )
        return 2

    import triton

    from dass_distill.kernels import cross_merge_ref, cross_scan_ref
    from dass_distill.kernels.cross_scan_triton import (
        BlockSizes,
        block_sizes,
        launch_cross_merge,
        launch_cross_scan,
    )

    B, C, H, W = args.batch, args.dim, args.height, args.width
    L = H * W
    blocks = BlockSizes(*map(int, args.blocks.split(","))) if args.blocks else None
    device = torch.device("cuda")
    torch.manual_seed(0)
    print(
        f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}, triton {triton.__version__}; "
        f"B={B} C={C} H={H} W={W}"
    )
    for cl in (False, True):
        print(f"  blocks ({'channels-last' if cl else 'channel-first'}): {blocks or block_sizes(C, H, W, cl)}")

    header = (
        f"{'op':<14}{'layout':<8}{'dtype':<10}{'time ms':>9}{'GB/s':>9}{'of copy':>9}{'vs torch':>10}{'rel err':>10}"
    )
    rows = [header, "-" * len(header)]
    shortfalls = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        es = torch.empty((), dtype=dtype).element_size()
        map_bytes = B * C * L * es
        # Copy yardstick: a tensor the size of the sequences (the largest buffer here).
        big = torch.randn(B, 4, C, L, device=device).to(dtype)
        copy_ms = _bench_ms(lambda big=big: big.clone())
        copy_gbs = 2 * big.numel() * es / copy_ms / 1e6
        rows.append(f"{'copy (clone)':<14}{'':<8}{dtype_name:<10}{copy_ms:>9.3f}{copy_gbs:>9.0f}{'100%':>9}")
        del big

        for cl, layout in ((False, "cf"), (True, "cl")):
            x_cf = torch.randn(B, C, H, W, device=device).to(dtype)
            x = x_cf.permute(0, 2, 3, 1).contiguous() if cl else x_cf
            y = torch.empty(B, 4, C, L, device=device, dtype=dtype)
            merged = torch.empty((B, L, C) if cl else (B, C, L), device=device, dtype=dtype)

            def scan(x=x, y=y, cl=cl) -> None:
                launch_cross_scan(x, y, cl, blocks)

            def merge(y=y, merged=merged, cl=cl) -> None:
                launch_cross_merge(y, merged, H, W, cl, blocks)

            # The reference on the same memory: channel-last input is a permuted view; the
            # merged map is written in the kernel's layout, as a fair comparison needs.
            def scan_ref(x=x, cl=cl) -> torch.Tensor:
                return cross_scan_ref(x.permute(0, 3, 1, 2) if cl else x)

            def merge_ref(y=y, cl=cl) -> torch.Tensor:
                out = cross_merge_ref(y, H, W)
                return out.transpose(1, 2).contiguous() if cl else out

            scan()
            scan_err = _rel_err(y, cross_scan_ref(x_cf.double()))
            y.normal_()  # random sequences: merging the scan's own output would sum 4 equal copies
            merge()
            merge_err = _rel_err(merged, merge_ref(y.double(), cl))
            cases = (("cross_scan", scan, scan_ref, scan_err), ("cross_merge", merge, merge_ref, merge_err))
            for name, fn, ref_fn, err in cases:
                ms = _bench_ms(fn)
                ref_ms = _bench_ms(ref_fn)
                gbs = 5 * map_bytes / ms / 1e6
                frac = gbs / copy_gbs
                if frac < TARGET:
                    shortfalls.append(f"{name} {layout} {dtype_name}")
                rows.append(
                    f"{name:<14}{layout:<8}{dtype_name:<10}{ms:>9.3f}{gbs:>9.0f}{frac:>9.0%}"
                    f"{ref_ms / ms:>9.1f}x{err:>10.1e}"
                )
            del x_cf, x, y, merged
            torch.cuda.empty_cache()

    print("\n".join(rows))
    print(f"target: >= {TARGET:.0%} of copy bandwidth; below it: {', '.join(shortfalls) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
