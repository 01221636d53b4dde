"""CPU benchmark: the fused selective-scan kernel and the pure-torch path against the
sequential reference.

Default shapes are DASS stage 1 for a 10 s clip: batch 2, dim 4*96 = 384 (four scan
directions of 96 channels, G = 4 groups), L = 64*128 = 8192 positions, d_state N = 1,
softplus(delta + bias). All paths are timed in one run (these machines are noisy:
compare the ratios, not the absolute times); errors are against the reference computed
in float64.

    python benchmarks/bench_selective_scan.py [--repeats 5] [--threads 2]

Issue 7's target: the CPU forward at least 30x the sequential reference, within 1e-5
relative. Results and the command's date: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from dass_distill.kernels import linear_scan, selective_scan_fused_cpu, selective_scan_ref, selective_scan_torch
from dass_distill.kernels.cpu_extension import cpu_kernel
from dass_distill.kernels.linear_scan import linear_scan_ref


def _time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (scale-free, sensitive to the worst position)."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _inputs(batch: int, dim: int, L: int, N: int, G: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    # dt_bias as in DASS/VMamba init: softplus^-1 of dt ~ logUniform[1e-3, 1e-1].
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=torch.randn(batch, dim, L, generator=g),
        delta=torch.randn(batch, dim, L, generator=g) * 0.5,
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1),  # -exp(A_logs = log(1..N))
        B=torch.randn(batch, G, N, L, generator=g),
        C=torch.randn(batch, G, N, L, generator=g),
        D=torch.ones(dim),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
        delta_softplus=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the fast path (median)")
    parser.add_argument("--ref-repeats", type=int, default=1, help="timed repeats of the slow reference")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=4 * 96)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--d-state", type=int, default=1)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--scan-length", type=int, default=500_000, help="L of the extra linear_scan rows (0: skip them)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kw = _inputs(args.batch, args.dim, args.length, args.d_state, args.groups)
    if cpu_kernel() is None:
        raise SystemExit("the fused CPU kernel did not build (see the warning above); nothing to compare")
    rows: list[tuple[str, float, str, str]] = []

    with torch.no_grad():
        ref64 = selective_scan_ref(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
        t_ref = _time(lambda: selective_scan_ref(**kw), args.ref_repeats, warmup=0)
    rows.append(("selective_scan_ref    fwd (sequential loop over time)", t_ref, "1.0x", "-"))
    grad_out = torch.randn_like(ref64).float()
    for name, fn in (("selective_scan_fused_cpu", selective_scan_fused_cpu), ("selective_scan_torch", selective_scan_torch)):
        with torch.no_grad():
            err = _max_rel_err(fn(**kw), ref64)
            t_fwd = _time(lambda: fn(**kw), args.repeats)
        rows.append((f"{name}  fwd", t_fwd, f"{t_ref / t_fwd:.1f}x", f"{err:.1e}"))
        leaves = {k: v.clone().requires_grad_() for k, v in kw.items() if isinstance(v, torch.Tensor)}

        def fwd_bwd() -> None:
            for v in leaves.values():
                v.grad = None
            fn(**{**kw, **leaves}).backward(grad_out)

        t_fb = _time(fwd_bwd, args.repeats)
        rows.append((f"{name}  fwd+bwd", t_fb, f"{t_ref / t_fb:.1f}x", "-"))

    if args.scan_length:
        # Few channels, very long sequence: the case a per-step Python loop cannot handle.
        a = torch.rand(4, args.scan_length) * 0.01 + 0.99
        b = torch.randn(4, args.scan_length)
        with torch.no_grad():
            t_ls_ref = _time(lambda: linear_scan_ref(a, b), 1, warmup=0)
            t_ls = _time(lambda: linear_scan(a, b), args.repeats)
            ls_err = _max_rel_err(linear_scan(a, b), linear_scan_ref(a.double(), b.double()))
        rows.append((f"linear_scan_ref  (4, {args.scan_length})", t_ls_ref, "1.0x", "-"))
        ratio = f"{t_ls_ref / t_ls:.1f}x"
        rows.append((f"linear_scan      (4, {args.scan_length})", t_ls, ratio, f"{ls_err:.1e}"))

    title = (
        f"selective scan, CPU, {torch.get_num_threads()} threads: batch {args.batch}, dim {args.dim}, "
        f"L {args.length}, N {args.d_state}, G {args.groups}; "
        f"median of {args.repeats} (reference: {args.ref_repeats})"
    )
    _print_table(title, rows)


def _print_table(title: str, rows: list[tuple[str, float, str, str]]) -> None:
    header = ("path", "time (ms)", "speed-up", "max rel. err")
    cells = [(name, f"{t * 1e3:.1f}", ratio, err) for name, t, ratio, err in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        widths = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
        for r in [header, *cells]:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        return
    table = Table(title=title)
    table.add_column(header[0])
    for h in header[1:]:
        table.add_column(h, justify="right")
    for r in cells:
        table.add_row(*r)
    Console().print(table)


if __name__ == "__main__":
    main()
