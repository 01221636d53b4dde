"""Student forward on CPU: time and peak memory against duration, DASS-small's scan-free
floor, and AST-base, all measured in one run.

    python benchmarks/bench_student_cpu.py                 # dass_small at 10 s and 60 s
    python benchmarks/bench_student_cpu.py --seconds 10 60 600
    python benchmarks/bench_student_cpu.py --models aum_small ssamba_small dass_small

Each measurement runs in a fresh subprocess so its peak resident memory (ru_maxrss)
is its own; "peak memory" is that peak minus the same process's RSS after building the
model, i.e. what the forward pass itself needs. Batch 1, eval mode, no grad, fp32.
The "scan-free floor" is the same model with the selective scan replaced by the
identity: what the rest of the network costs, which a scan cannot beat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
kind, seconds, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
frames = int(seconds * 100)
torch.manual_seed(0)
if kind == "ast_base":
    from dass_distill.teachers import ASTClassifier, ast_config
    frames = 1024  # AST has a fixed input length (10.24 s)
    model = ASTClassifier.from_config(ast_config("ast_base", 527, target_length=frames))
else:
    from dass_distill.students import create_model
    if kind == "dass_small_noscan":
        import dass_distill.students.ss2d as ss2d
        ss2d.selective_scan = lambda u, *args, **kwargs: u
    model = create_model("dass_small" if kind == "dass_small_noscan" else kind, num_classes=527)
model.eval()
x = torch.randn(1, frames, 128)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
with torch.no_grad():
    model(x)  # warm-up
    for _ in range(repeats):
        t = time.perf_counter(); model(x); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times.sort()
print(json.dumps({"time_s": times[len(times) // 2], "peak_mib": (peak - base) / 1024}))
"""


def measure(kind: str, seconds: float, repeats: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, kind, str(seconds), str(repeats), str(threads)],
                          capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    if proc.returncode != 0:
        raise SystemExit(f"{kind} at {seconds} s failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 60], help="audio durations for the students")
    ap.add_argument("--models", nargs="+", default=["dass_small"], help="registered students to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    rows = [(m, s, measure(m, s, args.repeats if s <= 60 else 1, args.threads)) for m in args.models for s in args.seconds]
    floor = measure("dass_small_noscan", 10, args.repeats, args.threads)
    ast = measure("ast_base", 10, args.repeats, args.threads)
    at10 = {k: r for k, s, r in rows if s == 10}
    dass10 = at10.get("dass_small") or measure("dass_small", 10, args.repeats, args.threads)

    table = Table(title=f"CPU forward, batch 1, {args.threads} threads (median of {args.repeats})")
    for col in ("model", "audio", "time (s)", "peak extra memory (MiB)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for kind, s, r in rows:
        table.add_row(kind, f"{s:g} s", f"{r['time_s']:.3f}", f"{r['peak_mib']:.0f}")
    table.add_row("dass_small, scan = identity", "10 s", f"{floor['time_s']:.3f}", f"{floor['peak_mib']:.0f}")
    table.add_row("ast_base (transformers)", "10.24 s", f"{ast['time_s']:.3f}", f"{ast['peak_mib']:.0f}")
    console = Console()
    console.print(table)
    console.print(f"DASS-small / scan-free floor at 10 s: {dass10['time_s'] / floor['time_s']:.2f}x (target <= 1.5x)")
    for kind, r in at10.items():
        console.print(f"AST-base / {kind} at 10 s: {ast['time_s'] / r['time_s']:.2f}x")
    for kind in args.models:
        mine = [(s, r) for k, s, r in rows if k == kind]
        if len(mine) > 1:
            (s0, r0), (s1, r1) = mine[0], mine[-1]
            console.print(f"{kind}, {s1:g} s vs {s0:g} s: time x{r1['time_s'] / r0['time_s']:.1f}, "
                          f"memory x{r1['peak_mib'] / max(r0['peak_mib'], 1):.1f} for x{s1 / s0:.0f} the audio")


if __name__ == "__main__":
    main()
