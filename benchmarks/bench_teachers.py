"""Teacher inference speed: clips per second per teacher, against the FLOP-count limit
measured on the same device in the same run.

    python benchmarks/bench_teachers.py                       # CPU, batch 2
    python benchmarks/bench_teachers.py --device cuda --batch 64

Each teacher is built at its released size with random weights (AST-base stride 10,
HTS-AT Swin-T, SSLAM ViT-B) and runs ``Teacher.logits`` on a batch of 10 s waveforms:
front end on the device, model body in bf16 autocast on CUDA, fp32 on CPU. FLOPs per
clip are counted with ``torch.utils.flop_counter`` (matmuls and convolutions). The
limit is the device's dense matmul rate measured here (fp32 on CPU, bf16 on CUDA,
4096^3 GEMMs), so "of limit" is the fraction of the machine's practical peak the
teacher reaches: a compute-bound ceiling, not a promise.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, seconds: float = 2.0) -> float:
    """Dense GEMM FLOP/s on ``device``: the reference ceiling."""
    n = 4096 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if reps % 8 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def build(kind: str):
    from dass_distill.teachers import ASTTeacher, ast_config
    from dass_distill.teachers.htsat import HTSATConfig, HTSATTeacher
    from dass_distill.teachers.sslam import SSLAMConfig, SSLAMTeacher

    if kind == "ast":
        return ASTTeacher.from_config(ast_config("ast_base", 527), name="ast")
    if kind == "htsat":
        return HTSATTeacher.from_config(HTSATConfig(), name="htsat")
    return SSLAMTeacher.from_config(SSLAMConfig(), name="sslam")


def measure(kind: str, device: torch.device, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    teacher = build(kind).to(device).eval()
    waves = [torch.randn(10 * teacher.sample_rate, device=device) * 0.1 for _ in range(batch)]
    with FlopCounterMode(display=False) as counter:
        teacher.logits(waves[:1])
    flops = counter.get_total_flops()
    teacher.logits(waves)  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        teacher.logits(waves)
        sync(device)
        times.append(time.perf_counter() - start)
    t = sorted(times)[len(times) // 2]
    params = sum(p.numel() for p in teacher.parameters())
    return {"clips_s": batch / t, "flops": flops, "params": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="clips per call (default 2 on CPU, 64 on CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teachers", nargs="+", default=["ast", "htsat", "sslam"])
    args = ap.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = matmul_rate(device)
    table = Table(title=f"teachers on {name}, batch {batch} x 10 s "
                        f"(dense matmul here: {peak / 1e12:.2f} TFLOP/s {'bf16' if device.type == 'cuda' else 'fp32'})")
    for col in ("teacher", "params (M)", "GFLOP/clip", "clips/s", "limit clips/s", "of limit"):
        table.add_column(col, justify="right" if col != "teacher" else "left")
    for kind in args.teachers:
        r = measure(kind, device, batch, args.repeats)
        limit = peak / r["flops"]
        table.add_row(kind, f"{r['params'] / 1e6:.1f}", f"{r['flops'] / 1e9:.1f}", f"{r['clips_s']:.2f}",
                      f"{limit:.2f}", f"{r['clips_s'] / limit:.0%}")
    Console().print(table)


if __name__ == "__main__":
    main()
