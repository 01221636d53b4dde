"""Training-step throughput with teacher targets from the logit cache vs the teacher run online
every step (what public DASS does), same student, batch and clips, in one run.

    python benchmarks/bench_train_throughput.py                         # CPU: dass_tiny, AST-base, batch 8
    python benchmarks/bench_train_throughput.py --device cuda --student dass_small --batch 32 --precision bf16

One step = the student's front end on the batch's 10 s waveforms, the teacher targets
(a ``LogitCacheReader.get`` of the batch from a contiguous cache, or ``Teacher.logits``
on the waveforms: AST front end + AST-base forward, no grad), the DASS loss, backward and
an Adam step. The teacher is AST-base at its released size (random weights: speed only);
the cache holds one row per clip for ``--clips`` clips. Compute runs under autocast with
``--precision bf16`` (parameters fp32), as training does.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--student", default="dass_tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up step)")
    ap.add_argument("--clips", type=int, default=20000, help="clips in the benchmark cache")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from dass_distill.logit_cache import LogitCacheReader, LogitCacheWriter
    from dass_distill.losses import DistillationLoss
    from dass_distill.frontend import KaldiFbank
    from dass_distill.students import create_model
    from dass_distill.teachers import ASTTeacher, ast_config

    device = torch.device(args.device)
    C = 527
    torch.manual_seed(0)
    student = create_model(args.student, num_classes=C).to(device).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7)
    teacher = ASTTeacher.from_config(ast_config("ast_base", C), name="ast").to(device).eval()
    if args.precision == "fp32":
        teacher.cuda_dtype = None
    fe = KaldiFbank()
    loss_fn = DistillationLoss(0.5, 1.0)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    ids = [f"clip{i:07d}" for i in range(args.clips)]
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "bench.h5"
    rng = np.random.default_rng(0)
    with LogitCacheWriter(path, ids, [f"/m/{c}" for c in range(C)], [f"class {c}" for c in range(C)],
                          {"ast": {"kind": "ast"}}, layout="contiguous", compression=None) as w:
        for s in range(0, args.clips, 4096):
            w.write("ast", ids[s:s + 4096], rng.normal(0, 3, (min(4096, args.clips - s), C)).astype(np.float32))
    reader = LogitCacheReader(path)

    n = int(args.seconds * 16000)
    waves = [torch.randn(n) * 0.1 for _ in range(args.batch)]
    labels = torch.from_numpy((rng.random((args.batch, C)) < 0.01).astype(np.float32)).to(device)

    def step(mode: str) -> float:
        sync(device)
        t0 = time.perf_counter()
        feats = torch.stack([fe(w) for w in waves]).to(device)
        if mode == "cache":
            batch_ids = [ids[int(i)] for i in rng.integers(0, args.clips, args.batch)]
            targets = torch.from_numpy(reader.get(batch_ids, "ast")).to(device)
        else:
            targets = teacher.logits(waves)
        with autocast:
            logits = student(feats)
        loss = loss_fn(logits.float(), labels, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        return time.perf_counter() - t0

    results = {}
    for mode in ("cache", "online"):
        step(mode)  # warm-up
        times = [step(mode) for _ in range(args.steps)]
        results[mode] = float(np.median(times))

    console = Console()
    table = Table(title=f"training step, {args.student}, batch {args.batch} x {args.seconds:g} s, {device}, "
                        f"{args.precision}, teacher AST-base")
    for col in ("teacher targets", "s / step", "clips / s", "vs online"):
        table.add_column(col, justify="right" if col != "teacher targets" else "left")
    for mode, label in (("cache", "logit cache (LogitCacheReader.get)"), ("online", "online teacher every step")):
        t = results[mode]
        table.add_row(label, f"{t:.3f}", f"{args.batch / t:.1f}", f"{results['online'] / t:.2f}x")
    console.print(table)
    console.print(f"cache speed-up: {results['online'] / results['cache']:.2f}x "
                  f"(median of {args.steps} steps each)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
