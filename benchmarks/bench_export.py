"""Exported artefacts on CPU: forward time of model.onnx (ONNX Runtime) and model.pt2
(torch.export) against the safetensors weights in eager torch, all measured in one run,
plus how long exporting and loading each takes.

    python benchmarks/bench_export.py                       # dass_small, 10 s and 60 s
    python benchmarks/bench_export.py --model dass_tiny --seconds 10

Random weights (speed does not depend on them); batch 1; median of --repeats after one
warm-up call per length. Eager torch uses the fused C++ selective scan; the graphs use
the pure-torch fixed-structure scan they were captured with.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def _median_time(fn, x, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dass_small")
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dass_distill.graph_export import capture, load_graph, save_graph
    from dass_distill.students import create_model

    model = create_model(args.model, num_classes=527).eval()
    rows, setup = [], []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        folder = Path(tmp)
        t = time.perf_counter()
        program = capture(model, 1024)
        setup.append(("capture (torch.export)", time.perf_counter() - t))
        runners = {"eager torch (safetensors weights)": model}
        for fmt in ("pt2", "onnx"):
            t = time.perf_counter()
            save_graph(program, folder, fmt)
            setup.append((f"write model.{fmt}", time.perf_counter() - t))
            t = time.perf_counter()
            runners[f"model.{fmt}"] = load_graph(folder, fmt)
            setup.append((f"load model.{fmt}", time.perf_counter() - t))
        for seconds in args.seconds:
            x = torch.randn(1, int(seconds * 100), 128)
            base = None
            for name, fn in runners.items():
                s = _median_time(fn, x, args.repeats)
                base = base or s
                rows.append((name, seconds, s, s / base))

    table = Table(title=f"{args.model} forward on CPU, batch 1, {args.threads} threads (median of {args.repeats})")
    for col in ("runs", "audio", "time (s)", "vs eager"):
        table.add_column(col, justify="left" if col == "runs" else "right")
    for name, seconds, s, ratio in rows:
        table.add_row(name, f"{seconds:g} s", f"{s:.3f}", f"{ratio:.2f}x")
    console = Console()
    console.print(table)
    st = Table(title="export and load")
    st.add_column("step")
    st.add_column("time (s)", justify="right")
    for name, s in setup:
        st.add_row(name, f"{s:.1f}")
    console.print(st)


if __name__ == "__main__":
    main()
