"""Audio Mamba students on a GPU: training-step time (forward + backward + Adam) of the same model
on each kernel path, in one run, plus the mixer's agreement between the paths.

    python benchmarks/bench_audio_mamba_gpu.py                     # aum_small, ssamba_small, dass_small
    python benchmarks/bench_audio_mamba_gpu.py --models aum_base --batch 8 --seconds 10 60

Paths, on the same weights and batch (bf16 autocast, parameters fp32, the scan's constants fp32):

- ``mamba-ssm``: what a CUDA tensor gets by default, mamba-ssm's ``selective_scan_fn`` and
  causal-conv1d's kernel (the originals' kernels). Skipped, with a note, when they do not import.
- ``torch``: the pure-torch chunked scan (``selective_scan_torch``) and ``F.conv1d``: what runs
  when the gpu extra is not installed.

Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps. The ratio column is
against the mamba-ssm path (the reference the issue names).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from rich.console import Console
from rich.table import Table


@contextlib.contextmanager
def torch_path():
    """Route every scan and conv of the students through the pure-torch code."""
    import dass_distill.kernels.causal_conv1d as cc
    import dass_distill.kernels.selective_scan as ss

    saved = (ss._cuda_selective_scan_fn, cc._cuda_causal_conv1d_fn)
    ss._cuda_selective_scan_fn = lambda: None
    cc._cuda_causal_conv1d_fn = lambda: None
    try:
        yield
    finally:
        ss._cuda_selective_scan_fn, cc._cuda_causal_conv1d_fn = saved


def kernels_available() -> str | None:
    """None when mamba-ssm and causal-conv1d import, else why not."""
    try:
        import causal_conv1d  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except (ImportError, OSError) as e:
        return str(e)
    return None


def step_time(model: torch.nn.Module, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """Median seconds per training step and peak GiB."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = torch.rand(x.shape[0], model.config.num_classes, device=x.device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (kernel compilation, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["aum_small", "ssamba_small", "dass_small"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")

    from dass_distill.students import create_model
    from dass_distill.students.bimamba import BiMamba

    console = Console()
    why = kernels_available()
    if why:
        console.print(f"[yellow]mamba-ssm / causal-conv1d unavailable ({why}): the torch path only")
    dev = torch.device("cuda")

    # The mixer on both paths, fp32: the same output up to rounding.
    torch.manual_seed(0)
    mixer = BiMamba(384, variant="bi-bi").to(dev)
    h = torch.randn(2, 513, 384, device=dev)
    with torch.no_grad(), torch_path():
        ref = mixer(h)
    if not why:
        with torch.no_grad():
            err = ((mixer(h) - ref).abs().max() / ref.abs().max()).item()
        console.print(f"Bi-Bi mixer, mamba-ssm path vs torch path (fp32, L = 513): max rel. difference {err:.1e}")

    table = Table(title=f"training step on {torch.cuda.get_device_name()}, batch {args.batch}, bf16 autocast "
                        f"(median of {args.steps})")
    for col in ("model", "audio", "path", "step (ms)", "clips/s", "peak GiB", "vs mamba-ssm"):
        table.add_column(col, justify="left" if col in ("model", "path") else "right")
    for name in args.models:
        for seconds in args.seconds:
            frames = int(seconds * 100)
            torch.manual_seed(0)
            model = create_model(name, num_classes=527, target_length=frames).to(dev).train()
            x = torch.randn(args.batch, frames, 128, device=dev)
            results = {}
            if not why:
                results["mamba-ssm"] = step_time(model, x, args.steps)
            with torch_path():
                results["torch"] = step_time(model, x, args.steps)
            base = results.get("mamba-ssm", (None,))[0]
            for path, (t, mem) in results.items():
                ratio = f"{t / base:.2f}x" if base else "-"
                table.add_row(name, f"{seconds:g} s", path, f"{t * 1e3:.1f}", f"{args.batch / t:.0f}",
                              f"{mem:.1f}", ratio)
            del model, x
            torch.cuda.empty_cache()
    console.print(table)


if __name__ == "__main__":
    main()
